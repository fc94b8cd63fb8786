"""One source of defaults: a method's constructor defaults are its recommended values, and
``configs/method/NAME.yaml`` holds only its ``_target_`` and what differs from them. The
composed config still holds every constructor argument (``method.KEY=VALUE`` overrides
any of them), and ``PiCO(backbone, task)`` in Python builds the method that ``method=pico``
builds."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import replace
from typing import Any

import pytest
import torch
from conftest import CONFIGS, candidate_task, tiny_backbone
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pico.configs import GROUP, method_defaults
from pico.models.convnet import SmallConvNet

METHODS = sorted(path.stem for path in (CONFIGS / "method").glob("*.yaml"))
#: (method, key) -> why its YAML deliberately restates the constructor default
EXCEPTIONS: dict[tuple[str, str], str] = {}
#: methods that read a spatial feature map of the backbone (DIM's local features)
SPATIAL = {"dim"}
#: methods that encode patches of the image (CPC): a convolutional backbone, and images of
#: 32 px, where the default grid (8 px patches at stride 4) fits
PATCHES = {"cpc"}
#: a constructor argument without a default
REQUIRED = inspect.Parameter.empty


def yaml_method(name: str) -> DictConfig:
    """The ``method`` node of ``configs/method/NAME.yaml`` as the file writes it."""
    return OmegaConf.load(CONFIGS / "method" / f"{name}.yaml").method


def own_keys(name: str) -> dict[str, Any]:
    """What the method YAML sets besides ``_target_``."""
    node = OmegaConf.to_container(yaml_method(name))
    assert isinstance(node, dict)
    return {key: value for key, value in node.items() if key != "_target_"}


def constructor(name: str) -> type[nn.Module]:
    """The class ``configs/method/NAME.yaml`` instantiates."""
    module, _, cls = yaml_method(name)._target_.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def constructor_defaults(cls: type) -> dict[str, Any]:
    """Default of every constructor argument after ``backbone`` and ``task`` (``REQUIRED``
    where it has none), following ``**kwargs`` that a constructor hands to its base class
    (PiCO+ takes PiCO's arguments that way). Written apart from
    :func:`pico.engine.constructor_defaults`, which the configs are built from, to check it."""
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        for param in params:
            if param.name in ("self", "backbone", "task"):
                continue
            if param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                defaults.setdefault(param.name, param.default)
        if all(param.kind is not param.VAR_KEYWORD for param in params):
            return defaults
    return defaults


def composed(name: str, *overrides: str) -> DictConfig:
    """The ``train`` config of ``pico-train method=NAME ~tuning OVERRIDES``."""
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose("train", overrides=[f"method={name}", "~tuning", *overrides])


def test_every_method_yaml_is_covered() -> None:
    assert {"pico", "pico_plus", "moco", "cavl"} <= set(METHODS)
    assert all(key[0] in METHODS for key in EXCEPTIONS), "an exception names no method YAML"


@pytest.mark.parametrize("name", METHODS)
def test_yaml_sets_no_key_at_its_constructor_default(name: str) -> None:
    defaults = constructor_defaults(constructor(name))
    keys = own_keys(name)
    unknown = sorted(keys.keys() - defaults.keys())
    assert not unknown, f"configs/method/{name}.yaml sets {unknown}: no constructor arguments"
    restated = [k for k, v in keys.items() if (name, k) not in EXCEPTIONS and v == defaults[k]]
    assert not restated, (
        f"configs/method/{name}.yaml restates the constructor defaults of {restated}; "
        "drop them (method_defaults supplies them), or list them in EXCEPTIONS with a reason"
    )
    stale = [k for (n, k) in EXCEPTIONS if n == name and keys.get(k, REQUIRED) != defaults[k]]
    assert not stale, f"EXCEPTIONS lists {stale} of {name}, which its YAML does not restate"


@pytest.mark.parametrize("name", METHODS)
def test_composed_method_has_every_constructor_argument(name: str) -> None:
    """So that ``method.KEY=VALUE`` overrides any argument without a ``+``: each key at its
    constructor default (same value, same type) unless the YAML sets it."""
    defaults = constructor_defaults(constructor(name))
    method = OmegaConf.to_container(composed(name).method)
    assert isinstance(method, dict)
    assert method.pop("_target_") == yaml_method(name)._target_
    assert method.keys() == defaults.keys()
    keys = own_keys(name)
    for key, default in defaults.items():
        expected = keys.get(key, "???" if default is REQUIRED else default)
        expected = list(expected) if isinstance(expected, tuple) else expected
        assert (type(method[key]), method[key]) == (type(expected), expected), key


@pytest.mark.parametrize("name", METHODS)
def test_every_key_takes_an_override(name: str) -> None:
    """Every argument of the composed method takes a command-line style override; a key
    that is none of them is refused (the config stays in struct mode)."""
    keys = [k for k in composed(name).method if k != "_target_"]
    cfg = composed(name, *(f"method.{key}=null" for key in keys))
    assert all(cfg.method[key] is None for key in keys)
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        composed(name, "method.no_such_argument=1")


def tiny_encoder(name: str) -> nn.Module:
    """A small backbone for method ``name``: convolutional where it needs a feature map or
    encodes patches."""
    return SmallConvNet(widths=(4, 8)) if name in SPATIAL | PATCHES else tiny_backbone(8)


def attributes(module: nn.Module) -> dict[str, Any]:
    """Public plain attributes (hyperparameters) of a module; a module kept as a plain
    attribute (PiCO's disambiguation loss, whose state is its method's buffers) by its
    repr and its own attributes."""
    return {
        key: (repr(value), attributes(value)) if isinstance(value, nn.Module) else value
        for key, value in vars(module).items()
        if not key.startswith("_")
    }


def fingerprint(method: nn.Module) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """Structure, hyperparameters and state of a method."""
    return repr(method), attributes(method), method.state_dict()


@pytest.mark.parametrize("name", METHODS)
def test_python_defaults_build_the_cli_method(name: str) -> None:
    """The method built from Python with only backbone and task (and what its YAML sets on
    purpose, nothing today) equals the one the CLI builds from the composed config (same
    seed, so the same initial weights)."""
    # CMC builds one encoder per view with the task's backbone factory
    task = replace(candidate_task(), make_backbone=lambda shape: tiny_backbone(8, shape=shape))
    if name in PATCHES:
        task = replace(task, input_shape=(1, 32, 32))
    torch.manual_seed(0)
    python = constructor(name)(tiny_encoder(name), task, **own_keys(name))
    torch.manual_seed(0)
    cli = instantiate(composed(name).method, _partial_=True)(backbone=tiny_encoder(name), task=task)
    (py_repr, py_attrs, py_state), (cli_repr, cli_attrs, cli_state) = map(
        fingerprint, (python, cli)
    )
    assert py_repr == cli_repr
    assert py_attrs == cli_attrs
    assert py_state.keys() == cli_state.keys()
    for key, value in py_state.items():
        assert torch.equal(value, cli_state[key]), key


class Toy(nn.Module):
    """A constructor with what a config can and cannot hold."""

    def __init__(
        self,
        backbone: nn.Module,
        task: Any,
        size: int,
        widths: tuple[int, ...] = (4, 8),
        act: type[nn.Module] = nn.ReLU,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        self.size, self.widths, self.act, self.scale = size, widths, act, scale


def test_defaults_node_holds_what_a_config_can_and_round_trips() -> None:
    """A tuple default becomes a list, an argument without a default ``???``; a default a
    config cannot hold (a class) is left to the constructor."""
    target = f"{Toy.__module__}.Toy"
    node = method_defaults(target)
    assert node == {"_target_": target, "size": "???", "widths": [4, 8], "scale": None}
    cfg = OmegaConf.create(node)
    cfg.size = 3
    toy = instantiate(cfg, _partial_=True)(backbone=nn.Identity(), task=None)
    assert (toy.size, list(toy.widths), toy.act, toy.scale) == (3, [4, 8], nn.ReLU, None)


def test_every_method_yaml_has_its_defaults_node() -> None:
    stored = ConfigStore.instance().list(GROUP)
    assert sorted(name.removesuffix(".yaml") for name in stored) == METHODS
