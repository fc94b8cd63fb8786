"""timm backbones (model=timm): built offline, from local weights, and trained on digits.

Tests that need timm skip when it is not installed (pip install 'pico-pll[timm]'); the
missing-package error is checked either way.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from pico.cli import run_training
from pico.models.factory import build_backbone
from pico.models.timm_backbone import timm_backbone
from pico.models.transfer import backbone_state

needs_timm = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None, reason="timm not installed (pip install timm)"
)
#: timm's smallest ResNet (about 0.4 M parameters), made for tests
TINY = "test_resnet"


def timm_model_config(*overrides: str):
    """The packaged ``model=timm`` node with ``overrides`` (``model.`` keys)."""
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose("train", overrides=["model=timm", "run_dir=x", *overrides]).model


@needs_timm
def test_config_builds_a_headless_model_with_out_dim():
    cfg = timm_model_config(f"model.name={TINY}")
    net = build_backbone(cfg, (1, 8, 8), "image").eval()
    assert net.out_dim == net.num_features == 96
    assert net.conv1[0].in_channels == 1  # in_channels comes from the data
    with torch.no_grad():
        assert net(torch.randn(2, 1, 8, 8)).shape == (2, 96)


def no_hub(*args, **kwargs):
    raise AssertionError("timm tried to reach the model hub")


@needs_timm
def test_local_weights_are_loaded_without_the_classifier(tmp_path, monkeypatch):
    import timm
    import timm.models._builder as builder

    for fetch in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(builder, fetch, no_hub)

    source = timm.create_model(TINY, pretrained=False)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    cfg = timm_model_config(f"model.name={TINY}", f"model.weights={path}")
    net = build_backbone(cfg, (3, 16, 16), "image")
    own = net.state_dict()
    assert not any(key.startswith("fc.") for key in own)
    for key, value in own.items():
        torch.testing.assert_close(value, source.state_dict()[key])
    # one input channel: timm folds the pretrained RGB filters into one
    gray = build_backbone(cfg, (1, 16, 16), "image")
    torch.testing.assert_close(gray.conv1[0].weight, source.conv1[0].weight.sum(1, keepdim=True))


@needs_timm
def test_bad_names_and_weights_are_refused_clearly(tmp_path):
    import timm

    with pytest.raises(ValueError, match=r"model\.name='test_resnett' is not a timm model.*"):
        timm_backbone("test_resnett")
    with pytest.raises(ValueError, match=r"close matches: \['test_resnet'"):
        timm_backbone("test_resnett")
    assert timm_model_config().name is None
    with pytest.raises(ValueError, match=r"needs a model name: pass model\.name=NAME"):
        timm_backbone(None)
    with pytest.raises(ValueError, match=r"does not exist.*model\.weights=null"):
        timm_backbone(TINY, weights=str(tmp_path / "missing.pt"))
    other = tmp_path / "other.pt"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    with pytest.raises(ValueError, match=r"does not fit timm model 'test_resnet'.*same arch"):
        timm_backbone(TINY, weights=str(other))


@needs_timm
def test_pretrained_true_without_weights_names_the_timm_recipe():
    cfg = timm_model_config(f"model.name={TINY}", "model.pretrained=true")
    with pytest.raises(ValueError, match=r"timm\.create_model\('test_resnet', pretrained=True\)"):
        build_backbone(cfg, (3, 8, 8), "image")


def test_missing_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    install = r"needs the timm package.*pip install 'pico-pll\[timm\]'"
    with pytest.raises(ImportError, match=install):
        timm_backbone(TINY)


def cub200_with_timm(*overrides: str):
    """The CUB-200 preset with a timm ResNet-18 as its backbone."""
    preset = ["+presets=cub200_q0.05", "model=timm", "model.name=resnet18", "run_dir=x"]
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose("train", overrides=[*preset, *overrides])


def test_cub200_preset_takes_a_timm_resnet():
    cfg = cub200_with_timm()
    assert cfg.model._target_ == "pico.models.timm_backbone.timm_backbone"
    assert cfg.model.pretrained is True and cfg.model.weights is None  # still refuses scratch
    assert OmegaConf.select(cfg, "data.name") == "cub200"


@needs_timm
def test_cub200_preset_builds_a_timm_resnet_from_local_weights(tmp_path):
    import timm

    path = tmp_path / "resnet18.pt"
    state = timm.create_model("resnet18").state_dict()
    torch.save(state, path)
    net = build_backbone(cub200_with_timm(f"model.weights={path}").model, (3, 224, 224), "image")
    assert net.out_dim == 512
    torch.testing.assert_close(net.conv1.weight, state["conv1.weight"])


@needs_timm
@pytest.mark.slow
def test_timm_backbone_trains_one_digits_epoch(make_config, tmp_path):
    cfg = make_config(
        "model=timm",
        f"model.name={TINY}",
        "method=proden",
        "trainer.epochs=1",
        "trainer.batch_size=256",
        tiny_convnet=False,
    )
    run_training(cfg)
    run = tmp_path / "run"
    assert "conv1.0.weight" in backbone_state(run / "checkpoints" / "last.pt")  # timm's stem
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"]["epoch"] == 1
    assert 0.0 <= metrics["final"]["test/top1"] <= 1.0
