"""The Python entry points (``pico.train``, ``pico.evaluate``) and the checkpoints of the
Python path (``Experiment.fit``), which ``pico-eval`` takes as it takes pico-train's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, TINY_CONVNET
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import pico
from pico.api import compose_config, eval_dir
from pico.cli import run_evaluation
from pico.engine.checkpoint import load_checkpoint
from pico.experiment import build_experiment

FAST = [*TINY, *TINY_CONVNET, "method=proden", "trainer.epochs=1", "trainer.threads=1"]


def test_compose_config_names_the_run_dir_as_pico_train_does() -> None:
    cfg = compose_config(["method=proden"])
    assert cfg.run_dir.startswith("runs/proden-digits/")
    assert "hydra" not in cfg and not HydraConfig.initialized()
    assert cfg.method._target_ == "pico.pll.proden.PRODEN"
    assert compose_config(["run_dir=elsewhere"]).run_dir == "elsewhere"


def test_train_from_overrides_then_evaluate(tmp_path: Path) -> None:
    announced: list[str] = []
    result = pico.train([*FAST, f"run_dir={tmp_path / 'run'}"], announce=announced.append)
    assert result["run_dir"] == str(tmp_path / "run")
    assert announced[0].startswith("method      PRODEN\n")
    assert (tmp_path / "run" / "config.yaml").is_file()
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    evaluation = pico.evaluate(best, device="cpu", parts="classifier")
    assert isinstance(evaluation, pico.Evaluation)
    assert evaluation.epoch == 1
    assert evaluation.metrics["test/top1"] == pytest.approx(result["final"]["test/top1"], abs=1e-6)
    assert evaluation.files == {"eval.json": tmp_path / "run" / "eval.json"}
    written = json.loads(evaluation.files["eval.json"].read_text())
    assert written["parts"] == "classifier" and written["epoch"] == 1
    assert eval_dir(best) == tmp_path / "run" and eval_dir(best, "x") == Path("x")


def test_unknown_eval_parts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parts=bogus is unknown"):
        pico.evaluate(tmp_path / "none.pt", parts="bogus")


def test_a_checkpoint_of_experiment_fit_carries_its_config(make_config, tmp_path: Path) -> None:
    """The Python path: build_experiment, a Trainer from a dict, exp.fit without a
    config_yaml; the checkpoint records the trainer's settings, run_dir and seed, and
    pico-eval evaluates it."""
    cfg = make_config(*FAST, "trainer.embedding_figure=false", run_dir="unused")
    exp = build_experiment(cfg)
    assert exp.config is cfg
    trainer = pico.Trainer({"epochs": 1, "progress": False, "threads": 1}, tmp_path / "py", 3)
    result = exp.fit(trainer, cfg.eval)
    last = tmp_path / "py" / "checkpoints" / "last.pt"
    stored = OmegaConf.create(load_checkpoint(last)["config"])
    assert OmegaConf.to_container(stored.trainer) == trainer.cfg.to_dict()
    assert (stored.run_dir, stored.seed) == (str(tmp_path / "py"), 3)
    assert stored.method == cfg.method and stored.data == cfg.data
    metrics = run_evaluation(last, device="cpu", parts="classifier")
    assert metrics["test/top1"] == pytest.approx(result["final"]["test/top1"], abs=1e-6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [Path(sys.executable).parent / "pico-eval", f"checkpoint={last}", "device=cpu"]
    out = subprocess.run(
        [*command, "parts=knn"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "py" / "eval.json").read_text())["parts"] == "knn"
