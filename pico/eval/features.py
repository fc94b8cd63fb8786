"""Run a method over a split in evaluation mode, batch by batch, optionally sharded."""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

import torch
from torch import Tensor

from pico.core.distributed import gather_shards, shard_bounds
from pico.data.augment import BatchAugment


@overload
def collect(
    fn: Callable[[Tensor], Tensor],
    inputs: Tensor,
    preprocess: BatchAugment,
    device: torch.device,
    batch_size: int = ...,
) -> Tensor: ...
@overload
def collect(
    fn: Callable[[Tensor], Tensor | None],
    inputs: Tensor,
    preprocess: BatchAugment,
    device: torch.device,
    batch_size: int = ...,
) -> Tensor | None: ...
@torch.no_grad()
def collect(
    fn: Callable[[Tensor], Tensor | None],
    inputs: Tensor,
    preprocess: BatchAugment,
    device: torch.device,
    batch_size: int = 512,
) -> Tensor | None:
    """Concatenate ``fn(preprocess(batch))`` over ``inputs``; ``None`` if ``fn`` gives none.

    Empty ``inputs`` still run ``fn`` once (on zero rows), so whether it gives an output
    does not depend on how many rows there are.
    """
    outputs = []
    for start in range(0, max(len(inputs), 1), batch_size):
        batch = preprocess(inputs[start : start + batch_size].to(device))
        out = fn(batch)
        if out is None:
            return None
        # a copy: under torch.compile's CUDA graphs the next batch may overwrite ``out``
        outputs.append(out.to(torch.float32, copy=True))
    return torch.cat(outputs)


@overload
def collect_sharded(
    fn: Callable[[Tensor], Tensor],
    inputs: Tensor,
    preprocess: BatchAugment,
    device: torch.device,
    batch_size: int = ...,
    gather: bool = ...,
) -> Tensor: ...
@overload
def collect_sharded(
    fn: Callable[[Tensor], Tensor | None],
    inputs: Tensor,
    preprocess: BatchAugment,
    device: torch.device,
    batch_size: int = ...,
    gather: bool = ...,
) -> Tensor | None: ...
@torch.no_grad()
def collect_sharded(
    fn: Callable[[Tensor], Tensor | None],
    inputs: Tensor,
    preprocess: BatchAugment,
    device: torch.device,
    batch_size: int = 512,
    gather: bool = True,
) -> Tensor | None:
    """:func:`collect` over this process's contiguous share of ``inputs``.

    With ``gather`` every process receives all rows, in order (the same tensor
    :func:`collect` gives in one process); without, only its share
    (:func:`~pico.core.distributed.shard_bounds`). Every process must call it.
    """
    start, stop = shard_bounds(len(inputs))
    out = collect(fn, inputs[start:stop], preprocess, device, batch_size)
    if out is None or not gather:
        return out
    return gather_shards(out, len(inputs))
