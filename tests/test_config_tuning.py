"""Tuning specializations (configs/tuning/METHOD_DATA.yaml) and the flip-free digit views."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, method_config
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from pico.data.augment import build_augment

TUNING = CONFIGS / "tuning"


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose("train", overrides=["run_dir=x", *overrides])


def _leaves(node: DictConfig, prefix: str = "") -> dict[str, object]:
    """Every leaf of a config as ``{"a.b.c": value}``, walked with plain loops."""
    out: dict[str, object] = {}
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            out.update(_leaves(value, f"{path}."))
        else:
            out[path] = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
    return out


def _value(cfg: DictConfig, path: str) -> object:
    value = OmegaConf.select(cfg, path)
    return OmegaConf.to_container(value) if OmegaConf.is_list(value) else value


def test_simclr_on_digits_gets_the_tuned_values() -> None:
    cfg = _compose("method=simclr", "data=digits")
    tuned = OmegaConf.load(TUNING / "simclr_digits.yaml")
    assert cfg.method.temperature == tuned.method.temperature == 0.2
    assert cfg.trainer.optimizer.lr == tuned.trainer.optimizer.lr == 0.1


def test_simclr_on_cifar10_gets_the_paper_values() -> None:
    cfg = _compose("method=simclr", "data=cifar10")
    paper = method_config("simclr")
    assert cfg.method.temperature == paper.method.temperature == 0.5
    assert "trainer" not in paper  # SGD at the trainer's lr stands in for LARS
    assert cfg.trainer.optimizer.lr == OmegaConf.load(CONFIGS / "trainer/optimizer/sgd.yaml").lr


def test_command_line_beats_the_tuning_file() -> None:
    cfg = _compose(
        "method=simclr", "data=digits", "method.temperature=0.3", "trainer.optimizer.lr=0.2"
    )
    assert cfg.method.temperature == 0.3 and cfg.trainer.optimizer.lr == 0.2


def test_removing_the_tuning_gives_the_paper_values_on_digits() -> None:
    cfg = _compose("method=simclr", "data=digits", "~tuning")
    assert cfg.method.temperature == method_config("simclr").method.temperature


def test_a_preset_beats_the_tuning_file(tmp_path: Path) -> None:
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "lr_only.yaml").write_text(
        "# @package _global_\ntrainer:\n  optimizer:\n    lr: 0.3\n"
    )
    cfg = _compose("method=simclr", f"hydra.searchpath=[file://{tmp_path}]", "+presets=lr_only")
    assert cfg.trainer.optimizer.lr == 0.3  # the preset's value
    assert cfg.method.temperature == 0.2  # what the preset leaves alone stays tuned


@pytest.mark.parametrize("path", sorted(TUNING.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_tuning_file_names_a_method_and_data_and_applies(path: Path) -> None:
    # the tuning entry is optional: a misnamed file would silently never apply
    assert path.read_text().startswith("# @package _global_\n")
    method, data = path.stem.split("_", 1)
    assert (CONFIGS / "method" / f"{method}.yaml").exists(), path.name
    assert (CONFIGS / "data" / f"{data}.yaml").exists(), path.name
    tuned = _leaves(OmegaConf.load(path))
    assert tuned
    with_tuning = _compose(f"method={method}", f"data={data}")
    without = _compose(f"method={method}", f"data={data}", "~tuning")
    for key, value in tuned.items():
        assert _value(with_tuning, key) == value, key
    assert any(_value(without, key) != value for key, value in tuned.items())


def test_other_methods_compose_without_a_tuning_file() -> None:
    cfg = _compose("method=pico", "data=digits")
    assert not (TUNING / "pico_digits.yaml").exists()
    assert cfg.method.warmup_min_steps == 600


@pytest.mark.parametrize("data", ["digits", "svhn", "mnist"])
def test_digit_data_views_never_mirror(data: str) -> None:
    cfg = _compose(f"data={data}", "method=simclr")
    image = {"digits": (1, 8, 8), "svhn": (3, 32, 32), "mnist": (1, 28, 28)}[data]
    x = torch.randint(0, 256, (16, *image), dtype=torch.uint8, generator=torch.Generator())
    for name, recipe in cfg.aug.items():
        for op in recipe:
            if op._target_.endswith("RandomHorizontalFlip"):
                assert op.p == 0, (data, name)
        views = build_augment(recipe)(x, torch.Generator().manual_seed(0))
        assert torch.isfinite(views).all()
        if name == "local":  # multi-crop: smaller crops of the same images
            assert views.shape[:2] == x.shape[:2] and views.shape[2] < x.shape[2]
        else:
            assert views.shape == x.shape
