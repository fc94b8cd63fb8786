"""The one training loop every method runs on."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from pico.core.distributed import get_rank, get_world_size, is_main_process
from pico.data.augment import BatchAugment
from pico.data.bundle import DataBundle
from pico.engine.checkpoint import load_checkpoint, save_checkpoint
from pico.engine.loader import TensorLoader
from pico.engine.logger import RunLogger
from pico.engine.method import Batch, Method, StepInfo
from pico.engine.optim import build_optimizer, warmup_cosine
from pico.eval.embedding import save_embedding_png
from pico.eval.evaluator import Evaluator
from pico.eval.plots import confusion_figure, curve_figure

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA when present, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term becomes NaN or infinite."""


class Trainer:
    """Runs a :class:`~pico.engine.method.Method` over a :class:`DataBundle`.

    Handles device placement, bf16 autocast and channels_last (CUDA only), optional
    ``torch.compile``, the optimizer and warm-up cosine schedule, evaluation, best-model
    selection on a configured metric, atomic checkpoints, resume, TensorBoard and a
    progress bar. ``cfg`` is the ``trainer`` config node.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, seed: int) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.device = resolve_device(cfg.device)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.main = is_main_process()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _views(
        self, method: Method, augmenters: dict[str, BatchAugment], inputs, gen
    ) -> list[torch.Tensor]:
        views = [augmenters[name](inputs, gen) for name in method.views]
        if self.device.type == "cuda" and self.cfg.channels_last and inputs.dim() == 4:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def resume_path(self, resume: str | None) -> Path | None:
        """Checkpoint to resume from: a path, ``"auto"`` (latest in the run dir) or none."""
        if not resume:
            return None
        if resume == "auto":
            last = self.ckpt_dir / "last.pt"
            return last if last.is_file() else None
        return Path(resume)

    def fit(
        self,
        method: Method,
        bundle: DataBundle,
        augmenters: dict[str, BatchAugment],
        evaluator: Evaluator,
        select_metric: str,
        select_mode: str = "max",
        config_yaml: str = "",
        resume: str | None = None,
    ) -> dict[str, Any]:
        """Train for ``cfg.epochs`` epochs and return final and best metrics."""
        cfg = self.cfg
        method.to(self.device)
        if self.device.type == "cuda" and cfg.channels_last and bundle.kind == "image":
            method.to(memory_format=torch.channels_last)
        if cfg.compile:
            for child in method.children():
                child.compile()
        loader = TensorLoader(
            bundle.train,
            cfg.batch_size,
            self.device,
            seed=self.seed,
            rank=get_rank(),
            world_size=get_world_size(),
        )
        steps_per_epoch = len(loader)
        optimizer = build_optimizer(method.optim_parameters(), cfg.optimizer)
        scheduler = warmup_cosine(
            optimizer,
            warmup_steps=round(cfg.lr_warmup_epochs * steps_per_epoch),
            total_steps=cfg.epochs * steps_per_epoch,
            final_ratio=cfg.final_lr_ratio,
        )
        sign = 1.0 if select_mode == "max" else -1.0
        state: dict[str, Any] = {"epoch": 0, "step": 0, "best": None, "history": []}
        path = self.resume_path(resume)
        if path is not None:
            ckpt = load_checkpoint(path, map_location=self.device)
            method.load_state_dict(ckpt["method"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng_cpu"])
            state = {k: ckpt[k] for k in ("epoch", "step", "best", "history")}
            log.info("resumed from %s at epoch %d", path, state["epoch"])

        logger = RunLogger(self.run_dir, enabled=self.main)
        gen = torch.Generator(device=self.device)
        started = time.perf_counter()
        images_seen = 0
        for epoch in range(state["epoch"], cfg.epochs):
            method.train()
            info = StepInfo(epoch, state["step"], cfg.epochs, steps_per_epoch)
            method.on_epoch_start(info)
            gen.manual_seed(self.seed * 1_000_003 + epoch * 7_919 + get_rank())
            sums: dict[str, torch.Tensor] = {}
            epoch_start = time.perf_counter()
            bar = tqdm(
                loader.epoch(epoch),
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not (self.main and cfg.progress),
                leave=False,
            )
            for i, (index, inputs, targets) in enumerate(bar):
                info = StepInfo(epoch, state["step"], cfg.epochs, steps_per_epoch)
                batch = Batch(index, self._views(method, augmenters, inputs, gen), targets)
                with self._autocast():
                    terms = method.training_step(batch, info)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                optimizer.step()
                scheduler.step()
                method.after_optimizer_step(info)
                state["step"] += 1
                images_seen += len(index)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0) + value.detach().float()
                if (i + 1) % cfg.log_every == 0 or i + 1 == steps_per_epoch:
                    means = {k: v.item() / (i + 1) for k, v in sums.items()}
                    self._check_finite(means, state["step"])
                    rate = len(index) * (i + 1) / (time.perf_counter() - epoch_start)
                    bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{rate:.0f}")
                    logger.scalars({f"train/{k}": v for k, v in means.items()}, state["step"])
                    logger.scalars(
                        {"train/lr": scheduler.get_last_lr()[0], "train/images_per_s": rate},
                        state["step"],
                    )
            state["epoch"] = epoch + 1
            record = {
                "epoch": epoch + 1,
                **{f"train/{k}": v.item() / steps_per_epoch for k, v in sums.items()},
            }
            last_epoch = epoch + 1 == cfg.epochs
            if (epoch + 1) % cfg.eval_every == 0 or last_epoch:
                record.update(evaluator(method, final=last_epoch))
            state["history"].append(record)
            logger.scalars({k: v for k, v in record.items() if k != "epoch"}, epoch + 1)
            if self.main and ((epoch + 1) % cfg.figure_every == 0 or last_epoch):
                self._figures(logger, evaluator, method, bundle, state["history"], epoch + 1)
            if self.main and last_epoch and cfg.embedding_figure:
                figure = evaluator.embedding(method)
                save_embedding_png(figure, self.run_dir / "embedding.png")
                logger.figure("test/embedding", figure, epoch + 1)
            # ties go to the later epoch: same validation score, more training
            improved = select_metric in record and (
                state["best"] is None
                or sign * record[select_metric] >= sign * state["best"][select_metric]
            )
            if improved:
                state["best"] = record
            if self.main:
                ckpt = {
                    "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng_cpu": torch.get_rng_state(),
                    "config": config_yaml,
                    **state,
                }
                self._save(ckpt, epoch + 1, improved)
            summary = ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch")
            log.info("epoch %d: %s", epoch + 1, summary)
        logger.close()
        elapsed = time.perf_counter() - started
        result = {
            "final": state["history"][-1] if state["history"] else {},
            "best": state["best"],
            "select_metric": select_metric,
            "train_seconds": elapsed,
            "images_per_second": images_seen / elapsed if elapsed > 0 else 0.0,
            "history": state["history"],
        }
        if self.main:
            (self.run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        return result

    def _save(self, ckpt: dict[str, Any], epoch: int, improved: bool) -> None:
        """Write ``last.pt``, ``best.pt`` when improved, and keep the newest epoch files."""
        save_checkpoint(ckpt, self.ckpt_dir / "last.pt")
        if improved:
            save_checkpoint(ckpt, self.ckpt_dir / "best.pt")
        if self.cfg.keep_last > 0:
            save_checkpoint(ckpt, self.ckpt_dir / f"epoch_{epoch:04d}.pt")
            for old in sorted(self.ckpt_dir.glob("epoch_*.pt"))[: -self.cfg.keep_last]:
                old.unlink()

    @staticmethod
    def _check_finite(means: dict[str, float], step: int) -> None:
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at step {step}: {bad}; lower the learning rate or check the "
                "inputs (the last good checkpoint is checkpoints/last.pt)"
            )

    @staticmethod
    def _figures(logger, evaluator, method, bundle, history, epoch) -> None:
        matrix = evaluator.test_confusion(method)
        if matrix is not None:
            logger.figure("test/confusion", confusion_figure(matrix, bundle.class_names), epoch)
        disamb = [r["train/disamb_acc"] for r in history if "train/disamb_acc" in r]
        if disamb:
            logger.figure("train/disambiguation", curve_figure(disamb, "disambiguation"), epoch)
