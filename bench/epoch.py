"""Wall time of whole training epochs, end to end: data, augmentation, step, evaluation.

Each method trains for ``--epochs`` epochs in this process, built exactly as
``pico-train`` builds a run (the composed ``train`` config, ``pico.experiment`` and the
trainer), so everything an epoch does is timed: batches from device memory, batched
augmentation, the training steps, the per-epoch evaluation and the checkpoint. The
first epoch (warm-up: allocator, cuDNN, ``torch.compile``) is reported on its own; the
table gives the median over the later epochs, split into the training pass and the end
of the epoch (evaluation, checkpoint, figures). One-off work after the last epoch is
switched off (``trainer.embedding_figure=false eval.linear_probe=false``; pass them back
as overrides to include it); "load s" is the time to read the data and build the run.

Hydra overrides after the options apply to every run, e.g. CIFAR-10 from the JPEG folder
(``tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C /data/cifar10``) with the paper's
recipe (ResNet-18, batch 256)::

    python bench/epoch.py                                      # PiCO on digits, 5 epochs
    python bench/epoch.py --methods pico moco simclr byol --threads 2
    python bench/epoch.py --epochs 4 --data cifar10_folder +presets=cifar10_q0.3 \\
        data.root=/data/cifar10 --device cuda --record
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, open_dict

from pico.engine.trainer import Trainer, set_determinism
from pico.experiment import build_experiment

# bench/ is not a package. Python puts a script's folder first on sys.path, where
# bench/baselines.py would shadow the `baselines` package: the folder is taken off the
# path (every entry of it) right after the shared helpers (bench/common.py) are imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

BENCH = common.BENCH
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

#: overrides of every run: no progress bar, no one-off work after the last epoch
BASE_OVERRIDES = (
    "trainer.progress=false",
    "trainer.embedding_figure=false",
    "eval.linear_probe=false",
)


class TimedTrainer(Trainer):
    """The trainer, recording the wall time of each epoch's training pass (``train``) and
    of its end (``eval``: evaluation, checkpoint, figures)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_times: list[dict[str, float]] = []

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _train_epoch(self, *args: Any, **kwargs: Any) -> Any:
        start = self._clock()
        sums = super()._train_epoch(*args, **kwargs)
        self.epoch_times.append({"train": self._clock() - start})
        return sums

    def _end_epoch(self, *args: Any, **kwargs: Any) -> None:
        start = self._clock()
        super()._end_epoch(*args, **kwargs)
        self.epoch_times[-1]["eval"] = self._clock() - start


@dataclass(frozen=True)
class EpochRow:
    """Timings of one run: setup, then per epoch the training pass and the epoch's end."""

    method: str
    data: str
    model: str
    batch_size: int
    steps: int
    load_s: float
    epochs: list[dict[str, float]]

    def _median(self, key: str | None) -> float:
        later = self.epochs[1:]
        return statistics.median(sum(e.values()) if key is None else e[key] for e in later)

    @property
    def first_s(self) -> float:
        """The first (warm-up) epoch, training pass and end together."""
        return sum(self.epochs[0].values())

    @property
    def epoch_s(self) -> float:
        """Median seconds of a whole epoch after the first."""
        return self._median(None)

    @property
    def train_s(self) -> float:
        """Median seconds of the training pass after the first epoch."""
        return self._median("train")

    @property
    def eval_s(self) -> float:
        """Median seconds of the epoch's end (evaluation, checkpoint) after the first."""
        return self._median("eval")

    @property
    def images_per_s(self) -> float:
        """Training images per second of the median training pass."""
        return self.steps * self.batch_size / self.train_s


def compose_config(method: str, data: str, epochs: int, overrides: list[str]) -> DictConfig:
    """The ``train`` config of the run, with the Hydra runtime node (group choices) kept."""
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"method={method}",
                f"data={data}",
                f"trainer.epochs={epochs}",
                *BASE_OVERRIDES,
                *overrides,
            ],
            return_hydra_config=True,
        )


def run(method: str, data: str, epochs: int, overrides: list[str], run_dir: Path) -> EpochRow:
    """Train ``method`` on ``data`` for ``epochs`` epochs in ``run_dir`` and time it."""
    if epochs < 2:
        raise ValueError(f"epochs must be at least 2 (the first one is warm-up), got {epochs}")
    cfg = compose_config(method, data, epochs, [*overrides, f"run_dir={run_dir}"])
    model = cfg.hydra.runtime.choices.model
    with open_dict(cfg):
        del cfg.hydra
    set_determinism(cfg.trainer.deterministic)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    exp = build_experiment(cfg)
    load_s = time.perf_counter() - start
    trainer = TimedTrainer(cfg.trainer, run_dir, cfg.seed)
    exp.fit(trainer, cfg.eval)
    steps = len(exp.bundle.train) // cfg.trainer.batch_size or 1
    return EpochRow(
        method, cfg.data.name, model, cfg.trainer.batch_size, steps, load_s, trainer.epoch_times
    )


def table(rows: list[EpochRow]) -> str:
    """Markdown table of the runs."""
    header = [
        "method",
        "data",
        "model",
        "batch",
        "steps / epoch",
        "load s",
        "first epoch s",
        "s / epoch",
        "train s",
        "eval + ckpt s",
        "train img / s",
    ]
    cells = [
        [r.method, r.data, r.model, r.batch_size, r.steps, f"{r.load_s:.1f}"]
        + [f"{v:.2f}" for v in (r.first_s, r.epoch_s, r.train_s, r.eval_s)]
        + [f"{r.images_per_s:,.0f}"]
        for r in rows
    ]
    return common.markdown_table(header, cells)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options and Hydra overrides."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (k=v)")
    parser.add_argument("--methods", nargs="+", default=["pico"], help="method configs")
    parser.add_argument("--data", default="digits", help="data config")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (first: warm-up)")
    parser.add_argument("--device", default="auto", help="trainer.device")
    common.add_compile_option(
        parser, "trainer.compile=true with trainer.compile_mode=MODE (default: default)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="keep the runs here (default: a temp folder)"
    )
    parser.add_argument("--record", action="store_true", help="append a dated section to --results")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is warm-up")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides must look like key=value, got {bad}")
    swallowed = [m for m in args.methods if "=" in m]
    if swallowed:
        parser.error(
            f"--methods took the overrides {swallowed}; put overrides before --methods "
            "or after `--`"
        )
    return args


def main(argv: list[str] | None = None) -> list[EpochRow]:
    """Time every method, print per-epoch times and the table, optionally record it."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides = [
        f"trainer.device={args.device}",
        f"trainer.compile={str(args.compile is not None).lower()}",
        *([f"trainer.compile_mode={args.compile}"] if args.compile else []),
        *args.overrides,
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pico-epoch-") as tmp:
        root = args.run_dir or Path(tmp)
        for method in args.methods:
            row = run(method, args.data, args.epochs, overrides, root / method)
            per_epoch = ", ".join(f"{e['train']:.2f}+{e['eval']:.2f}" for e in row.epochs)
            print(f"{method}: train+end seconds per epoch: {per_epoch}", flush=True)
            rows.append(row)
    summary = (
        f"{args.epochs} epochs per run, the first one reported apart; medians over the "
        f"other {args.epochs - 1}; {torch.get_num_threads()} CPU thread(s); overrides: "
        f"`{' '.join(overrides)}`"
    )
    print(f"\n{summary}\n\n{table(rows)}")
    if args.record:
        facts = [f"machine: {common.machine(torch.get_num_threads(), 1)}"]
        if torch.cuda.is_available() and args.device != "cpu":
            facts.append(f"GPU: {torch.cuda.get_device_name()}")
        facts.append(
            f"command: `{common.command_line('epoch.py', sys.argv[1:] if argv is None else argv)}`"
        )
        common.record(
            common.section("Training epochs end to end", facts, table(rows), summary),
            args.results,
        )
        print(f"\nrecorded in {args.results}")
    return rows


if __name__ == "__main__":
    main()
