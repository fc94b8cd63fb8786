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
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

# bench/ is not a package. Python puts a script's folder first on sys.path, where
# bench/baselines.py would shadow the `baselines` package: the folder is taken off the
# path (every entry of it) right after the shared helpers (bench/common.py) are imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, command_line, machine, markdown_table, mean_std, record, section, train

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]


def parse_run(text: str) -> tuple[str, list[str]]:
    """``"LABEL: k=v k=v"`` -> (label, overrides)."""
    label, _, overrides = text.partition(":")
    if not overrides.strip():
        raise SystemExit(f'--run needs "LABEL: OVERRIDES", got {text!r}')
    return label.strip(), shlex.split(overrides)


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table of the results of every label."""
    header = [
        "run",
        "test acc, selected (%)",
        "test acc, last epoch (%)",
        "prototype acc (%)",
        "disambiguation (%)",
        "seconds / run",
    ]
    rows = []
    for label, runs in results.items():
        best = [r["best"] for r in runs]
        cells = [
            label,
            mean_std([b["test/top1"] for b in best]),
            mean_std([r["final"]["test/top1"] for r in runs]),
            mean_std([b["test/proto_acc"] for b in best]) if "test/proto_acc" in best[0] else "-",
            mean_std([b["train/disamb_acc"] for b in best])
            if "train/disamb_acc" in best[0]
            else "-",
            f"{statistics.mean(r['wall_seconds'] for r in runs):.0f}",
        ]
        rows.append(cells)
    return markdown_table(header, rows)


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

    facts = [
        f"machine: {machine(args.threads, args.parallel)}",
        f"seeds: {' '.join(map(str, args.seeds))}; common overrides: `{args.common or '(none)'}`",
        f"command: `{command_line('pll_runs.py', sys.argv[1:])}`",
    ]
    text = section(args.title, facts, table(results))
    print(text)
    if args.record:
        record(text)


if __name__ == "__main__":
    main()
