"""Optimizers and learning-rate schedules built from config."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from pico.engine.method import FIXED_LR


def build_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], cfg: DictConfig | Mapping[str, Any]
) -> torch.optim.Optimizer:
    """Instantiate ``cfg`` (a partial optimizer config with ``_target_``) on ``params``:
    parameters, or parameter groups (dicts with ``"params"``, as torch optimizers take
    them; extra keys such as :data:`FIXED_LR` stay in ``optimizer.param_groups``)."""
    factory = instantiate(cfg, _partial_=True)
    return factory(list(params))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, final_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay to ``final_ratio``.

    Stepped once per optimizer step. A parameter group marked ``{FIXED_LR: True}`` keeps
    its base learning rate throughout (SimSiam's predictor).
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def fixed(step: int) -> float:
        return 1.0

    factors: list[Callable[[int], float]] = [
        fixed if g.get(FIXED_LR, False) else factor for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def scale_weight_decay_(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every parameter group's weight decay to ``factor`` times its configured value.

    The configured value is kept in the group as ``initial_weight_decay`` on the first
    call (as ``LambdaLR`` keeps ``initial_lr``), so it travels with the optimizer's
    state dict and a resumed run scales the same base.
    """
    for group in optimizer.param_groups:
        base = group.setdefault("initial_weight_decay", group["weight_decay"])
        group["weight_decay"] = base * factor
