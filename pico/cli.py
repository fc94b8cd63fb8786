"""Command-line entry points: ``pico-train`` and ``pico-eval`` (Hydra)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from pico.engine.checkpoint import load_checkpoint
from pico.engine.trainer import Trainer
from pico.experiment import build_experiment

log = logging.getLogger("pico")

CONFIG_PATH = "pkg://pico.configs"


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Metrics as a plain-text table: one row per metric, one column per result."""
    columns = list(rows)
    names = sorted({name for values in rows.values() for name in values if name != "epoch"})
    width = max([len(n) for n in names] + [6])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{c:>10}" for c in columns)]
    for name in names:
        cells = []
        for column in columns:
            value = rows[column].get(name)
            cells.append(f"{value:>10.4f}" if value is not None else f"{'-':>10}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train as configured by ``cfg`` (the composed ``train`` config); return the results."""
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    (run_dir / "config.yaml").write_text(config_yaml)
    print(config_yaml)
    exp = build_experiment(cfg)
    trainer = Trainer(cfg.trainer, run_dir, cfg.seed)
    result = trainer.fit(
        exp.method,
        exp.bundle,
        exp.augmenters,
        exp.evaluator,
        select_metric=cfg.eval.select_metric,
        select_mode=cfg.eval.select_mode,
        config_yaml=config_yaml,
        resume=cfg.resume,
    )
    rows = {"final": result["final"]}
    if result["best"]:
        rows[f"best (epoch {result['best']['epoch']})"] = result["best"]
    print(f"\nrun directory: {run_dir}")
    print(f"best checkpoint chosen by {cfg.eval.select_metric} ({cfg.eval.select_mode})")
    print(f"{result['images_per_second']:.0f} images/s, {result['train_seconds']:.1f} s\n")
    print(format_table(rows))
    return result


def run_evaluation(checkpoint: str | Path, device: str = "auto") -> dict[str, float]:
    """Rebuild the run of ``checkpoint`` from its stored config and evaluate it."""
    path = Path(checkpoint)
    state = load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    cfg.trainer.device = device
    exp = build_experiment(cfg)
    exp.method.load_state_dict(state["method"])
    exp.method.to(exp.device)
    metrics = exp.evaluator(exp.method)
    out = (
        path.parent.parent / "eval.json"
        if path.parent.name == "checkpoints"
        else path.with_suffix(".eval.json")
    )
    out.write_text(
        json.dumps({"checkpoint": str(path), "epoch": state["epoch"], **metrics}, indent=2)
    )
    print(format_table({f"epoch {state['epoch']}": metrics}))
    print(f"\nwritten {out}")
    return metrics


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def train(cfg: DictConfig) -> None:
    """``pico-train``: train any method on any data, chosen by config overrides."""
    # single runs write to run_dir; multirun jobs to their own sweep subdirectory
    cfg.run_dir = HydraConfig.get().runtime.output_dir
    run_training(cfg)


@hydra.main(config_path=CONFIG_PATH, config_name="evaluate", version_base="1.3")
def evaluate(cfg: DictConfig) -> None:
    """``pico-eval checkpoint=PATH``: recompute every metric of a saved run."""
    run_evaluation(cfg.checkpoint, cfg.device)
