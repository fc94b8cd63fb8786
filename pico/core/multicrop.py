"""Multi-crop views (Caron et al. 2020): a few full-size global crops and several small
local crops of every image.

A method asks for them by name, like any other view: the global crops use a recipe of
the aug config that keeps the image size (``contrastive``), the local crops the
``local`` recipe, whose resized crop outputs a smaller size (e.g. 16 px on 32 px CIFAR,
4 px on 8 px digits). The engine hands the views over as a list of tensors that may
differ in size; :func:`encode_views` runs an encoder once per run of equally sized
views, so BatchNorm sees all global crops of a batch together, then all local ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def multicrop_views(
    num_local_crops: int,
    num_global_crops: int = 2,
    global_view: str = "contrastive",
    local_view: str = "local",
) -> tuple[str, ...]:
    """View names of ``num_global_crops`` global then ``num_local_crops`` local crops."""
    if num_global_crops < 1 or num_local_crops < 0:
        raise ValueError(
            "multi-crop needs at least one global crop and no negative count of local crops, "
            f"got num_global_crops={num_global_crops}, num_local_crops={num_local_crops}"
        )
    return (global_view,) * num_global_crops + (local_view,) * num_local_crops


def encode_views(encode: Callable[[Tensor], Tensor], views: Sequence[Tensor]) -> list[Tensor]:
    """``encode`` of every view, run once per run of consecutive views of one shape.

    Views of equal shape are concatenated along the batch, encoded in one pass and split
    back, so ``[g1, g2, l1, ..., l6]`` costs two forward passes and BatchNorm normalises
    the global crops over both of them, the local crops over all of theirs.
    """
    out: list[Tensor] = []
    start = 0
    while start < len(views):
        stop = start + 1
        while stop < len(views) and views[stop].shape == views[start].shape:
            stop += 1
        group = views[start:stop]
        encoded = encode(group[0] if len(group) == 1 else torch.cat(list(group)))
        out.extend(encoded.chunk(len(group)) if len(group) > 1 else [encoded])
        start = stop
    return out
