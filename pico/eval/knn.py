"""Weighted k-nearest-neighbour classification on L2-normalised features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores of each query from its ``k`` most cosine-similar training rows.

    Each neighbour votes for its class with weight ``exp(similarity / temperature)``
    (the InstDisc monitor). Queries are processed in chunks so memory stays at
    ``chunk_size x N``. Returns (Q, C) scores.
    """
    if k < 1:
        raise ValueError(f"kNN needs k >= 1, got {k}")
    bank = F.normalize(train_features.float(), dim=1)
    k = min(k, len(bank))
    scores = []
    for start in range(0, len(query_features), chunk_size):
        query = F.normalize(query_features[start : start + chunk_size].float(), dim=1)
        sim, idx = (query @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(query), num_classes, device=query.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)
