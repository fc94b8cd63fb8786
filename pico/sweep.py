"""Sweeps (``pico-train -m``): job folders named by their overrides, and a summary table
of the jobs (``summary.md``, ``summary.csv``) in the sweep folder.

Each job of a multirun writes into ``SWEEP_DIR/NAME``, where ``NAME`` joins the job's
overrides of the keys that vary in the sweep (``method=pico,seed=0``), sorted by key;
the overrides every job shares are left out. Where the swept keys are not known (a
launcher in another process), every override names the job but the keys in
``hydra.job.config.override_dirname.exclude_keys``. A job with no such override is
named by its number. When the sweep ends, :class:`SweepSummary`
(a Hydra callback, configured in ``configs/train.yaml``) writes the summary; the
``pico-summarize SWEEP_DIR`` command writes it again at any time, e.g. for a sweep that
stopped early.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
#: longest job folder name; a longer one keeps its start and gains a digest of the rest
MAX_NAME = 120
#: keys swept by the multirun in progress (set when it starts); None: not known
_swept_keys: frozenset[str] | None = None


def swept_keys(config: DictConfig) -> frozenset[str]:
    """The keys a multirun sweeps: its command-line sweeps (``k=a,b``, ``k=range(3)``)
    and the keys of ``hydra.sweeper.params``."""
    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = {o.key_or_group for o in parsed if o.is_sweep_override()}
    params = OmegaConf.select(config, "hydra.sweeper.params")
    if params:
        keys |= set(params)
    return frozenset(keys)


def job_dir_name(
    overrides: Sequence[str],
    num: int,
    exclude: Iterable[str] = (),
    keep: Iterable[str] | None = None,
) -> str:
    """The folder name of a sweep job: its ``overrides`` of the keys in ``keep`` (the keys
    the sweep varies), or when ``keep`` is None of every key not in ``exclude``; sorted,
    joined by commas, with ``/`` made ``_``, and ``str(num)`` when none is left. Names
    over ``MAX_NAME`` characters are shortened (their start and a digest)."""
    excluded = set(exclude)
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    if keep is None:
        lines = [str(o.input_line) for o in parsed if o.key_or_group not in excluded]
    else:
        kept = set(keep)
        lines = [str(o.input_line) for o in parsed if o.key_or_group in kept]
    lines.sort()
    name = ",".join(lines).replace("/", "_")
    if not name:
        return str(num)
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9]}-{digest}"
    return name


def _job_dir() -> str:
    """``${pico.job_dir:}``: the folder name of the job Hydra is launching."""
    hydra = HydraConfig.get()
    exclude = hydra.job.config.override_dirname.exclude_keys
    return job_dir_name(list(hydra.overrides.task), hydra.job.num, exclude, _swept_keys)


def register_resolver() -> None:
    """Make ``${pico.job_dir:}`` (``hydra.sweep.subdir`` in ``configs/train.yaml``) known."""
    if not OmegaConf.has_resolver("pico.job_dir"):
        OmegaConf.register_new_resolver("pico.job_dir", _job_dir)


register_resolver()  # also when Hydra imports this module for SweepSummary


@dataclass
class JobRow:
    """One job of a sweep: its folder, overrides, and ``metrics.json`` when it finished."""

    folder: Path
    num: int | None
    overrides: dict[str, str]
    metrics: dict[str, Any] | None


def _job_rows(sweep_dir: Path) -> list[JobRow]:
    folders = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    folders |= {p.parent for p in sweep_dir.rglob("metrics.json")}
    rows = []
    for folder in folders - {sweep_dir}:
        overrides: dict[str, str] = {}
        stored = folder / ".hydra" / "overrides.yaml"
        if stored.is_file():
            for line in OmegaConf.load(stored):
                key, _, value = str(line).partition("=")
                overrides[key.lstrip("+~")] = value if _ else "(deleted)"
        hydra_yaml = folder / ".hydra" / "hydra.yaml"
        num = (
            OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.num")
            if hydra_yaml.is_file()
            else None
        )
        metrics_path = folder / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        rows.append(JobRow(folder, num if isinstance(num, int) else None, overrides, metrics))
    rows.sort(key=lambda r: (r.num is None, r.num if r.num is not None else 0, str(r.folder)))
    return rows


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def summarize_sweep(
    sweep_dir: str | Path, metrics: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Tabulate the jobs of a ``pico-train -m`` sweep into ``SWEEP_DIR/summary.md`` and
    ``summary.csv`` and return the rows.

    One row per job folder (one holding ``.hydra/overrides.yaml`` or ``metrics.json``),
    in job order: its folder, status (``done`` with a ``metrics.json``, else
    ``unfinished``), one column per override that differs between the jobs, the final
    epoch's ``metrics`` (default: every ``val/*`` and ``test/*`` metric any job reports),
    and the selected epoch (``best.pt``'s, chosen by the run's ``select_metric``) with its
    selection metric value and test top-1. Overrides common to every job are listed above
    the Markdown table.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep folder {root} does not exist; pass a pico-train -m folder")
    jobs = _job_rows(root)
    if not jobs:
        raise FileNotFoundError(
            f"no sweep jobs under {root} (folders holding .hydra/overrides.yaml or "
            "metrics.json); pass a pico-train -m folder"
        )
    keys = sorted({k for job in jobs for k in job.overrides})
    varying = [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
    common = [f"{k}={jobs[0].overrides[k]}" for k in keys if k not in varying]
    finals = [job.metrics.get("final") or {} for job in jobs if job.metrics]
    if metrics is None:
        metrics = sorted({m for f in finals for m in f if m.startswith(("val/", "test/"))})
    rows = []
    for job in jobs:
        row: dict[str, Any] = {
            "job": str(job.folder.relative_to(root)),
            "status": "done" if job.metrics is not None else "unfinished",
        }
        row.update({k: job.overrides.get(k) for k in varying})
        done = job.metrics or {}
        final, best = done.get("final") or {}, done.get("best") or {}
        row["epochs"] = final.get("epoch")
        row.update({m: final.get(m) for m in metrics})
        select = done.get("select_metric")
        row["select_metric"] = select
        row["best_epoch"] = best.get("epoch")
        row["best_value"] = best.get(select) if select else None
        row["best_test/top1"] = best.get("test/top1")
        rows.append(row)
    columns = list(rows[0])
    with (root / SUMMARY_CSV).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)  # full precision; empty cells for missing values
    lines = [f"# Sweep {root.name}", ""]
    finished = sum(r["status"] == "done" for r in rows)
    lines.append(f"{len(rows)} jobs, {finished} finished.")
    if common:
        lines.append(f"Common overrides: `{' '.join(common)}`.")
    lines.append(
        "Final: the last epoch's metrics; best: the epoch that chose best.pt by the run's "
        "select_metric."
    )
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_format(r[c]).replace("|", "\\|") for c in columns) + " |" for r in rows
    ]
    (root / SUMMARY_MD).write_text("\n".join(lines) + "\n")
    return rows


class SweepSummary(Callback):
    """Hydra callback: names the jobs of a multirun by the keys it sweeps
    (``${pico.job_dir:}``) and writes :func:`summarize_sweep`'s table into the sweep
    folder when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Record the keys this multirun sweeps, for its job folder names."""
        global _swept_keys
        _swept_keys = swept_keys(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write ``summary.md`` and ``summary.csv`` into the sweep folder."""
        global _swept_keys
        _swept_keys = None
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            rows = summarize_sweep(sweep_dir)
        except FileNotFoundError as err:
            print(f"pico: no sweep summary: {err}", file=sys.stderr)
            return
        print(f"\nsweep summary of {len(rows)} jobs: {sweep_dir / SUMMARY_MD}, {SUMMARY_CSV}")


def main(argv: Sequence[str] | None = None) -> None:
    """``pico-summarize SWEEP_DIR [--metrics M ...]``: write a sweep's summary again."""
    parser = argparse.ArgumentParser(
        prog="pico-summarize",
        description="Tabulate the jobs of a pico-train -m sweep into SWEEP_DIR/summary.md "
        "and summary.csv: one row per job, its varying overrides, the final epoch's "
        "metrics and the selected (best.pt) epoch.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder (hydra.sweep.dir)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        help="final-epoch metrics to tabulate (default: every val/* and test/* metric)",
    )
    args = parser.parse_args(argv)
    try:
        rows = summarize_sweep(args.sweep_dir, args.metrics)
    except FileNotFoundError as err:
        sys.exit(f"pico-summarize: error: {err}")
    print((args.sweep_dir / SUMMARY_MD).read_text(), end="")
    jobs = f"{len(rows)} job" + ("s" if len(rows) != 1 else "")
    print(f"\nwritten {args.sweep_dir / SUMMARY_MD} and {SUMMARY_CSV} ({jobs})")
