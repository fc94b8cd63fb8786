"""End-to-end runs of the engine on digits (small models, few epochs)."""

import json

import pytest
import torch
from conftest import assert_exact_resume

from pico.cli import run_evaluation, run_export, run_training
from pico.engine.checkpoint import load_checkpoint
from pico.experiment import build_experiment


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


METHODS = [
    "pico", "pico_plus", "moco", "simclr", "byol", "instdisc", "proden", "cc", "rc", "lws",
    "cavl", "supervised",
]  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_resume_from_mid_run_checkpoint_matches_uninterrupted_run(make_config, tmp_path, method):
    extra = ["method.queue_size=200"] if method in ("pico", "pico_plus", "moco") else []
    if method in ("pico", "pico_plus"):  # cross the warm-up boundary
        extra += ["method.warmup_epochs=1", "method.warmup_min_steps=30"]
    if method in ("simclr", "byol"):
        extra.append("method.proj_hidden=64")
    assert_exact_resume(make_config, tmp_path, f"method={method}", *extra)


def test_export_and_init_from_hand_over_the_backbone(make_config, tmp_path):
    run_training(make_config("method=moco", "trainer.epochs=1", "method.queue_size=128"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    exported = run_export(ckpt, tmp_path / "backbone.pt", parts="backbone")
    state = torch.load(exported, weights_only=True)
    moco = load_checkpoint(ckpt)["method"]
    assert state.keys() == {k.removeprefix("backbone.") for k in moco if k.startswith("backbone.")}
    for source in (ckpt, exported):
        cfg = make_config("method=pico", f"model.init_from={source}")
        exp = build_experiment(cfg)
        for key, value in exp.method.backbone.state_dict().items():
            assert torch.equal(value, state[key]), key


def test_init_from_with_another_architecture_is_refused(make_config, tmp_path):
    run_training(make_config("method=supervised", "trainer.epochs=1"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    cfg = make_config("method=pico", f"model.init_from={ckpt}", "model.widths=[8,16,32]")
    with pytest.raises(ValueError, match=r"does not fit this backbone.*shape mismatch"):
        build_experiment(cfg)


def test_unsupervised_run_reports_knn_linear_probe_and_embedding(make_config, tmp_path):
    result = run_training(make_config("method=instdisc", "trainer.epochs=1"))
    final = result["final"]
    for key in ("val/knn_top1", "test/knn_top1", "test/linear_top1"):
        assert 0.0 <= final[key] <= 1.0
    assert (tmp_path / "run" / "embedding.png").stat().st_size > 10_000


def test_pico_eval_parts(make_config, tmp_path):
    cfg = make_config(
        "method=pico", "trainer.epochs=1", "method.queue_size=128", "trainer.embedding_figure=false"
    )
    run_training(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    expected = {
        "knn": {"val/knn_top1", "test/knn_top1"},
        "linear": {"test/linear_top1"},
        "classifier": {"test/top1", "test/proto_acc", "val/approx_acc", "train/disamb_acc"},
    }
    for part, keys in expected.items():
        got = set(run_evaluation(last, "cpu", part))
        assert keys <= got
        assert not got & (set().union(*expected.values()) - keys)
        assert not (tmp_path / "run" / "embedding.png").exists()
    everything = run_evaluation(last, "cpu", "all")
    assert set().union(*expected.values()) <= set(everything)
    assert (tmp_path / "run" / "embedding.png").is_file()
    with pytest.raises(ValueError, match="parts=bogus is unknown"):
        run_evaluation(last, "cpu", "bogus")


def test_compiled_run_matches_the_eager_run(make_config, tmp_path):
    eager = run_training(make_config("method.queue_size=256", run_dir="eager"))
    compiled = run_training(
        make_config("method.queue_size=256", "trainer.compile=true", run_dir="compiled")
    )
    for key in ("test/top1", "val/approx_acc", "train/disamb_acc"):
        assert compiled["final"][key] == pytest.approx(eager["final"][key], abs=0.02)
    assert compiled["final"]["train/loss"] == pytest.approx(eager["final"]["train/loss"], rel=1e-3)
