"""The trainer's typed config: its defaults are ``configs/trainer/default.yaml``, and the
Trainer takes one, a dict or the ``trainer`` node of a composed config."""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import pico
from pico.engine.trainer import Trainer
from pico.engine.trainer_config import DEFAULT_OPTIMIZER, TrainerConfig


def yaml_defaults() -> dict:
    """``configs/trainer/default.yaml`` composed with its optimizer default, plain."""
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("trainer/default")
    return OmegaConf.to_container(cfg.trainer, resolve=True)


def test_defaults_are_the_yaml_values() -> None:
    yaml, typed = yaml_defaults(), TrainerConfig().to_dict()
    assert list(typed) == [f.name for f in dataclasses.fields(TrainerConfig)]
    assert typed.keys() == yaml.keys(), "a field without a YAML key, or the other way round"
    differ = {key: (typed[key], yaml[key]) for key in yaml if typed[key] != yaml[key]}
    assert not differ, f"TrainerConfig default != configs/trainer/default.yaml: {differ}"
    assert yaml["optimizer"] == DEFAULT_OPTIMIZER


def test_built_from_a_dict_or_a_config_node() -> None:
    assert TrainerConfig.from_config({"epochs": 5}) == TrainerConfig(epochs=5)
    node = OmegaConf.create({"epochs": 5, "loggers": ["csv"], "batch_size": "${epochs}"})
    typed = TrainerConfig.from_config(node)
    assert (typed.epochs, typed.batch_size, typed.loggers) == (5, 5, ["csv"])
    assert type(typed.loggers) is list
    given = TrainerConfig(epochs=3)
    assert TrainerConfig.from_config(given) is given
    assert TrainerConfig.from_config(None) == TrainerConfig()


def test_optimizer_without_target_changes_the_default_sgd() -> None:
    changed = TrainerConfig.from_config({"optimizer": {"lr": 0.1}}).optimizer
    assert changed == {**DEFAULT_OPTIMIZER, "lr": 0.1}
    adamw = {"_target_": "torch.optim.AdamW", "lr": 1e-3}
    assert TrainerConfig.from_config({"optimizer": adamw}).optimizer == adamw


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown trainer config keys \['epoch', 'lr'\].*epochs"):
        TrainerConfig.from_config({"epoch": 5, "lr": 0.1})


def test_trainer_takes_a_dict_or_a_typed_config(tmp_path) -> None:
    trainer = Trainer({"epochs": 5, "device": "cpu"}, tmp_path, 1)
    assert trainer.cfg == TrainerConfig(epochs=5, device="cpu")
    assert (trainer.device.type, trainer.seed, trainer.run_dir) == ("cpu", 1, tmp_path)
    assert Trainer(TrainerConfig(epochs=5), tmp_path, 0).cfg.epochs == 5
    assert pico.TrainerConfig is TrainerConfig
    with pytest.raises(ValueError, match=r"unknown trainer config key \['epoch'\]"):
        Trainer({"epoch": 5}, tmp_path, 0)
