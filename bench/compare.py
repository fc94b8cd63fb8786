"""Compare partial-label methods on equal terms: a grid of methods x datasets x candidate
settings x seeds, each run's checkpoint chosen by a label-free criterion.

The grid runs as Hydra multiruns of ``pico-train -m`` (one per dataset, split further along
the method, seed, q or eta axis until there are ``--parallel`` of them, run side by side
with ``OMP_NUM_THREADS=--threads`` each). Every run keeps its per-epoch ``history`` in
``metrics.json``; the selected epoch is the one that maximises ``--select`` on the
validation split, which carries partial labels only (ties: the later epoch, as
``best.pt``). The table gives the test top-1 accuracy of that epoch, mean ± std over
seeds, one row per method and one column per dataset and candidate setting; the plot
shows accuracy against q per method (one panel per dataset and eta).

Candidates: uniform with rate q by default; with ``--eta`` the noisy PiCO+ generator
(the true label is dropped with probability eta). Per-dataset overrides go with
``--data-overrides "NAME: k=v k=v"`` (repeatable); ``--common`` goes to every run. Neither
may sweep (no ``k=a,b``).

Example:
    python bench/compare.py --methods pico proden supervised --q 0.3 0.7 --seeds 0 1 2 \\
        --data digits fashion_mnist \\
        --data-overrides "fashion_mnist: trainer.epochs=20 trainer.batch_size=256" \\
        --parallel 2 --record
    python bench/compare.py --collect bench/runs/compare_2026-11-22_12-00-00 \\
        --select val/covering_rate          # re-tabulate finished runs, other criterion
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import OmegaConf

# bench/ is not a package. Python puts a script's folder first on sys.path, where
# bench/baselines.py would shadow the `baselines` package: the folder is taken off the
# path (every entry of it) right after the shared helpers (bench/common.py) are imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCH,
    TRAIN,
    command_line,
    machine,
    markdown_table,
    mean_std,
    record,
    section,
)

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

CONFIGS = BENCH.parent / "configs"
METHODS = ("pico", "proden", "supervised", "cc", "rc", "lws", "cavl", "pico_plus")
CRITERIA = ("val/approx_acc", "val/covering_rate")
TEST_METRIC = "test/top1"
#: before the user's overrides, which may change them: no progress bar, no t-SNE figure,
#: no per-epoch checkpoints (best.pt and last.pt stay)
FIXED = ("trainer.progress=false", "trainer.embedding_figure=false", "trainer.keep_last=0")
AXES = ("methods", "seeds", "qs", "etas")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One Hydra multirun: a dataset and the product of its axes (no etas: uniform)."""

    data: str
    methods: tuple[str, ...]
    qs: tuple[float, ...]
    etas: tuple[float, ...]
    seeds: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of runs."""
        return math.prod(max(len(getattr(self, axis)), 1) for axis in AXES)

    def split(self) -> tuple[Sweep, Sweep] | None:
        """Two halves along the longest axis, or None for a single run."""
        axis = max(AXES, key=lambda name: len(getattr(self, name)))
        values = getattr(self, axis)
        if len(values) < 2:
            return None
        half = len(values) // 2
        return (
            dataclasses.replace(self, **{axis: values[:half]}),
            dataclasses.replace(self, **{axis: values[half:]}),
        )

    def overrides(self) -> list[str]:
        """The sweep as ``pico-train -m`` overrides."""
        out = [
            f"method={','.join(self.methods)}",
            f"data={self.data}",
            f"data.candidates.q={_join(self.qs)}",
            f"seed={_join(self.seeds)}",
        ]
        if self.etas:
            return [*out, "data.candidates.name=noisy", f"++data.candidates.eta={_join(self.etas)}"]
        return [*out, "data.candidates.name=uniform"]


@dataclasses.dataclass(frozen=True)
class Result:
    """One finished run: its grid point and the test accuracy of its selected epoch."""

    method: str
    data: str
    q: float
    eta: float | None
    seed: int
    epochs: int
    epoch: int
    test_acc: float


def _join(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def check_configs(methods: Sequence[str], datasets: Sequence[str], configs: Path = CONFIGS) -> None:
    """Raise ValueError naming every method or dataset without ``configs/GROUP/NAME.yaml``."""
    for group, names in (("method", methods), ("data", datasets)):
        missing = [name for name in names if not (configs / group / f"{name}.yaml").is_file()]
        if missing:
            known = sorted(p.stem for p in (configs / group).glob("*.yaml"))
            raise ValueError(
                f"{group} {', '.join(missing)}: no config configs/{group}/NAME.yaml; "
                f"choose from {', '.join(known)} or add the config"
            )


def parse_data_overrides(items: Sequence[str], datasets: Sequence[str]) -> dict[str, list[str]]:
    """``["NAME: k=v k=v", ...]`` -> overrides per dataset (every dataset gets a list)."""
    out: dict[str, list[str]] = {name: [] for name in datasets}
    for item in items:
        name, _, overrides = item.partition(":")
        name = name.strip()
        if name not in out or not overrides.strip():
            raise ValueError(
                f'--data-overrides needs "NAME: OVERRIDES" with NAME one of --data '
                f"({', '.join(datasets)}), got {item!r}"
            )
        out[name] += shlex.split(overrides)
    return out


def plan(
    datasets: Sequence[str],
    methods: Sequence[str],
    qs: Sequence[float],
    etas: Sequence[float],
    seeds: Sequence[int],
    parallel: int,
) -> list[Sweep]:
    """One sweep per dataset, the largest split in halves until there are ``parallel``."""
    sweeps = [Sweep(d, tuple(methods), tuple(qs), tuple(etas), tuple(seeds)) for d in datasets]
    while len(sweeps) < parallel:
        largest = max(range(len(sweeps)), key=lambda i: sweeps[i].size)
        halves = sweeps[largest].split()
        if halves is None:
            break
        sweeps[largest : largest + 1] = halves
    return sweeps


def sweep_command(sweep: Sweep, extra: Sequence[str], sweep_dir: Path) -> list[str]:
    """The ``pico-train -m`` command of ``sweep``; job K writes to ``sweep_dir/K``."""
    return [str(TRAIN), "-m", *sweep.overrides(), *FIXED, *extra, f"hydra.sweep.dir={sweep_dir}"]


def run_sweeps(commands: Sequence[list[str]], root: Path, threads: int, parallel: int) -> list[str]:
    """Run the commands, ``parallel`` at a time, output to ``root/K.log``; the failures."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def run(k: int) -> str | None:
        log = root / f"{k}.log"
        started = time.perf_counter()
        with open(log, "w") as handle:
            proc = subprocess.run(commands[k], env=env, stdout=handle, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
        print(f"sweep {k + 1}/{len(commands)}: exit {proc.returncode}, {seconds:.0f} s", flush=True)
        if proc.returncode == 0:
            return None
        tail = "\n".join(log.read_text().splitlines()[-20:])
        return f"{shlex.join(commands[k])} failed (log {log}):\n{tail}"

    with ThreadPoolExecutor(parallel) as pool:
        return [msg for msg in pool.map(run, range(len(commands))) if msg is not None]


def select_epoch(history: Sequence[dict], criterion: str) -> dict:
    """The history entry with the largest ``criterion`` (ties: the later one) among those
    that carry it and the test accuracy."""
    best = None
    for entry in history:
        if criterion not in entry or TEST_METRIC not in entry:
            continue
        if best is None or entry[criterion] >= best[criterion]:
            best = entry
    if best is None:
        raise ValueError(
            f"no epoch records both {criterion} and {TEST_METRIC}; choose --select from "
            f"{', '.join(CRITERIA)} for runs with a validation split"
        )
    return best


def load_run(job_dir: Path, criterion: str) -> Result:
    """The grid point (``.hydra/overrides.yaml``, ``config.yaml``) and selected epoch
    (``metrics.json``) of one multirun job."""
    overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    choices = dict(o.split("=", 1) for o in overrides if o.startswith(("method=", "data=")))
    if "method" not in choices:
        raise ValueError(f"{job_dir} was not started with method=NAME; collect compare.py runs")
    cfg = OmegaConf.load(job_dir / "config.yaml")
    candidates = cfg.data.candidates
    metrics = json.loads((job_dir / "metrics.json").read_text())
    try:
        chosen = select_epoch(metrics["history"], criterion)
    except ValueError as err:
        raise ValueError(f"{job_dir}: {err}") from err
    return Result(
        method=choices["method"],
        data=choices.get("data", str(cfg.data.name)),
        q=float(candidates.q),
        eta=float(candidates.eta) if candidates.name == "noisy" else None,
        seed=int(cfg.seed),
        epochs=int(cfg.trainer.epochs),
        epoch=int(chosen["epoch"]),
        test_acc=float(chosen[TEST_METRIC]),
    )


def collect(root: Path, criterion: str) -> list[Result]:
    """Every finished job (a folder with ``metrics.json``) under ``root``."""
    results = [load_run(p.parent, criterion) for p in sorted(Path(root).rglob("metrics.json"))]
    if not results:
        raise ValueError(f"no finished runs (metrics.json) under {root}; pass a compare.py folder")
    return results


def _ordered(values: set, preferred: Sequence) -> list:
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def _grid(
    results: Sequence[Result], methods: Sequence[str], datasets: Sequence[str]
) -> tuple[list[str], list[tuple], dict[tuple, list[float]]]:
    """Row order, column order ((data, eta, q)) and test accuracies by (method, column),
    ordered by seed; a grid point run twice is an error."""
    data_rank = {d: i for i, d in enumerate(_ordered({r.data for r in results}, datasets))}
    cells: dict[tuple, dict[int, float]] = {}
    for r in results:
        column = (r.data, r.eta, r.q)
        runs = cells.setdefault((r.method, column), {})
        if r.seed in runs:
            raise ValueError(
                f"{r.method} on {_label(column)} seed {r.seed} was run twice; collect one "
                "compare.py folder at a time, with no sweep (k=a,b) in the overrides"
            )
        runs[r.seed] = r.test_acc
    columns = sorted(
        {column for _, column in cells},
        key=lambda c: (data_rank[c[0]], -1.0 if c[1] is None else c[1], c[2]),
    )
    rows = _ordered({r.method for r in results}, methods)
    return rows, columns, {key: [v for _, v in sorted(runs.items())] for key, runs in cells.items()}


def _label(column: tuple) -> str:
    data, eta, q = column
    return f"{data}, q={q:g}" + ("" if eta is None else f", η={eta:g}")


def table(
    results: Sequence[Result], methods: Sequence[str] = (), datasets: Sequence[str] = ()
) -> str:
    """Markdown table of selected-epoch test accuracy (%), mean ± std over seeds; rows are
    methods, columns dataset and candidate setting; ``(n=K)`` marks a cell with fewer
    seeds than the fullest one, ``-`` a missing one."""
    rows, columns, cells = _grid(results, methods, datasets)
    full = max(len(v) for v in cells.values())
    lines = []
    for method in rows:
        out = [method]
        for column in columns:
            values = cells.get((method, column), [])
            cell = mean_std(values) if values else "-"
            out.append(cell + (f" (n={len(values)})" if 0 < len(values) < full else ""))
        lines.append(out)
    return markdown_table(["method", *map(_label, columns)], lines)


def plot(
    results: Sequence[Result],
    path: Path,
    methods: Sequence[str] = (),
    datasets: Sequence[str] = (),
) -> Path:
    """PNG of test accuracy (mean ± std over seeds) against q, one line per method and one
    panel per dataset and eta."""
    rows, columns, cells = _grid(results, methods, datasets)
    panels = list(dict.fromkeys((data, eta) for data, eta, _ in columns))
    fig = Figure(figsize=(4.5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (data, eta) in zip(axes, panels, strict=True):
        for method in rows:
            points = [
                (q, cells[(method, (d, e, q))])
                for d, e, q in columns
                if (d, e) == (data, eta) and (method, (d, e, q)) in cells
            ]
            if not points:
                continue
            qs = [q for q, _ in points]
            means = [100 * statistics.mean(v) for _, v in points]
            stds = [100 * statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in points]
            ax.errorbar(qs, means, yerr=stds, marker="o", capsize=3, label=method)
        ax.set_title(data + ("" if eta is None else f", η={eta:g}"))
        ax.set_xlabel("q (candidate rate)")
        ax.set_ylabel("test top-1 at selected epoch (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="method configs")
    parser.add_argument("--data", nargs="+", default=["digits"], help="data configs")
    parser.add_argument("--q", type=_fraction, nargs="+", default=[0.3, 0.7], help="rates q")
    parser.add_argument(
        "--eta", type=_fraction, nargs="+", default=[], help="noisy candidates, rates eta"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--select", choices=CRITERIA, default=CRITERIA[0], help="criterion")
    parser.add_argument("--common", default="", help="Hydra overrides added to every run")
    parser.add_argument(
        "--data-overrides",
        action="append",
        default=[],
        metavar='"NAME: OVERRIDES"',
        help="Hydra overrides for the runs on dataset NAME (repeatable)",
    )
    parser.add_argument("--parallel", type=_positive, default=1, help="multiruns at a time")
    parser.add_argument("--threads", type=_positive, default=1, help="torch threads per run")
    parser.add_argument(
        "--out", type=Path, default=BENCH / "runs", help="runs go to OUT/compare_<time>/"
    )
    parser.add_argument("--plot", type=Path, default=BENCH / "compare.png", help="PNG path")
    parser.add_argument("--title", default="", help="section title in RESULTS.md")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--collect", type=Path, metavar="DIR", help="tabulate the finished runs under DIR"
    )
    return parser


def report(args: argparse.Namespace, results: Sequence[Result], wall_seconds: float | None) -> str:
    """The RESULTS.md section: machine, budget, selection, command, table and plot."""
    epochs = {
        data: sorted({r.epochs for r in results if r.data == data})
        for data in dict.fromkeys(r.data for r in results)
    }
    budget = f"{len(results)} runs; trainer.epochs " + ", ".join(
        f"{data} {'/'.join(map(str, e))}" for data, e in epochs.items()
    )
    if wall_seconds is not None:
        budget += f"; {wall_seconds / 60:.1f} min wall time in all"
    noisy = any(r.eta is not None for r in results)
    candidates = "noisy (PiCO+ rule: true label dropped with prob. η)" if noisy else "uniform"
    seeds = " ".join(map(str, sorted({r.seed for r in results})))
    overrides = "; ".join(args.data_overrides) or "(none)"
    overrides = f"common overrides: `{args.common or '(none)'}`; per dataset: `{overrides}`"
    if args.collect is None:
        where = machine(args.threads, args.parallel)
    else:
        where = f"not known here (tabulated with --collect from `{args.collect}`)"
        overrides = "overrides: see each run's .hydra/overrides.yaml"
    facts = [
        f"machine: {where}",
        f"budget: {budget}",
        f"selection: per run, the epoch maximising {args.select} on the partial-label "
        f"validation split (ties: later epoch); cells: {TEST_METRIC} there, mean ± std "
        f"over seeds (%)",
        f"candidates: {candidates}; seeds: {seeds}",
        overrides,
        f"plot: `{args.plot}`",
        f"command: `{command_line('compare.py', sys.argv[1:])}`",
    ]
    title = args.title or (
        f"PLL comparison on {', '.join(epochs)}, label-free selection by {args.select}"
    )
    return section(title, facts, table(results, args.methods, args.data))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    wall_seconds = None
    failures: list[str] = []
    try:
        if args.collect is not None:
            root = args.collect
        else:
            check_configs(args.methods, args.data)
            extra = parse_data_overrides(args.data_overrides, args.data)
            sweeps = plan(args.data, args.methods, args.q, args.eta, args.seeds, args.parallel)
            root = (args.out / f"compare_{datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
            commands = [
                sweep_command(s, [*shlex.split(args.common), *extra[s.data]], root / str(k))
                for k, s in enumerate(sweeps)
            ]
            if args.dry_run:
                for command in commands:
                    print(f"OMP_NUM_THREADS={args.threads} {shlex.join(command)}")
                return
            print(f"{sum(s.size for s in sweeps)} runs in {len(sweeps)} multirun(s) -> {root}")
            started = time.perf_counter()
            failures = run_sweeps(commands, root, args.threads, args.parallel)
            wall_seconds = time.perf_counter() - started
            if failures:
                print("\n\n".join(failures), file=sys.stderr)
        results = collect(root, args.select)
    except ValueError as err:
        parser.error(str(err))
    text = report(args, results, wall_seconds)
    print(text)
    print(f"written {plot(results, args.plot, args.methods, args.data)}")
    if failures:
        sys.exit(f"{len(failures)} multirun(s) failed; nothing recorded")
    if args.record:
        record(text)


if __name__ == "__main__":
    main()
