"""``pico-compare``: partial-label methods on equal terms, as a grid of methods x datasets
x candidate settings x seeds, each run's epoch chosen by a label-free criterion.

The grid runs as Hydra multiruns of ``pico-train -m`` (one per dataset, split further along
the method, seed, q or eta axis until there are ``--parallel`` of them, run side by side
with ``OMP_NUM_THREADS=--threads`` each). Every run keeps its per-epoch ``history`` in
``metrics.json``; the selected epoch is the one that maximises ``--select`` on the
validation split, which carries partial labels only (ties: the later epoch, as
``best.pt``). The table gives the test top-1 accuracy of that epoch, mean ± std over
seeds, one row per method and one column per dataset and candidate setting; the plot
shows accuracy against q per method (one panel per dataset and eta, one more for data
that carries its own candidate sets).

``--data`` takes data config names (``digits``, ``fashion_mnist``, ...) and paths to
``.mat`` files (``data=mat data.path=FILE``, named by the file's stem). Data whose config
generates candidates gets them uniform with rate q by default, or with ``--eta`` from the
noisy PiCO+ generator (the true label is dropped with probability eta); data that carries
its own candidate sets (``.mat`` files; any config whose composed ``data.candidates`` is
null) runs once per method and seed, in a "given candidates" column. Per-dataset
overrides go with ``--data-overrides "NAME: k=v k=v"`` (repeatable); ``--common`` goes to
every run. Neither may sweep (no ``k=a,b``).

Example:
    pico-compare --methods pico proden supervised --q 0.3 0.7 --seeds 0 1 2 \\
        --data digits fashion_mnist data/italian.mat data/FG-NET.mat \\
        --data-overrides "fashion_mnist: trainer.epochs=20 trainer.batch_size=256" \\
        --parallel 2
    pico-compare --collect runs/compare_2026-11-22_12-00-00 \\
        --select val/covering_rate          # re-tabulate finished runs, other criterion
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

CONFIG_MODULE = "pico.configs"
CONFIGS = files(CONFIG_MODULE)
METHODS = ("pico", "proden", "supervised", "cc", "rc", "lws", "cavl", "pico_plus")
CRITERIA = ("val/approx_acc", "val/covering_rate")
TEST_METRIC = "test/top1"
#: before the user's overrides, which may change them: no progress bar, no t-SNE figure,
#: no per-epoch checkpoints (best.pt and last.pt stay)
FIXED = ("trainer.progress=false", "trainer.embedding_figure=false", "trainer.keep_last=0")
AXES = ("methods", "seeds", "qs", "etas")
#: column label of data that carries its own candidate sets
GIVEN = "given candidates"
#: overrides of Hydra itself, which do not take part in composing the job's config
HYDRA_OVERRIDE = re.compile(r"^[+~]*hydra[./]")
#: a value Hydra's override grammar reads as the same string without quotes
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_/\-+.@%]+")


@dataclasses.dataclass(frozen=True)
class Data:
    """One ``--data`` entry: its name in the table, its data config, the ``.mat`` file it
    reads (``config == "mat"`` only) and whether the config generates candidate sets."""

    name: str
    config: str
    path: Path | None = None
    generated: bool = True

    @classmethod
    def parse(cls, entry: str) -> Data:
        """A data config name, or a path to a ``.mat`` file (named by its stem)."""
        if entry.lower().endswith(".mat"):
            path = Path(entry).expanduser().resolve()
            return cls(path.stem, "mat", path)
        return cls(entry, entry)

    def overrides(self) -> list[str]:
        """The ``pico-train`` overrides that select this data."""
        if self.path is None:
            return [f"data={self.config}"]
        path = str(self.path)
        if not PLAIN_VALUE.fullmatch(path):  # spaces, commas, quotes, ...: quote for Hydra
            # in a quoted value, backslashes before a quote or the end are escaped
            path = re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), path)
            path = f"'{path}'"
        return ["data=mat", f"data.path={path}"]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One Hydra multirun: a dataset and the product of its axes (no etas: uniform; no qs
    either: the data's own candidate sets)."""

    data: Data
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
        out = [f"method={','.join(self.methods)}", *self.data.overrides()]
        seeds = f"seed={_join(self.seeds)}"
        if not self.qs:
            return [*out, seeds]
        out += [f"data.candidates.q={_join(self.qs)}", seeds]
        if self.etas:
            return [*out, "data.candidates.name=noisy", f"++data.candidates.eta={_join(self.etas)}"]
        return [*out, "data.candidates.name=uniform"]


@dataclasses.dataclass(frozen=True)
class Result:
    """One finished run: its grid point and the test accuracy of its selected epoch
    (``q`` is None for data that carries its own candidate sets)."""

    method: str
    data: str
    q: float | None
    eta: float | None
    seed: int
    epochs: int
    epoch: int
    test_acc: float


def _join(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


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


def section(title: str, facts: list[str], body: str, intro: str = "") -> str:
    """A dated results section: heading, optional intro paragraph, one bullet per fact
    (machine, seeds, command, ...), then ``body`` (tables, verdicts)."""
    parts = [f"\n## {title}, {datetime.now():%Y-%m-%d %H:%M}\n"]
    if intro:
        parts.append(f"{intro}\n")
    parts.append("\n".join(f"- {fact}" for fact in facts) + "\n")
    parts.append(f"{body}\n")
    return "\n".join(parts)


def train_script() -> str:
    """The ``pico-train`` console script installed with this pico: beside the running
    ``pico-compare``, else in this Python's scripts folder, else on ``PATH``."""
    folders = [sysconfig.get_path("scripts"), os.environ.get("PATH", os.defpath)]
    if Path(sys.argv[0]).name.startswith("pico-compare"):
        folders.insert(0, str(Path(sys.argv[0]).resolve().parent))
    found = shutil.which("pico-train", path=os.pathsep.join(folders))
    if found is None:
        raise ValueError(
            f"pico-train is not installed beside {sys.executable} nor on PATH; install pico "
            "into this Python (pip install . in a pico checkout)"
        )
    return found


def check_configs(
    methods: Sequence[str], datasets: Sequence[str], configs: Traversable = CONFIGS
) -> None:
    """Raise ValueError naming every method or dataset without a config ``GROUP/NAME.yaml``
    among pico's configs."""
    for group, names in (("method", methods), ("data", datasets)):
        known = sorted(
            p.name.removesuffix(".yaml")
            for p in (configs / group).iterdir()
            if p.name.endswith(".yaml")
        )
        missing = [name for name in names if name not in known]
        if missing:
            other = " or pass a path to a .mat file" if group == "data" else ""
            raise ValueError(
                f"{group} {', '.join(missing)}: pico has no config {group}/NAME.yaml; "
                f"choose from {', '.join(known)}{other}"
            )


def check_data(datasets: Sequence[Data]) -> None:
    """Raise ValueError for a missing ``.mat`` file or two entries of the same name."""
    missing = [str(d.path) for d in datasets if d.path is not None and not d.path.is_file()]
    if missing:
        raise ValueError(
            f"--data {', '.join(missing)}: no such .mat file; pass the path of an existing "
            "file or a data config name"
        )
    names = [d.name for d in datasets]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(
            f"--data names {', '.join(twice)} more than once (a .mat file is named by its "
            "stem); give each dataset once, renaming files whose stems clash"
        )


def with_candidates(data: Data, overrides: Sequence[str]) -> Data:
    """``data`` marked by whether ``pico-train`` with its overrides and ``overrides``
    generates candidate sets (the composed ``data.candidates`` is not null)."""
    job = [*data.overrides(), *(o for o in overrides if not HYDRA_OVERRIDE.match(o))]
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose("train", overrides=job)
    except (HydraException, OmegaConfBaseException) as err:
        reason = str(err).strip().splitlines()[0]
        raise ValueError(
            f"{data.name}: the overrides {shlex.join(job)} do not compose with pico-train's "
            f"config ({reason}); --common and --data-overrides take plain k=v overrides of "
            "existing keys (+k=v adds one), no sweeps (k=a,b)"
        ) from err
    return dataclasses.replace(data, generated=cfg.data.candidates is not None)


def parse_data_overrides(items: Sequence[str], datasets: Sequence[str]) -> dict[str, list[str]]:
    """``["NAME: k=v k=v", ...]`` -> overrides per dataset (every dataset gets a list)."""
    out: dict[str, list[str]] = {name: [] for name in datasets}
    for item in items:
        name, _, overrides = item.partition(":")
        name = name.strip()
        if name not in out or not overrides.strip():
            raise ValueError(
                f'--data-overrides needs "NAME: OVERRIDES" with NAME one of the --data '
                f"names ({', '.join(datasets)}; a .mat file by its stem), got {item!r}"
            )
        out[name] += shlex.split(overrides)
    return out


def plan(
    datasets: Sequence[Data],
    methods: Sequence[str],
    qs: Sequence[float],
    etas: Sequence[float],
    seeds: Sequence[int],
    parallel: int,
) -> list[Sweep]:
    """One sweep per dataset (over q and eta only where its candidates are generated), the
    largest split in halves until there are ``parallel``."""
    sweeps = [
        Sweep(d, tuple(methods), tuple(qs), tuple(etas), tuple(seeds))
        if d.generated
        else Sweep(d, tuple(methods), (), (), tuple(seeds))
        for d in datasets
    ]
    while len(sweeps) < parallel:
        largest = max(range(len(sweeps)), key=lambda i: sweeps[i].size)
        halves = sweeps[largest].split()
        if halves is None:
            break
        sweeps[largest : largest + 1] = halves
    return sweeps


def sweep_command(sweep: Sweep, extra: Sequence[str], sweep_dir: Path, train: str) -> list[str]:
    """The ``pico-train -m`` command of ``sweep`` (``train`` is the script's path); each job
    writes to a folder of ``sweep_dir`` named by its swept overrides (``pico.sweep``)."""
    return [train, "-m", *sweep.overrides(), *FIXED, *extra, f"hydra.sweep.dir={sweep_dir}"]


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
    (``metrics.json``) of one multirun job; a ``data=mat`` run is named by its file's stem."""
    overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    choices = dict(o.split("=", 1) for o in overrides if o.startswith(("method=", "data=")))
    if "method" not in choices:
        raise ValueError(f"{job_dir} was not started with method=NAME; collect pico-compare runs")
    cfg = OmegaConf.load(job_dir / "config.yaml")
    data = choices.get("data", str(cfg.data.name))
    if data == "mat":
        data = Path(str(cfg.data.path)).stem
    candidates = cfg.data.candidates
    metrics = json.loads((job_dir / "metrics.json").read_text())
    try:
        chosen = select_epoch(metrics["history"], criterion)
    except ValueError as err:
        raise ValueError(f"{job_dir}: {err}") from err
    return Result(
        method=choices["method"],
        data=data,
        q=None if candidates is None else float(candidates.q),
        eta=float(candidates.eta)
        if candidates is not None and candidates.name == "noisy"
        else None,
        seed=int(cfg.seed),
        epochs=int(cfg.trainer.epochs),
        epoch=int(chosen["epoch"]),
        test_acc=float(chosen[TEST_METRIC]),
    )


def collect(root: Path, criterion: str) -> list[Result]:
    """Every finished job (a folder with ``metrics.json``) under ``root``."""
    results = [load_run(p.parent, criterion) for p in sorted(Path(root).rglob("metrics.json"))]
    if not results:
        raise ValueError(
            f"no finished runs (metrics.json) under {root}; pass a pico-compare run folder"
        )
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
                "pico-compare folder at a time, with no sweep (k=a,b) in the overrides"
            )
        runs[r.seed] = r.test_acc
    columns = sorted(
        {column for _, column in cells},
        key=lambda c: (
            data_rank[c[0]],
            -1.0 if c[1] is None else c[1],
            -1.0 if c[2] is None else c[2],
        ),
    )
    rows = _ordered({r.method for r in results}, methods)
    return rows, columns, {key: [v for _, v in sorted(runs.items())] for key, runs in cells.items()}


def _label(column: tuple) -> str:
    data, eta, q = column
    if q is None:
        return f"{data}, {GIVEN}"
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


def _errorbar(ax: Axes, xs: list, accuracies: list[list[float]], method: str, **style) -> None:
    """Mean ± std (over seeds, %) of each point's accuracies at ``xs``."""
    means = [100 * statistics.mean(v) for v in accuracies]
    stds = [100 * statistics.stdev(v) if len(v) > 1 else 0.0 for v in accuracies]
    ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method, **style)


def plot(
    results: Sequence[Result],
    path: Path,
    methods: Sequence[str] = (),
    datasets: Sequence[str] = (),
) -> Path:
    """PNG of test accuracy (mean ± std over seeds) against q, one line per method and one
    panel per dataset and eta, plus one panel of the data with given candidate sets."""
    rows, columns, cells = _grid(results, methods, datasets)
    panels = list(dict.fromkeys((data, eta) for data, eta, q in columns if q is not None))
    given = [data for data, _, q in columns if q is None]
    fig = Figure(figsize=(4.5 * (len(panels) + bool(given)), 3.6))
    axes = fig.subplots(1, len(panels) + bool(given), squeeze=False)[0]
    for ax, (data, eta) in zip(axes[: len(panels)], panels, strict=True):
        for method in rows:
            points = [
                (q, cells[(method, (d, e, q))])
                for d, e, q in columns
                if (d, e) == (data, eta) and q is not None and (method, (d, e, q)) in cells
            ]
            if points:
                _errorbar(ax, [q for q, _ in points], [v for _, v in points], method)
        ax.set_title(data + ("" if eta is None else f", η={eta:g}"))
        ax.set_xlabel("q (candidate rate)")
    if given:
        ax = axes[-1]
        for method in rows:
            keys = [(i, (method, (d, None, None))) for i, d in enumerate(given)]
            points = [(i, cells[key]) for i, key in keys if key in cells]
            if points:
                _errorbar(ax, [i for i, _ in points], [v for _, v in points], method, ls="none")
        ax.set_xticks(range(len(given)), given)
        ax.set_xlim(-0.5, len(given) - 0.5)
        ax.set_title(GIVEN)
    for ax in axes:
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


def build_parser(
    prog: str = "pico-compare", results: Path | None = None
) -> argparse.ArgumentParser:
    """Command-line options; ``results`` is the default of ``--results``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="method configs")
    parser.add_argument(
        "--data",
        nargs="+",
        default=["digits"],
        metavar="NAME|FILE.mat",
        help="data configs and .mat files (data=mat data.path=FILE, named by the stem)",
    )
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
        "--out", type=Path, default=Path("runs"), help="runs go to OUT/compare_<time>/"
    )
    parser.add_argument(
        "--plot", type=Path, help="PNG path (default: compare.png in the run folder)"
    )
    parser.add_argument("--title", default="", help="section title for --record")
    parser.add_argument("--record", action="store_true", help="append a section to --results")
    parser.add_argument(
        "--results",
        type=Path,
        default=results,
        metavar="FILE",
        help="Markdown file --record appends to"
        + (f" (default: {results})" if results is not None else ""),
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--collect", type=Path, metavar="DIR", help="tabulate the finished runs under DIR"
    )
    return parser


def report(
    args: argparse.Namespace,
    results: Sequence[Result],
    wall_seconds: float | None,
    datasets: Sequence[str],
    command: str,
) -> str:
    """The results section: machine, budget, selection, command, table and plot."""
    epochs = {
        data: sorted({r.epochs for r in results if r.data == data})
        for data in dict.fromkeys(r.data for r in results)
    }
    budget = f"{len(results)} runs; trainer.epochs " + ", ".join(
        f"{data} {'/'.join(map(str, e))}" for data, e in epochs.items()
    )
    if wall_seconds is not None:
        budget += f"; {wall_seconds / 60:.1f} min wall time in all"
    kinds = []
    if any(r.q is not None for r in results):
        noisy = any(r.eta is not None for r in results)
        kinds.append("noisy (PiCO+ rule: true label dropped with prob. η)" if noisy else "uniform")
    given = list(dict.fromkeys(r.data for r in results if r.q is None))
    if given:
        kinds.append(f"given by the data ({', '.join(given)})")
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
        f"candidates: {'; '.join(kinds)}; seeds: {seeds}",
        overrides,
        f"plot: `{args.plot}`",
        f"command: `{command}`",
    ]
    title = args.title or (
        f"PLL comparison on {', '.join(epochs)}, label-free selection by {args.select}"
    )
    return section(title, facts, table(results, args.methods, datasets))


def main(
    argv: Sequence[str] | None = None,
    *,
    prog: str = "pico-compare",
    default_results: Path | None = None,
) -> None:
    """``pico-compare``: run (or ``--collect``) the grid, print its table, write its plot
    and, with ``--record``, append the section to ``--results`` (``default_results``
    unless given)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog, default_results)
    args = parser.parse_args(argv)
    if args.record and args.results is None:
        parser.error("--record needs --results FILE, the Markdown file to append the table to")
    if args.record and not args.results.parent.is_dir():
        parser.error(f"--results {args.results}: no such folder; pass a file in an existing one")
    datasets = [Data.parse(entry) for entry in args.data]
    names = [d.name for d in datasets]
    wall_seconds = None
    failures: list[str] = []
    try:
        if args.collect is not None:
            root = args.collect
        else:
            check_configs(args.methods, [d.config for d in datasets])
            check_data(datasets)
            common = shlex.split(args.common)
            extra = parse_data_overrides(args.data_overrides, names)
            datasets = [with_candidates(d, [*common, *extra[d.name]]) for d in datasets]
            sweeps = plan(datasets, args.methods, args.q, args.eta, args.seeds, args.parallel)
            root = (args.out / f"compare_{datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
            train = train_script()
            commands = [
                sweep_command(s, [*common, *extra[s.data.name]], root / str(k), train)
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
    args.plot = args.plot or Path(root) / "compare.png"
    text = report(args, results, wall_seconds, names, f"{prog} {shlex.join(argv)}")
    print(text)
    print(f"written {plot(results, args.plot, args.methods, names)}")
    if failures:
        sys.exit(f"{len(failures)} multirun(s) failed; nothing recorded")
    if args.record:
        with open(args.results, "a") as handle:
            handle.write(text)
        print(f"recorded in {args.results}")


if __name__ == "__main__":
    main()
