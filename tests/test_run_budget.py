"""Run budgets in optimizer steps, and the CPU thread count of a run."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from pico.cli import run_training
from pico.engine.trainer import (
    AUTO_THREADS_PARAMS,
    DEFAULT_THREADS,
    planned_epochs,
    resolve_threads,
)


@pytest.mark.parametrize(
    ("steps", "per_epoch", "expected"), [(None, 7, 30), (100, 7, 15), (98, 7, 14), (3, 50, 1)]
)
def test_a_step_budget_sets_the_epochs(steps, per_epoch, expected):
    cfg = OmegaConf.create({"epochs": 30, "steps": steps})
    assert planned_epochs(cfg, per_epoch) == expected


@pytest.mark.parametrize(("per_epoch", "expected"), [(3, 200), (62, 49), (5000, 1)])
def test_max_steps_caps_large_sets_only(per_epoch, expected):
    cfg = OmegaConf.create({"epochs": 200, "max_steps": 3000})
    assert planned_epochs(cfg, per_epoch) == expected
    assert planned_epochs(OmegaConf.create({"epochs": 5, "steps": 700, "max_steps": 300}), 10) == 30


@pytest.mark.parametrize("steps", [0, -5, "abc", 2.5, True])
@pytest.mark.parametrize("key", ["steps", "max_steps"])
def test_a_bad_step_budget_is_refused(key, steps):
    with pytest.raises(ValueError, match=rf"trainer\.{key}=.* must be a positive number"):
        planned_epochs(OmegaConf.create({"epochs": 30, key: steps}), 7)


def test_a_step_budget_run_trains_that_many_steps(make_config, tmp_path):
    # digits' training split at batch 64: 21 steps per epoch
    run_training(make_config("method=proden", "trainer.steps=50", "trainer.embedding_figure=false"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final"]["epoch"] == 3


def test_auto_threads_take_one_thread_for_small_models():
    small, large = torch.nn.Linear(10, 10), torch.nn.Linear(1500, AUTO_THREADS_PARAMS // 1500)
    cpu = torch.device("cpu")
    assert resolve_threads("auto", small, cpu) == 1
    torch.set_num_threads(1)  # as an earlier small run leaves it
    assert resolve_threads("auto", large, cpu) == DEFAULT_THREADS
    assert resolve_threads(3, small, cpu) == 3
    with pytest.raises(ValueError, match=r"trainer\.threads=0 must be a positive number"):
        resolve_threads(0, small, cpu)
