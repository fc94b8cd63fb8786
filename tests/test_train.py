"""End-to-end runs of the engine on digits (small models, few epochs)."""

import json
import shutil

import pytest
import torch

from pico.cli import run_evaluation, run_training
from pico.engine.checkpoint import load_checkpoint


def test_pico_run_writes_checkpoints_events_and_metrics(make_config, tmp_path):
    cfg = make_config("method.queue_size=256")
    result = run_training(cfg)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.pt").is_file()
    assert (run / "checkpoints" / "best.pt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"]["epoch"] == 2
    for key in ("test/top1", "val/approx_acc", "val/covering_rate", "train/disamb_acc"):
        assert 0.0 <= metrics["final"][key] <= 1.0
    assert result["best"]["epoch"] in (1, 2)


def test_pico_eval_recomputes_final_metrics(make_config, tmp_path):
    run_training(make_config("method=proden"))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    metrics = run_evaluation(last, device="cpu")
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    for key in ("test/top1", "val/approx_acc"):
        assert metrics[key] == pytest.approx(final[key], abs=1e-6)
    assert (tmp_path / "run" / "eval.json").is_file()


@pytest.mark.parametrize("method", ["pico", "moco", "proden", "supervised"])
def test_resume_from_mid_run_checkpoint_matches_uninterrupted_run(make_config, tmp_path, method):
    extra = ["method.queue_size=200"] if method in ("pico", "moco") else []
    if method == "pico":
        extra.append("method.warmup_min_steps=30")  # cross the warm-up boundary
    straight = make_config(f"method={method}", "trainer.epochs=4", "trainer.keep_last=4", *extra)
    run_training(straight)
    mid = tmp_path / "mid.pt"
    shutil.copy(tmp_path / "run" / "checkpoints" / "epoch_0002.pt", mid)
    resumed = make_config(
        f"method={method}", "trainer.epochs=4", f"resume={mid}", *extra, run_dir="resumed"
    )
    run_training(resumed)
    a = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    assert a["step"] == b["step"]
    assert a["method"].keys() == b["method"].keys()
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
    assert a["history"] == b["history"]
