"""Run a method over a split in evaluation mode, batch by batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pico.data.augment import BatchAugment


@torch.no_grad()
def collect(
    fn: Callable[[Tensor], Tensor | None],
    inputs: Tensor,
    preprocess: BatchAugment,
    device: torch.device,
    batch_size: int = 512,
) -> Tensor | None:
    """Concatenate ``fn(preprocess(batch))`` over ``inputs``; ``None`` if ``fn`` gives none."""
    outputs = []
    for start in range(0, len(inputs), batch_size):
        batch = preprocess(inputs[start : start + batch_size].to(device))
        out = fn(batch)
        if out is None:
            return None
        outputs.append(out.float())
    return torch.cat(outputs)
