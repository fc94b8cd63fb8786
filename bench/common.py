"""Helpers shared by the bench scripts: machine description, ``pico-train`` runs, mean ± std
cells, Markdown tables and sections of ``bench/RESULTS.md``.

``bench/`` is not a package: a script imports this module with its own folder first on
``sys.path`` and removes the folder again right after (see the top of ``bench/compare.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
TRAIN = Path(sys.executable).parent / "pico-train"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or the platform's answer)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine(threads: int, parallel: int) -> str:
    """CPU model and core count, torch and Python versions, threading of the runs and the
    load average (taken when called, i.e. at the end of a benchmark)."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{cpu_model()} ({os.cpu_count()} logical cores), torch {torch.__version__}, Python "
        f"{platform.python_version()}; {parallel} run(s) at a time, {threads} thread(s) each; "
        f"load average at the end: {load}"
    )


def train(overrides: list[str], run_dir: Path, threads: int) -> dict:
    """One ``pico-train`` run with ``OMP_NUM_THREADS=threads`` writing to ``run_dir``; its
    ``metrics.json`` with the wall time added as ``wall_seconds``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    args = [str(TRAIN), f"run_dir={run_dir}", "trainer.progress=false", *overrides]
    started = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    metrics["wall_seconds"] = time.perf_counter() - started
    return metrics


def mean_std(values: list[float]) -> str:
    """Fractions as percent, ``mean ± std`` (sample std; omitted for a single value)."""
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.2f}"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: the ``header`` cells, the separator line, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(script: str, argv: list[str]) -> str:
    """The command that ran ``bench/<script>`` with ``argv``, quoted for a shell."""
    return shlex.join(["python", f"bench/{script}", *argv])


def section(title: str, facts: list[str], body: str, intro: str = "") -> str:
    """A dated RESULTS.md section: heading, optional intro paragraph, one bullet per fact
    (machine, seeds, command, ...), then ``body`` (tables, verdicts)."""
    parts = [f"\n## {title}, {datetime.now():%Y-%m-%d %H:%M}\n"]
    if intro:
        parts.append(f"{intro}\n")
    parts.append("\n".join(f"- {fact}" for fact in facts) + "\n")
    parts.append(f"{body}\n")
    return "\n".join(parts)


def add_compile_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--compile [MODE]``: absent gives ``None``, bare ``--compile`` the mode ``default``."""
    from pico.engine.trainer import COMPILE_MODES

    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=COMPILE_MODES,
        metavar="MODE",
        help=help,
    )


def record(text: str, path: Path = RESULTS) -> None:
    """Append ``text`` (a :func:`section`) to ``path``, by default ``bench/RESULTS.md``."""
    with open(path, "a") as handle:
        handle.write(text)
