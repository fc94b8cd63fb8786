"""Shared handling of the training candidate matrix inside partial-label methods."""

from __future__ import annotations

from torch import Tensor

from pico.engine.method import TaskInfo


def require_candidates(task: TaskInfo, method: str) -> Tensor:
    """The training candidate matrix as bool, or a clear error when the data has none."""
    if task.train_candidates is None:
        raise ValueError(
            f"method={method} trains on candidate label sets but the data has none; "
            "set data.candidates (e.g. data.candidates.name=uniform data.candidates.q=0.3) "
            "or load a dataset that carries them"
        )
    return task.train_candidates.bool()


def uniform_confidence(candidates: Tensor) -> Tensor:
    """Initial label confidence: uniform over each row's candidates."""
    weights = candidates.float()
    return weights / weights.sum(dim=1, keepdim=True)
