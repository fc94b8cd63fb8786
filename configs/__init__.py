"""pico's Hydra configs, shipped as the package ``pico.configs`` (``configs/`` in the
source tree): ``train.yaml`` and its groups, and the entry configs of ``pico-eval``,
``pico-export`` and ``pico-predict``.

A method's constructor defaults are its recommended values, and ``method/NAME.yaml``
holds only its ``_target_`` and what differs from them. Importing this package registers
in Hydra's ConfigStore, for every method config, a node ``method_defaults/NAME``: the
``_target_`` and every constructor argument after ``backbone`` and ``task`` with its
default (:func:`pico.engine.constructor_defaults`; an argument without a default is
``???``, which the method config must set). The method config puts that node first in
its defaults list (``- /method_defaults/NAME@method``, then ``_self_``), so the composed
``method`` holds every argument and ``pico-train method.KEY=VALUE`` overrides any of
them without a ``+``. Hydra imports this package before it reads a config from it
(``config_path="pkg://pico.configs"``, ``initialize_config_module("pico.configs")``),
so the nodes exist whenever a method config is composed.
"""

from __future__ import annotations

import importlib
from importlib import resources
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pico.engine.method import constructor_parameters

#: the ConfigStore group of the constructor-default nodes
GROUP = "method_defaults"


def config_value(value: Any) -> tuple[bool, Any]:
    """``(True, value)`` for a default a config can hold (None, bool, int, float, str,
    and lists of them; a tuple becomes a list), else ``(False, None)``."""
    if value is None or isinstance(value, bool | int | float | str):
        return True, value
    if isinstance(value, list | tuple):
        items = [config_value(item) for item in value]
        if all(ok for ok, _ in items):
            return True, [item for _, item in items]
    return False, None


def method_defaults(target: str) -> dict[str, Any]:
    """The ``method`` node of class ``target`` (``"pico.pll.pico.PiCO"``): ``_target_``
    and every constructor argument with its default, ``???`` where it has none.
    Arguments whose default a config cannot hold (a function, a module) are left out:
    the class keeps its default, and a config cannot override it."""
    module, _, name = target.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    node: dict[str, Any] = {"_target_": target}
    for param in constructor_parameters(cls):
        if param.default is param.empty:
            node[param.name] = MISSING
            continue
        ok, value = config_value(param.default)
        if ok:
            node[param.name] = value
    return node


def register_method_defaults() -> None:
    """Store ``method_defaults/NAME`` for every ``method/NAME.yaml`` of this package (the
    class its ``method._target_`` names); idempotent."""
    store = ConfigStore.instance()
    for path in sorted(resources.files(__name__).joinpath("method").iterdir(), key=str):
        if not path.name.endswith(".yaml"):
            continue
        with path.open(encoding="utf-8") as f:
            target = OmegaConf.select(OmegaConf.load(f), "method._target_")
        if target is not None:
            store.store(group=GROUP, name=path.name[: -len(".yaml")], node=method_defaults(target))


register_method_defaults()
