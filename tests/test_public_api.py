"""The public API: what ``pico`` and its subpackages export, and what importing them loads."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pico

PACKAGES = [
    "pico",
    "pico.core",
    "pico.data",
    "pico.engine",
    "pico.eval",
    "pico.models",
    "pico.pll",
    "pico.baselines",
]
#: modules a training loop imports; none may load Hydra or OmegaConf
LIGHT = ["pico", "pico.pll.pico", "pico.pll", "pico.core", "pico.models", "pico.engine"]
LIGHT += ["pico.data", "pico.eval", "pico.baselines.moco", "pico.baselines"]
LIGHT += ["pico.engine.trainer_config"]
PYPROJECT = (Path(__file__).parents[1] / "pyproject.toml").read_text()


def project_field(key: str) -> str:
    """A string field of pyproject's ``[project]`` table (tomllib needs Python 3.11)."""
    table = PYPROJECT.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(rf'^{key} = "([^"]+)"$', table, re.MULTILINE)
    assert match, f"pyproject.toml [project] has no {key}"
    return match[1]


def test_top_level_names() -> None:
    from pico.core.losses import info_nce
    from pico.pll.cc import cc_loss
    from pico.pll.pico import PiCO

    assert pico.PiCO is PiCO
    assert pico.info_nce is info_nce
    assert pico.cc_loss is cc_loss


def test_subpackage_names() -> None:
    from pico.pll import PiCO, cc_loss

    assert PiCO.__module__ == "pico.pll.pico"
    assert cc_loss.__module__ == "pico.pll.cc"


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_resolves(name: str) -> None:
    module = importlib.import_module(name)
    assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ repeats a name"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names {missing}, which do not resolve"
    assert set(module.__all__) <= set(dir(module))


def test_lazy_names_load_on_first_use() -> None:
    from pico.api import evaluate, train
    from pico.baselines.moco import MoCo
    from pico.engine.trainer import Trainer
    from pico.engine.trainer_config import TrainerConfig
    from pico.eval.evaluator import Evaluator

    assert (pico.MoCo, pico.Trainer, pico.Evaluator) == (MoCo, Trainer, Evaluator)
    assert (pico.train, pico.evaluate, pico.TrainerConfig) == (train, evaluate, TrainerConfig)
    assert pico.data.load_data.__module__ == "pico.data.sources"


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"module 'pico\.models' has no attribute 'nope'"):
        _ = importlib.import_module("pico.models").nope


def test_version_matches_pyproject() -> None:
    assert pico.__version__ == project_field("version")
    assert project_field("version") == pico._SOURCE_VERSION, "update pico._SOURCE_VERSION"
    assert project_field("name") == pico._DISTRIBUTION, "update pico._DISTRIBUTION"


def test_imports_load_neither_hydra_nor_omegaconf() -> None:
    """One fresh interpreter imports each light module in turn and names the first that
    brings in Hydra or OmegaConf."""
    script = (
        "import importlib, sys\n"
        f"for name in {LIGHT!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf'))\n"
        "    if heavy:\n"
        "        sys.exit(f'import {name} loaded {heavy[:3]}')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
