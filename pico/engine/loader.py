"""Batches of an in-memory split, straight from device memory."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from pico.data.bundle import Split


class TensorLoader:
    """Shuffled mini-batches ``(index, inputs, targets)`` of a split kept on ``device``.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the
    same batches as an uninterrupted one without saving any sampler state. With
    ``world_size > 1`` every rank draws the same permutation and takes its own
    interleaved share of each global batch (``batch_size`` is per rank).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.inputs = split.inputs.to(device)
        self.targets = split.targets.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        global_batch = batch_size * world_size
        # a split smaller than one batch still trains: keep its last, partial batch
        self.drop_last = drop_last and len(split) >= global_batch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        n = len(self.inputs)
        return n // global_batch if self.drop_last else -(-n // global_batch)

    def order(self, epoch: int) -> Tensor:
        """Row order of ``epoch`` (a permutation when shuffling)."""
        n = len(self.inputs)
        if not self.shuffle:
            return torch.arange(n)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(n, generator=gen)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield the batches of ``epoch``, skipping the first ``start_batch``."""
        order = self.order(epoch).to(self.inputs.device)
        global_batch = self.batch_size * self.world_size
        for b in range(start_batch, len(self)):
            rows = order[b * global_batch : (b + 1) * global_batch]
            rows = rows[self.rank :: self.world_size]
            yield rows, self.inputs[rows], self.targets[rows]
