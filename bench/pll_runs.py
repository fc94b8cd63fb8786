"""Run groups of `pico-train` configurations over seeds and tabulate test accuracy.

Each ``--run "LABEL: OVERRIDES"`` is trained once per seed (plus the ``--common``
overrides). The table reports, per label, mean ± std over seeds of the test accuracy of
the checkpoint chosen by the run's label-free validation criterion (``best``), of the
last epoch (``final``), the nearest-prototype and disambiguation accuracy of the chosen
checkpoint, and the mean wall time of a run.

Example:
    python bench/pll_runs.py --title "digits, q=0.7" --seeds 0 1 2 \\
        --run "pico: method=pico data.candidates.q=0.7" \\
        --run "supervised: method=supervised" --parallel 2 --record
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
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
TRAIN = Path(sys.executable).parent / "pico-train"


def parse_run(text: str) -> tuple[str, list[str]]:
    """``"LABEL: k=v k=v"`` -> (label, overrides)."""
    label, _, overrides = text.partition(":")
    if not overrides.strip():
        raise SystemExit(f'--run needs "LABEL: OVERRIDES", got {text!r}')
    return label.strip(), shlex.split(overrides)


def train(overrides: list[str], run_dir: Path, threads: int) -> dict:
    """One pico-train run; returns its metrics.json with the wall time added."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    args = [str(TRAIN), f"run_dir={run_dir}", "trainer.progress=false", *overrides]
    started = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_seconds"] = time.perf_counter() - started
    return metrics


def mean_std(values: list[float]) -> str:
    """Percentages as ``mean ± std`` (std omitted for one value)."""
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.2f}"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table of the results of every label."""
    lines = [
        "| run | test acc, selected (%) | test acc, last epoch (%) | prototype acc (%) "
        "| disambiguation (%) | seconds / run |",
        "|---|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        best = [r["best"] for r in runs]
        cells = [
            mean_std([b["test/top1"] for b in best]),
            mean_std([r["final"]["test/top1"] for r in runs]),
            mean_std([b["test/proto_acc"] for b in best]) if "test/proto_acc" in best[0] else "-",
            mean_std([b["train/disamb_acc"] for b in best])
            if "train/disamb_acc" in best[0]
            else "-",
            f"{statistics.mean(r['wall_seconds'] for r in runs):.0f}",
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    """CPU model, cores and torch version."""
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--title", required=True, help="section title in RESULTS.md")
    parser.add_argument("--run", action="append", required=True, help='"LABEL: OVERRIDES"')
    parser.add_argument("--common", default="", help="overrides added to every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=BENCH / "runs", help="run directories")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    args = parser.parse_args()

    runs = [parse_run(r) for r in args.run]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    jobs = []
    for label, overrides in runs:
        for seed in args.seeds:
            slug = "".join(c if c.isalnum() else "_" for c in label)
            run_dir = args.out / stamp / f"{slug}_seed{seed}"
            jobs.append((label, [*shlex.split(args.common), *overrides, f"seed={seed}"], run_dir))
    with ThreadPoolExecutor(args.parallel) as pool:
        metrics = list(pool.map(lambda job: train(job[1], job[2], args.threads), jobs))
    results: dict[str, list[dict]] = {label: [] for label, _ in runs}
    for (label, _, _), result in zip(jobs, metrics, strict=True):
        results[label].append(result)

    command = "python bench/pll_runs.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = (
        f"\n## {args.title}, {datetime.now():%Y-%m-%d %H:%M}\n\n"
        f"- machine: {machine()}; {args.parallel} run(s) at a time, {args.threads} "
        f"thread(s) each\n- seeds: {' '.join(map(str, args.seeds))}; common overrides: "
        f"`{args.common or '(none)'}`\n- command: `{command}`\n\n{table(results)}\n"
    )
    print(text)
    if args.record:
        with open(BENCH / "RESULTS.md", "a") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
