"""Trainer callbacks: the defaults (figures, best.pt, metrics.json) and callbacks of one's own."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

import pico
from pico.engine.callbacks import BestCheckpoint, Callback, MetricsFile
from pico.engine.checkpoint import load_checkpoint
from pico.eval.run_figures import RunFigures
from pico.experiment import build_experiment

RUN = ["method=proden", "trainer.threads=1", "trainer.embedding_figure=false"]


class Recorder(Callback):
    """Writes down every hook call, and what the run held at that point."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.improved: list[bool] = []

    def on_fit_start(self, trainer, run):
        self.calls.append(("fit_start", run.state["epoch"]))

    def on_epoch_end(self, trainer, run, record):
        assert record is run.state["history"][-1]
        self.improved.append(run.state["best"] is record)  # BestCheckpoint ran before
        self.calls.append(("epoch_end", record["epoch"]))

    def on_save_checkpoint(self, trainer, run, checkpoint, epoch):
        last = trainer.ckpt_dir / "last.pt"  # written after the callbacks
        assert not last.is_file() or load_checkpoint(last)["step"] < checkpoint["step"]
        self.calls.append(("save", epoch, checkpoint["step"]))

    def on_fit_end(self, trainer, run, result):
        self.calls.append(("fit_end", result["final"]["epoch"]))
        self.result = result


def test_callbacks_of_ones_own_run_after_the_defaults(make_config, tmp_path: Path) -> None:
    cfg = make_config(*RUN, "trainer.batch_size=256", "trainer.checkpoint_every_steps=3")
    recorder = Recorder()
    trainer = pico.Trainer(cfg.trainer, tmp_path / "py", cfg.seed, callbacks=[recorder])
    result = build_experiment(cfg).fit(trainer, cfg.eval)
    # 5 steps an epoch: a checkpoint every 3 steps inside the epochs, one at each end
    assert recorder.calls == [
        ("fit_start", 0),
        ("save", None, 3),
        ("epoch_end", 1),
        ("save", 1, 5),
        ("save", None, 6),
        ("save", None, 9),
        ("epoch_end", 2),
        ("save", 2, 10),
        ("fit_end", 2),
    ]
    first, second = (record[cfg.eval.select_metric] for record in result["history"])
    assert recorder.improved == [True, second >= first]
    assert recorder.result is result
    assert json.loads((tmp_path / "py" / "metrics.json").read_text()) == result


class NoFiles(pico.Trainer):
    """A trainer that keeps only best-checkpoint selection among the defaults."""

    def default_callbacks(self, select_metric, select_mode):
        kept = super().default_callbacks(select_metric, select_mode)
        assert [type(c) for c in kept] == [RunFigures, BestCheckpoint, MetricsFile]
        return [c for c in kept if isinstance(c, BestCheckpoint)]


def test_a_subclass_may_leave_default_callbacks_out(make_config, tmp_path: Path) -> None:
    cfg = make_config(*RUN, "trainer.epochs=1")
    trainer = NoFiles(cfg.trainer, tmp_path / "py", cfg.seed)
    result = build_experiment(cfg).fit(trainer, cfg.eval)
    written = {p.relative_to(tmp_path / "py").as_posix() for p in (tmp_path / "py").rglob("*")}
    assert "metrics.json" not in written and not any(p.startswith("figures") for p in written)
    best = load_checkpoint(tmp_path / "py" / "checkpoints" / "best.pt")
    assert best["best"] == result["best"] == result["history"][0]


def _epoch(selection: BestCheckpoint, state: dict, record: dict, evaluated: bool = True) -> bool:
    trainer = SimpleNamespace(evaluates=lambda epoch, epochs: evaluated)
    selection.on_epoch_end(trainer, SimpleNamespace(state=state, epochs=9), record)
    return selection.improved


def test_best_checkpoint_keeps_ties_for_the_later_epoch_and_follows_the_mode() -> None:
    for mode, values, improved in (
        ("max", [0.5, 0.4, 0.5, 0.6], [True, False, True, True]),
        ("min", [0.5, 0.6, 0.5, 0.4], [True, False, True, True]),
    ):
        selection, state = BestCheckpoint("val/score", mode), {"best": None}
        got = [_epoch(selection, state, {"epoch": i, "val/score": v}) for i, v in enumerate(values)]
        assert got == improved and state["best"]["epoch"] == 3


def test_best_checkpoint_warns_once_when_evaluated_epochs_lack_the_metric(caplog) -> None:
    selection, state = BestCheckpoint("val/missing"), {"best": None}
    with caplog.at_level(logging.WARNING, logger="pico.engine.trainer"):
        assert not _epoch(selection, state, {"epoch": 1, "train/loss": 1.0}, evaluated=False)
        assert not caplog.records  # an epoch without evaluation cannot hold it
        for epoch in (2, 3):
            assert not _epoch(selection, state, {"epoch": epoch, "val/top1": 0.5})
    assert len(caplog.records) == 1 and "no best.pt will be written" in caplog.text
    assert state["best"] is None


@pytest.mark.parametrize("improved", [False, True])
def test_best_checkpoint_writes_best_pt_only_at_the_end_of_an_improved_epoch(
    tmp_path: Path, improved: bool
) -> None:
    selection = BestCheckpoint("val/top1")
    selection.improved = improved
    trainer = SimpleNamespace(ckpt_dir=tmp_path)
    state = {"epoch": 1, "step": 4}
    selection.on_save_checkpoint(trainer, None, state, epoch=None)
    assert not (tmp_path / "best.pt").exists()
    selection.on_save_checkpoint(trainer, None, state, epoch=1)
    assert (tmp_path / "best.pt").exists() == improved
