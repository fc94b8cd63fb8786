"""Label disambiguation: the moving-average confidence update of PiCO."""

from __future__ import annotations

import torch
from torch import Tensor


def phi_schedule(epoch: int, epochs: int, start: float = 0.95, end: float = 0.8) -> float:
    """Confidence momentum φ for ``epoch`` (0-based): linear from ``start`` to ``end``.

    The first epoch uses ``start`` and the last uses ``end`` exactly.
    """
    if epochs <= 1:
        return start
    return start + (end - start) * epoch / (epochs - 1)


@torch.no_grad()
def prototype_labels(embeddings: Tensor, prototypes: Tensor, candidates: Tensor) -> Tensor:
    """Candidate class whose prototype is most similar to each embedding.

    Equals ``argmax(softmax(z M^T) * Y)``. Classes whose prototype was never set
    (zero vector) are not eligible; rows with no eligible candidate get ``-1``.
    """
    ready = prototypes.norm(dim=1) > 0
    eligible = candidates.bool() & ready[None, :]
    scores = (embeddings.float() @ prototypes.float().T).masked_fill(~eligible, float("-inf"))
    labels = scores.argmax(dim=1)
    return torch.where(eligible.any(dim=1), labels, torch.full_like(labels, -1))


@torch.no_grad()
def update_confidence_(
    confidence: Tensor, index: Tensor, labels: Tensor, phi: float | Tensor
) -> None:
    """In place: ``S_i <- φ S_i + (1-φ) onehot(label_i)`` for rows ``index``.

    Rows whose label is ``-1`` keep their confidence.
    """
    rows = confidence[index]
    valid = labels >= 0
    onehot = torch.zeros_like(rows).scatter_(1, labels.clamp_min(0)[:, None], 1.0)
    updated = phi * rows + (1 - phi) * onehot
    confidence[index] = torch.where(valid[:, None], updated, rows)
