"""Shared pieces of the partial-label methods: the training candidate matrix, per-row
label weights over it (:class:`CandidateRows`), and the cross-entropy against such
weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import gather_no_grad
from pico.engine.method import TaskInfo
from pico.pll.validation import CandidateError, describe_rows


def check_nonempty_rows(candidates: Tensor, method: str) -> None:
    """:class:`~pico.pll.validation.CandidateError` (a ``ValueError``) naming the rows of
    ``candidates`` without any candidate label."""
    empty = torch.nonzero(~candidates.bool().any(dim=1)).flatten()
    if len(empty):
        raise CandidateError(
            f"method={method}: every training row needs at least one candidate label, but "
            f"{describe_rows(empty)} of the candidate matrix are empty; add the known label(s) "
            "to those rows or drop the examples (pico.pll.validate_candidates checks a matrix)"
        )


def require_candidates(task: TaskInfo, method: str) -> Tensor:
    """The training candidate matrix as bool, or a clear error when the data has none or
    a row has no candidate."""
    if task.train_candidates is None:
        raise ValueError(
            f"method={method} trains on candidate label sets but the data has none; "
            "set data.candidates (e.g. data.candidates.name=uniform data.candidates.q=0.3) "
            "or load a dataset that carries them"
        )
    check_nonempty_rows(task.train_candidates, method)
    return task.train_candidates.bool()


def uniform_confidence(candidates: Tensor) -> Tensor:
    """Initial label confidence: uniform over each row's candidates (an empty row is a
    :class:`~pico.pll.validation.CandidateError`, not a row of NaN)."""
    check_nonempty_rows(candidates, "uniform_confidence")
    weights = candidates.float()
    return weights / weights.sum(dim=1, keepdim=True)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-row cross-entropy ``-sum_j t_ij log softmax(logits_i)_j`` (in float32)."""
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def weighted_cross_entropy(logits: Tensor, weights: Tensor) -> Tensor:
    """Mean over rows of :func:`soft_cross_entropy` against label weights (which get no
    gradient)."""
    return soft_cross_entropy(logits, weights.detach()).mean()


def softmax_within(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the entries of each row where ``mask`` is true, zero elsewhere.

    Equals ``softmax(logits) * mask`` renormalised per row, without underflow when the
    masked entries carry little probability; rows with an empty mask are all zero.
    """
    mask = mask.bool()
    probs = torch.softmax(logits.float().masked_fill(~mask, float("-inf")), dim=1)
    return torch.where(mask.any(dim=1, keepdim=True), probs, torch.zeros_like(probs))


# the mixin's methods run on an nn.Module (the method); type checkers see that base
if TYPE_CHECKING:
    _Module = nn.Module
else:
    _Module = object


class CandidateRows(_Module):
    """Mixin of a partial-label method: the train split's candidate matrix and one
    per-row state over it (label weights, confidences, estimates).

    :meth:`init_candidate_rows` checks the candidate rows (none may be empty) and registers
    two buffers on the method itself, so checkpoints keep their keys: ``candidates``
    ((N, C) bool) and the state under the method's own name (``confidence``,
    ``label_weights``, ...). :meth:`write_rows_` writes a step's rows of every process, so
    under torchrun every rank holds the same state::

        class MyPLL(CandidateRows, ClassifierMethod):
            def __init__(self, backbone, task):
                super().__init__(backbone, task)
                self.init_candidate_rows(task, "my_pll", "confidence", uniform_confidence)
    """

    candidates: Tensor
    row_state_name: str

    def init_candidate_rows(
        self,
        task: TaskInfo,
        method: str,
        name: str,
        initial: Callable[[Tensor], Tensor] = uniform_confidence,
    ) -> Tensor:
        """Register ``candidates`` and the state ``name`` = ``initial(candidates)``; returns
        the candidate matrix. ``method`` names the method in error messages."""
        candidates = require_candidates(task, method)
        self.register_buffer("candidates", candidates)
        self.register_buffer(name, initial(candidates))
        self.row_state_name = name
        return candidates

    def row_state(self) -> Tensor:
        """The per-row state buffer, ``(N, ...)``."""
        return getattr(self, self.row_state_name)

    @torch.no_grad()
    def write_rows_(self, index: Tensor, values: Tensor) -> None:
        """``state[index] = values`` for the rows of every process (gathered)."""
        self.row_state()[gather_no_grad(index)] = gather_no_grad(values)
