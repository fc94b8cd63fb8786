"""Every paper preset composes with the packaged configs and carries the paper's values."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

import pico.configs

PRESETS = sorted(p.stem for p in (Path(pico.configs.__file__).parent / "presets").glob("*.yaml"))
EXPECTED = {
    "cifar10_q0.1": ("cifar10", 0.1, 1, 8192),
    "cifar10_q0.3": ("cifar10", 0.3, 1, 8192),
    "cifar10_q0.5": ("cifar10", 0.5, 1, 8192),
    "cifar100_q0.01": ("cifar100", 0.01, 1, 8192),
    "cifar100_q0.05": ("cifar100", 0.05, 1, 8192),
    "cifar100_q0.1": ("cifar100", 0.1, 100, 8192),
    "cifar100_h_q0.5": ("cifar100_h", 0.5, 1, 8192),
    "cub200_q0.05": ("cub200", 0.05, 100, 4096),
}


def test_every_preset_is_listed():
    assert sorted(EXPECTED) == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_with_paper_values(name):
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"+presets={name}", "run_dir=x", "data.root=/d"])
    data, q, warmup, queue = EXPECTED[name]
    assert cfg.data.name == data
    assert cfg.data.candidates.q == q
    assert cfg.method._target_ == "pico.pll.pico.PiCO"
    assert cfg.method.warmup_epochs == warmup and cfg.method.warmup_min_steps == 0
    assert cfg.method.queue_size == queue
    assert cfg.trainer.batch_size == 256 and cfg.trainer.optimizer.lr == 0.01
    expected_model = "imagenet_resnet" if data == "cub200" else "cifar_resnet"
    assert cfg.model._target_.endswith(expected_model)
    if data == "cifar100_h":
        assert cfg.data.candidates.name == "hierarchical"
