"""Exponential moving averages of networks: momentum (key / target) encoders.

MoCo, PiCO and BYOL keep a target network whose weights trail the online network:
``target <- m * target + (1 - m) * online`` after every optimizer step. One helper
updates any number of (online, target) module pairs with a single fused kernel per
tensor group (``torch._foreach_lerp_``) instead of a Python loop over parameters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def run_momentum(momentum: float, total_steps: int, lag_share: float | None) -> float:
    """``momentum``, lowered where a run is too short for it: an EMA with coefficient m
    trails its online network by about ``1 / (1 - m)`` steps, and that lag is kept within
    ``lag_share`` of the run's ``total_steps``, i.e. ``min(momentum, 1 - 1 / (lag_share *
    total_steps))`` (never below 0). ``lag_share=None`` keeps ``momentum`` as it is.

    With m = 0.999 the lag is 1,000 steps: a key encoder that still holds 80 % of its random
    initialisation after a 220-step run. Runs of ``1 / ((1 - momentum) * lag_share)`` steps
    or more keep ``momentum``.
    """
    if lag_share is None or total_steps <= 0:
        return momentum
    return min(momentum, max(0.0, 1 - 1 / (lag_share * total_steps)))


def _named_state(module: nn.Module) -> list[tuple[str, Tensor]]:
    """Parameters then buffers of ``module``, with qualified names."""
    params = [(f"param:{n}", p) for n, p in module.named_parameters()]
    buffers = [(f"buffer:{n}", b) for n, b in module.named_buffers()]
    return params + buffers


def _check_pair(index: int, online: nn.Module, target: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """Matching (online, target) tensors of one pair; ValueError if the modules differ."""
    src = _named_state(online)
    dst = _named_state(target)
    src_names = [n for n, _ in src]
    dst_names = [n for n, _ in dst]
    if src_names != dst_names:
        missing = sorted(set(src_names) - set(dst_names))
        extra = sorted(set(dst_names) - set(src_names))
        raise ValueError(
            f"ema_update_: pair {index} has different parameter/buffer names "
            f"(only in online: {missing[:5]}, only in target: {extra[:5]}); the target must "
            "be a copy of the online module (use momentum_copy)"
        )
    pairs = []
    for (name, s), (_, d) in zip(src, dst, strict=True):
        if s.shape != d.shape or s.dtype != d.dtype:
            raise ValueError(
                f"ema_update_: pair {index}, {name}: online is {tuple(s.shape)} {s.dtype} but "
                f"target is {tuple(d.shape)} {d.dtype}; the target must be a copy of the online "
                "module (use momentum_copy)"
            )
        pairs.append((s, d))
    return pairs


@dataclass(frozen=True)
class MomentumTensors:
    """The tensors of (online, target) pairs an EMA step touches: floating ones to move
    (``lerp_*``) and the others to copy (``copy_*``), target first."""

    lerp_dst: list[Tensor]
    lerp_src: list[Tensor]
    copy_dst: list[Tensor]
    copy_src: list[Tensor]


def momentum_tensors(pairs: Iterable[tuple[nn.Module, nn.Module]]) -> MomentumTensors:
    """List and check the tensors of every (online, target) pair (ValueError if a target
    is not a copy of its online module)."""
    tensors = MomentumTensors([], [], [], [])
    for index, (online, target) in enumerate(pairs):
        for s, d in _check_pair(index, online, target):
            if d.is_floating_point():
                tensors.lerp_dst.append(d)
                tensors.lerp_src.append(s)
            else:
                tensors.copy_dst.append(d)
                tensors.copy_src.append(s)
    return tensors


@torch.no_grad()
def ema_step_(tensors: MomentumTensors, momentum: float) -> None:
    """One EMA step over listed tensors: a fused lerp for the floating ones, a copy for
    the rest."""
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update_: momentum must lie in [0, 1], got {momentum}")
    if tensors.lerp_dst:
        torch._foreach_lerp_(tensors.lerp_dst, tensors.lerp_src, 1.0 - momentum)
    if tensors.copy_dst:
        torch._foreach_copy_(tensors.copy_dst, tensors.copy_src)


def ema_update_(pairs: Iterable[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """Move every target module towards its online module, in place and without grad.

    For each (online, target) pair, every parameter and floating-point buffer becomes
    ``momentum * target + (1 - momentum) * online``; non-floating buffers (such as
    BatchNorm's ``num_batches_tracked``) are copied. ``momentum = 1`` leaves floating
    tensors unchanged, ``momentum = 0`` copies the online module. Methods call it
    through :meth:`pico.engine.method.Method.momentum_update_`, which lists the tensors
    once instead of every step.
    """
    ema_step_(momentum_tensors(pairs), momentum)


def momentum_copy(online: nn.Module) -> nn.Module:
    """A deep copy of ``online`` with every parameter frozen (``requires_grad=False``).

    Use it to build the key / target encoder, then keep it in step with
    :func:`ema_update_`.
    """
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def cosine_momentum(base: float, step: int, total_steps: int, final: float = 1.0) -> float:
    """BYOL's momentum schedule: ``base`` at step 0 rising along a cosine to ``final``.

    ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``; ``step`` is
    clipped to ``[0, total_steps]``, so the value stays at ``final`` after the end.
    """
    if total_steps < 1:
        raise ValueError(f"cosine_momentum: total_steps must be >= 1, got {total_steps}")
    for name, value in (("base", base), ("final", final)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"cosine_momentum: {name} must lie in [0, 1], got {value}")
    progress = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
