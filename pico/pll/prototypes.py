"""Momentum class prototypes, updated for a whole batch at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def update_prototypes(
    prototypes: Tensor, features: Tensor, labels: Tensor, momentum: float
) -> Tensor:
    """The official PiCO prototype update for a whole batch, with one matrix product.

    The official code loops over the (gathered) batch, ``M_c <- γ M_c + (1-γ) z`` for each
    sample ``z`` with pseudo-label ``c``, and L2-normalises all prototypes once, after the
    loop. Unrolled, the loop gives for class ``c`` with samples ``z_1..z_n`` (batch
    order)::

        M_c <- norm(γ^n M_c + (1-γ) Σ_k γ^(n-k) z_k)

    which is what this computes: the same update, equal to the loop up to floating-point
    rounding (the sums run in another order). Prototypes start at zero, so a class seen
    for the first time takes the normalised, γ-weighted sum of its samples, as there.

    Classes absent from the batch are returned unchanged, where the original normalises
    them again. Such a row is zero (never seen, and ``F.normalize`` keeps zero at zero) or
    was normalised at the end of its last update, so normalising it again changes it by
    rounding only (a few ulp). The one exception: an update whose sum has a norm below
    ``F.normalize``'s ``eps`` (1e-12) leaves a row shorter than 1, which the original
    scales to unit norm after the next batch and this keeps until the class is seen again;
    with unit-norm features that takes a near-exact cancellation.
    """
    num_classes = prototypes.shape[0]
    # scatter_ instead of F.one_hot, and a Python float as the base of pow instead of a
    # device tensor: neither reads labels back to the host nor copies a scalar to the
    # device, so the update never synchronises (F.one_hot checks the labels' range on CPU)
    onehot = features.new_zeros(len(labels), num_classes).scatter_(1, labels[:, None], 1.0)
    count = onehot.sum(dim=0)
    rank = (onehot.cumsum(dim=0) * onehot).sum(dim=1)  # 1-based position within its class
    weight = (1 - momentum) * torch.pow(float(momentum), count[labels] - rank)
    summed = onehot.T @ (weight[:, None] * features)
    updated = torch.pow(float(momentum), count)[:, None] * prototypes.to(features.dtype) + summed
    seen = (count > 0)[:, None]
    return torch.where(seen, F.normalize(updated, dim=1), prototypes.to(features.dtype))
