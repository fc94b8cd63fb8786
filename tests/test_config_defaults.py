"""One source of defaults: every value a method YAML sets is its constructor's default, so
``PiCO(backbone, task)`` in Python builds the method that ``method=pico`` builds."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import torch
from conftest import CONFIGS, candidate_task, method_config, tiny_backbone
from hydra.utils import instantiate
from torch import nn

from pico.models.convnet import SmallConvNet

METHODS = sorted(path.stem for path in (CONFIGS / "method").glob("*.yaml"))
#: (method, key) -> why its YAML deliberately differs from the constructor default
EXCEPTIONS: dict[tuple[str, str], str] = {}
#: methods that read a spatial feature map of the backbone (DIM's local features)
SPATIAL = {"dim"}


def constructor(name: str) -> type[nn.Module]:
    """The class ``configs/method/NAME.yaml`` instantiates."""
    module, _, cls = method_config(name).method._target_.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def constructor_defaults(cls: type) -> dict[str, Any]:
    """Default of every constructor argument, following ``**kwargs`` that a constructor
    hands to its base class (PiCO+ takes PiCO's arguments that way)."""
    defaults: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        for param in params:
            if param.default is not param.empty:
                defaults.setdefault(param.name, param.default)
        if all(param.kind is not param.VAR_KEYWORD for param in params):
            return defaults
    return defaults


def test_every_method_yaml_is_covered() -> None:
    assert {"pico", "pico_plus", "moco", "cavl"} <= set(METHODS)
    assert all(key[0] in METHODS for key in EXCEPTIONS), "an exception names no method YAML"


@pytest.mark.parametrize("name", METHODS)
def test_yaml_values_are_the_constructor_defaults(name: str) -> None:
    defaults = constructor_defaults(constructor(name))
    keys = {k: v for k, v in method_config(name).method.items() if k != "_target_"}
    unknown = sorted(keys.keys() - defaults.keys())
    assert not unknown, f"configs/method/{name}.yaml sets {unknown}: no constructor arguments"
    differ = {
        key: (value, defaults[key])
        for key, value in keys.items()
        if (name, key) not in EXCEPTIONS and value != defaults[key]
    }
    assert not differ, (
        f"configs/method/{name}.yaml and the constructor disagree (yaml, default): {differ}; "
        "change the constructor default, or list the key in EXCEPTIONS with its reason"
    )


def tiny_encoder(name: str) -> nn.Module:
    """A small backbone for method ``name``: convolutional where it needs a feature map."""
    return SmallConvNet(widths=(4, 8)) if name in SPATIAL else tiny_backbone(8)


def fingerprint(method: nn.Module) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """Structure, plain attributes (hyperparameters) and state of a method."""
    attributes = {k: v for k, v in vars(method).items() if not k.startswith("_")}
    return repr(method), attributes, method.state_dict()


@pytest.mark.parametrize("name", [n for n in METHODS if not any(k[0] == n for k in EXCEPTIONS)])
def test_python_defaults_build_the_cli_method(name: str) -> None:
    """The method built from Python with only backbone and task equals the one the CLI
    builds from the YAML (same seed, so the same initial weights)."""
    task = candidate_task()
    torch.manual_seed(0)
    python = constructor(name)(tiny_encoder(name), task)
    torch.manual_seed(0)
    cli = instantiate(method_config(name).method, _partial_=True)(
        backbone=tiny_encoder(name), task=task
    )
    (py_repr, py_attrs, py_state), (cli_repr, cli_attrs, cli_state) = map(
        fingerprint, (python, cli)
    )
    assert py_repr == cli_repr
    assert py_attrs == cli_attrs
    assert py_state.keys() == cli_state.keys()
    for key, value in py_state.items():
        assert torch.equal(value, cli_state[key]), key
