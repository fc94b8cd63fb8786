"""The scripts in examples/ run and do what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_plain_loop_example_trains_pico_on_digits() -> None:
    spec = importlib.util.spec_from_file_location("pico_digits", EXAMPLES / "pico_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.train_pico_on_digits(epochs=50) >= 0.97
