"""LWS: the leveraged weighted loss for partial-label learning (Wen et al., ICML 2021)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.pll.candidates_buffer import CandidateRows, softmax_within
from pico.pll.supervised import ClassifierMethod

LOSSES = ("sigmoid", "ce")
# log(1 - p) of a non-candidate is taken with p at most 1 - 1e-6 (so at most 13.8 nats)
_MAX_LOG_PROB = -1e-6


def lws_initial_weights(candidates: Tensor) -> Tensor:
    """Uniform over each row's candidates plus uniform over its non-candidates.

    Each row sums to one over its candidates and to one over its complement (zero there
    when every class is a candidate).
    """
    mask = candidates.bool()
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return softmax_within(zeros, mask) + softmax_within(zeros, ~mask)


@torch.no_grad()
def lws_weights(logits: Tensor, candidates: Tensor) -> Tensor:
    """Re-estimated weights: softmax probabilities renormalised within the candidates and,
    separately, within the non-candidates (zero there when every class is a candidate)."""
    mask = candidates.bool()
    return softmax_within(logits, mask) + softmax_within(logits, ~mask)


def _log1m_exp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate near zero and for very negative ``x``."""
    near_zero = x > -0.6931471805599453
    return torch.where(
        near_zero,
        torch.log(-torch.expm1(torch.where(near_zero, x, -1.0))),
        torch.log1p(-torch.exp(torch.where(near_zero, -1.0, x))),
    )


def lws_loss(
    logits: Tensor,
    candidates: Tensor,
    weights: Tensor,
    beta: float,
    loss: Literal["sigmoid", "ce"] = "sigmoid",
) -> Tensor:
    """Mean over rows of ``sum_{j in S} w_ij l(f_j) + beta sum_{j not in S} w_ij l(-f_j)``.

    ``loss="sigmoid"``: ``l(z) = sigmoid(-z)`` on the logits ``f`` (the paper's LWS).
    ``loss="ce"``: the paper's cross-entropy variant, ``-log p_j`` on candidates and
    ``-log(1 - p_j)`` on non-candidates, ``p = softmax(f)``. Weights get no gradient.
    """
    if loss not in LOSSES:
        raise ValueError(f"lws loss must be one of {LOSSES}, got {loss!r}; set method.loss")
    logits = logits.float()
    mask = candidates.bool()
    weights = weights.detach()
    if loss == "sigmoid":
        on_candidates = torch.sigmoid(-logits)
        off_candidates = torch.sigmoid(logits)
    else:
        log_probs = F.log_softmax(logits, dim=1)
        on_candidates = -log_probs
        off_candidates = -_log1m_exp(log_probs.clamp_max(_MAX_LOG_PROB))
    zero = torch.zeros_like(logits)
    partial = torch.where(mask, weights * on_candidates, zero).sum(dim=1)
    rest = torch.where(mask, zero, weights * off_candidates).sum(dim=1)
    return (partial + beta * rest).mean()


class LWS(CandidateRows, ClassifierMethod):
    """Leveraged weighted loss: weighted losses on the candidates, and on the non-candidates
    scaled by the leverage ``beta``.

    Weights start uniform within the candidates and within the non-candidates (the paper's
    rule; the authors' code starts from 1/C everywhere); after each step's loss the rows
    of the batch take the detached softmax of that step, renormalised within each part
    (as the authors' code does, without a second forward pass). ``beta`` defaults to 1:
    see configs/method/lws.yaml for why.
    """

    views = ("weak",)
    uses_candidates = True
    label_weights: Tensor  # the row state buffer (init_candidate_rows)

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        beta: float = 1.0,
        loss: Literal["sigmoid", "ce"] = "sigmoid",
    ) -> None:
        super().__init__(backbone, task)
        if beta < 0:
            raise ValueError(f"method.beta={beta} must be >= 0 (the paper uses 1 or 2)")
        if loss not in LOSSES:
            raise ValueError(f"method.loss={loss!r} is not one of {LOSSES}")
        self.beta = float(beta)
        self.loss = loss
        self.init_candidate_rows(task, "lws", "label_weights", lws_initial_weights)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        logits = self.classifier(self.backbone(batch.views[0]))
        candidates = self.candidates[batch.index]
        weights = self.label_weights[batch.index]
        loss = lws_loss(logits, candidates, weights, self.beta, self.loss)
        updated = lws_weights(logits.detach(), candidates)
        self.write_rows_(batch.index, updated)
        return {"loss": loss}

    def train_label_estimate(self) -> Tensor:
        return (self.label_weights * self.candidates).argmax(dim=1)
