"""Optimizers and learning-rate schedules built from config."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn


def build_optimizer(params: Iterable[nn.Parameter], cfg: DictConfig) -> torch.optim.Optimizer:
    """Instantiate ``cfg`` (a partial optimizer config with ``_target_``) on ``params``."""
    factory = instantiate(cfg, _partial_=True)
    return factory(list(params))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, final_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay to ``final_ratio``.

    Stepped once per optimizer step.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
