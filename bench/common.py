"""Helpers shared by the bench scripts: machine description, ``pico-train`` runs, mean ± std
cells, Markdown tables and sections of ``bench/RESULTS.md`` (the machine description,
cells, tables and sections come from :mod:`pico.compare`, which ``pico-compare`` runs).

``bench/`` is not a package: a script imports this module with its own folder first on
``sys.path`` and removes the folder again right after (see the top of ``bench/compare.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from pico.compare import machine, markdown_table, mean_std, section

__all__ = [
    "BENCH",
    "RESULTS",
    "TRAIN",
    "add_compile_option",
    "command_line",
    "machine",
    "markdown_table",
    "mean_std",
    "record",
    "section",
    "train",
]

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
TRAIN = Path(sys.executable).parent / "pico-train"


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


def command_line(script: str, argv: list[str]) -> str:
    """The command that ran ``bench/<script>`` with ``argv``, quoted for a shell."""
    return shlex.join(["python", f"bench/{script}", *argv])


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
