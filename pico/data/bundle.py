"""In-memory dataset splits shared by every data source."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Split:
    """One split held as tensors.

    ``inputs`` is ``uint8`` of shape (N, C, H, W) for images or ``float32`` of shape
    (N, D) for tabular features; ``targets`` is ``int64`` of shape (N,) (true labels,
    -1 where unknown); ``candidates`` is an optional ``bool`` matrix (N, C) of
    candidate label sets.
    """

    inputs: Tensor
    targets: Tensor
    candidates: Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(
                f"split has {len(self.inputs)} inputs but {len(self.targets)} targets; "
                "every input needs exactly one target (use -1 where unknown)"
            )
        if self.candidates is not None and self.candidates.shape[0] != len(self.inputs):
            raise ValueError(
                f"split has {len(self.inputs)} inputs but {self.candidates.shape[0]} "
                "candidate rows; give one candidate set per input"
            )

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, index: Tensor) -> Split:
        """Rows ``index`` of this split, candidates included."""
        cands = None if self.candidates is None else self.candidates[index]
        return Split(self.inputs[index], self.targets[index], cands)


@dataclass
class DataBundle:
    """Train/validation/test splits plus what models and augmentations need to know.

    ``kind`` is ``"image"`` or ``"tabular"``. For images, ``mean``/``std`` are per-channel
    statistics on the 0-1 scale used for normalisation.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str]
    kind: str = "image"
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input without the batch dimension."""
        return tuple(self.train.inputs.shape[1:])

    @property
    def channels(self) -> int:
        """Image channels (1 for tabular data)."""
        return self.input_shape[0] if self.kind == "image" else 1

    def summary(self) -> str:
        """One line describing sizes and shapes."""
        return (
            f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
            f"{self.num_classes} classes, input {tuple(self.input_shape)} ({self.kind})"
        )


def stratified_split(targets: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split row indices into (rest, held_out) with ``fraction`` of each class held out.

    Seeded and independent of any global RNG; every class keeps at least one row in
    ``rest``. Returns sorted index tensors.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    held: list[Tensor] = []
    for cls in torch.unique(targets):
        rows = torch.nonzero(targets == cls).flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        n_held = min(round(fraction * len(rows)), len(rows) - 1)
        held.append(rows[:n_held])
    held_idx = torch.cat(held).sort().values if held else torch.empty(0, dtype=torch.long)
    mask = torch.ones(len(targets), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx
