"""``model.init_head_layers``: fine-tuning from the first layers of a pretrained projector
(SimCLR v2), for any method, with the checkpoint's weights; the runs it makes evaluate and
export without the pretraining checkpoint; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_CONVNET
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pico.cli import run_evaluation, run_export, run_training
from pico.engine.fingerprint import run_fingerprint
from pico.experiment import build_experiment
from pico.export import load_exported
from pico.models import mlp_head
from pico.models.transfer import ProjectedBackbone, head_layers


def _compose(root: Path, *overrides: str) -> DictConfig:
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose("train", overrides=[*TINY, *TINY_CONVNET, f"run_dir={root}", *overrides])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """One epoch of SimCLR v2 (projector 16-16-16-128) on digits."""
    root = tmp_path_factory.mktemp("simclr_v2")
    run_training(_compose(root, "method=simclr_v2", "trainer.epochs=1",
                          "trainer.embedding_figure=false", "eval.linear_probe=false"))  # fmt: skip
    return root / "checkpoints" / "last.pt"


@pytest.mark.parametrize("layers", [1, 2])
def test_kept_layers_hold_the_checkpoint_weights(pretrained, tmp_path, layers) -> None:
    cfg = _compose(tmp_path, "method=proden", "data.candidates.q=0.7",
                   f"model.init_from={pretrained}", f"model.init_head_layers={layers}")  # fmt: skip
    backbone = build_experiment(cfg).method.backbone
    assert isinstance(backbone, ProjectedBackbone) and backbone.out_dim == 16
    assert [type(m) for m in backbone.head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * layers
    saved = torch.load(pretrained, weights_only=True)["method"]
    kept = {k for k in saved if k.startswith("backbone.")} | {
        k for k in saved if k.startswith("projector.") and int(k.split(".")[1]) < 3 * layers
    }
    # the ProjectedBackbone's ``backbone.*`` are the checkpoint's, its ``head.*`` the projector's
    source = {k: k.replace("head.", "projector.", 1) for k in backbone.state_dict()}
    assert set(source.values()) == kept
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, saved[source[key]]), key
    x = torch.randn(4, 1, 8, 8)
    backbone.eval()
    torch.testing.assert_close(backbone(x), backbone.head(backbone.backbone(x)))


def test_fine_tuned_partial_label_run_evaluates_and_exports_without_the_pretraining(
    pretrained, tmp_path
) -> None:
    """PRODEN with large candidate sets from the projector's first layer; the finished
    run rebuilds from its own checkpoint when the pretraining checkpoint is gone."""
    copy = tmp_path / "pretrained.pt"
    copy.write_bytes(pretrained.read_bytes())
    cfg = _compose(tmp_path / "run", "method=proden", "data.candidates.q=0.7", "trainer.epochs=1",
                   "trainer.embedding_figure=false", f"model.init_from={copy}",
                   "model.init_head_layers=1")  # fmt: skip
    result = run_training(cfg)
    copy.unlink()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    metrics = run_evaluation(last, "cpu", "classifier")
    assert metrics["test/top1"] == pytest.approx(result["final"]["test/top1"], abs=1e-6)
    exported = run_export(last, tmp_path / "model.pt", formats=["state"])
    predictor = load_exported(exported)
    assert isinstance(predictor.network.backbone, ProjectedBackbone)
    state = torch.load(last, weights_only=True)["method"]
    head = predictor.network.backbone.head
    assert torch.equal(head[0].weight, state["backbone.head.0.weight"])


def test_head_layers_of_a_head_without_batch_norm() -> None:
    """MoCo's and PiCO's ``head`` (Linear-ReLU-Linear): its first layer, not its output."""
    mlp = mlp_head(6, 5, 4, num_layers=2)
    first = head_layers(mlp.state_dict(), 1, "head")
    x = torch.randn(3, 6)
    torch.testing.assert_close(first(x), mlp[:2](x))
    with pytest.raises(ValueError, match="has 1 hidden layer"):
        head_layers(mlp.state_dict(), 2, "head")


def test_bad_requests_are_clear_errors(pretrained, tmp_path) -> None:
    def build(*overrides: str) -> None:
        build_experiment(_compose(tmp_path, "method=proden", *overrides))

    with pytest.raises(ValueError, match=r"model\.init_from is not set"):
        build("model.init_head_layers=1")
    with pytest.raises(ValueError, match=r"init_head_layers=3, but the projector .* has 2 hidden"):
        build(f"model.init_from={pretrained}", "model.init_head_layers=3")
    with pytest.raises(ValueError, match="init_head_layers=-1 is not valid"):
        build(f"model.init_from={pretrained}", "model.init_head_layers=-1")
    run_training(_compose(tmp_path / "proden", "method=proden", "trainer.epochs=1",
                          "trainer.embedding_figure=false"))  # fmt: skip
    proden = tmp_path / "proden" / "checkpoints" / "last.pt"
    with pytest.raises(ValueError, match=r"has no MLP projector \(its method holds"):
        build(f"model.init_from={proden}", "model.init_head_layers=1")
    backbone_only = run_export(pretrained, tmp_path / "backbone.pt", parts="backbone")
    with pytest.raises(ValueError, match="holds no method state"):
        build(f"model.init_from={backbone_only}", "model.init_head_layers=1")


def test_fingerprint_leaves_out_the_default_head_layers(tmp_path) -> None:
    """Checkpoints written before the key existed still resume."""
    cfg = _compose(tmp_path, "method=proden")
    bundle = build_experiment(cfg).bundle
    before = OmegaConf.create(OmegaConf.to_container(cfg))
    before.model.pop("init_head_layers")
    assert run_fingerprint(cfg, bundle)["model"] == run_fingerprint(before, bundle)["model"]
    cfg.model.init_head_layers = 1
    assert run_fingerprint(cfg, bundle)["model"] != run_fingerprint(before, bundle)["model"]
