"""Classification and partial-label metrics on tensors."""

from __future__ import annotations

import torch
from torch import Tensor


def topk_accuracy(logits: Tensor, targets: Tensor, k: int = 1) -> float:
    """Share of rows whose true label is among the ``k`` highest logits."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1)
    return hits.float().mean().item()


def covering_share(predictions: Tensor, candidates: Tensor) -> Tensor:
    """Share of predictions that lie inside the row's candidate set, as a 0-d tensor on
    the inputs' device (no host synchronisation: usable inside a training step)."""
    inside = candidates.gather(1, predictions[:, None]).squeeze(1)
    return inside.float().mean()


def covering_rate(predictions: Tensor, candidates: Tensor) -> float:
    """Share of predictions that lie inside the row's candidate set (label-free)."""
    return covering_share(predictions, candidates).item()


def approximated_accuracy(probs: Tensor, candidates: Tensor) -> float:
    """Label-free accuracy estimate from candidate sets (PLENCH).

    Renormalise each row's probabilities over its candidates; the estimate is one minus
    the mean mass that falls on candidates other than the prediction. A prediction
    outside the candidate set counts as all mass elsewhere (score 0 for that row).
    """
    masked = probs * candidates.to(probs.dtype)
    renorm = masked / masked.sum(dim=1, keepdim=True).clamp_min(1e-12)
    pred = probs.argmax(dim=1)
    return renorm.gather(1, pred[:, None]).mean().item()


def confusion_matrix(predictions: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    flat = targets * num_classes + predictions
    counts = torch.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)
