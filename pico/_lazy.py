"""Lazy package exports (PEP 562 module ``__getattr__``).

A package lists the names it exports and the module each one lives in; a module is
imported on the first access to one of its names. So importing the package loads
nothing heavy, and modules that need Hydra, OmegaConf or matplotlib are loaded only
when one of their names is used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each name to the module
    that defines it, ``submodules`` are subpackages reachable as attributes. A resolved
    name is cached on the package, so the lookup runs once."""
    subs = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in subs:
            value: Any = importlib.import_module(f"{package}.{name}")
        elif name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports, *subs})

    return __getattr__, __dir__
