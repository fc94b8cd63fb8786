"""``trainer.loggers``: one global-step axis for every scalar, the CSV file, refused names."""

from __future__ import annotations

import csv
import itertools
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pico.cli import run_training
from pico.engine.loggers import RunLoggers, resolve_logger_names

FAST = ["method=proden", "trainer.embedding_figure=false", "trainer.log_every=5"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One tiny digits run with both built-in loggers, shared by the tests below."""
    from conftest import TINY, TINY_CONVNET
    from hydra import compose, initialize_config_module

    run_dir = tmp_path_factory.mktemp("logged") / "run"
    overrides = [*TINY, *TINY_CONVNET, *FAST, f"run_dir={run_dir}"]
    overrides.append("trainer.loggers=[tensorboard,csv]")
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run_training(cfg)
    return run_dir


def read_events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return events


def test_every_scalar_is_on_the_global_step_axis(digits_run):
    events = read_events(digits_run)
    tags = events.Tags()["scalars"]
    epochs = [e.value for e in events.Scalars("epoch/epoch")]
    assert epochs == [1.0, 2.0]
    epoch_ends = [e.step for e in events.Scalars("epoch/epoch")]
    per_epoch = epoch_ends[0]
    assert per_epoch > 2 and epoch_ends == [per_epoch, 2 * per_epoch]
    for tag in tags:
        steps = [e.step for e in events.Scalars(tag)]
        assert all(a < b for a, b in itertools.pairwise(steps)), (tag, steps)
        assert set(steps) <= set(range(1, 2 * per_epoch + 1)), (tag, steps)
    # the per-step curve: every log_every steps and at each epoch's end
    loss_steps = [e.step for e in events.Scalars("train/loss")]
    expected = [
        epoch * per_epoch + i
        for epoch in range(2)
        for i in range(1, per_epoch + 1)
        if i % 5 == 0 or i == per_epoch
    ]
    assert loss_steps == expected
    # epoch means and evaluation: once per epoch, at the epoch's last step
    for tag in ("epoch/train/loss", "val/approx_acc", "test/top1", "train/disamb_acc"):
        assert tag in tags
        assert [e.step for e in events.Scalars(tag)] == epoch_ends, tag
    # the epoch mean logged matches metrics.json's history
    history = json.loads((digits_run / "metrics.json").read_text())["history"]
    means = [e.value for e in events.Scalars("epoch/train/loss")]
    assert means == pytest.approx([r["train/loss"] for r in history], rel=1e-6)


def test_csv_logger_writes_step_epoch_tag_value_rows(digits_run):
    with (digits_run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and list(rows[0]) == ["step", "epoch", "tag", "value"]
    events = read_events(digits_run)
    for tag in ("train/loss", "epoch/train/loss", "test/top1", "epoch/epoch"):
        from_csv = [(int(r["step"]), float(r["value"])) for r in rows if r["tag"] == tag]
        from_tb = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in from_csv] == [s for s, _ in from_tb], tag
        assert [v for _, v in from_csv] == pytest.approx([v for _, v in from_tb], rel=1e-6)
    epoch_of = {int(r["step"]): int(r["epoch"]) for r in rows if r["tag"] == "epoch/epoch"}
    assert sorted(epoch_of.values()) == [1, 2]
    assert {int(r["epoch"]) for r in rows} == {1, 2}


def test_csv_reads_into_pandas_one_column_per_tag(digits_run):
    pd = pytest.importorskip("pandas")
    wide = pd.read_csv(digits_run / "metrics.csv").pivot_table(
        index="step", columns="tag", values="value"
    )
    assert {"train/loss", "test/top1", "epoch/train/loss"} <= set(wide.columns)
    assert wide.index.is_monotonic_increasing


def test_csv_on_resume_keeps_rows_up_to_the_checkpoint(tmp_path):
    first = RunLoggers(tmp_path, ["csv"])
    for step in (1, 2, 3, 4):
        first.scalars({"train/loss": float(step)}, step, 1)
    first.close()
    again = RunLoggers(tmp_path, ["csv"], resume_step=2)
    again.scalars({"train/loss": 30.0}, 3, 1)
    again.close()
    with (tmp_path / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], float(r["value"])) for r in rows] == [("1", 1.0), ("2", 2.0), ("3", 30.0)]
    RunLoggers(tmp_path, ["csv"]).close()  # a fresh run starts the file anew
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,epoch,tag,value"]


def test_default_is_tensorboard_only(make_config):
    cfg = make_config()
    assert list(cfg.trainer.loggers) == ["tensorboard"]
    assert resolve_logger_names(None) == ["tensorboard"]


def test_unknown_logger_is_refused_at_start_naming_key_and_choices(make_config, tmp_path):
    cfg = make_config("trainer.loggers=[tensorboard,tensorbored]")
    with pytest.raises(ValueError, match=r"trainer\.loggers.*tensorbored.*'csv'"):
        run_training(cfg)
    assert not (tmp_path / "run" / "tensorboard").exists()
    with pytest.raises(ValueError, match="twice"):
        resolve_logger_names(["csv", "csv"])


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_optional_logger_without_its_package_says_what_to_install(name, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a)
    )
    with pytest.raises(ValueError, match=f"trainer.loggers.*pip install {name}"):
        resolve_logger_names(["tensorboard", name])


def test_wandb_logger_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    loggers = RunLoggers(tmp_path, ["wandb"])
    loggers.scalars({"train/loss": 1.0}, 1, 1)
    loggers.close()
    assert (tmp_path / "wandb").is_dir()


def test_mlflow_logger_local_store(tmp_path):
    pytest.importorskip("mlflow")
    loggers = RunLoggers(tmp_path, ["mlflow"])
    loggers.scalars({"train/loss": 1.0}, 1, 1)
    loggers.close()
    assert (tmp_path / "mlruns").is_dir()
