"""CC: the classifier-consistent partial-label loss (Feng et al., NeurIPS 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.pll.candidates_buffer import CandidateRows
from pico.pll.supervised import ClassifierMethod


def first_candidate(candidates: Tensor) -> Tensor:
    """Each row's first candidate class: CC's initial label estimate."""
    return candidates.int().argmax(dim=1)


def cc_loss(logits: Tensor, candidates: Tensor) -> Tensor:
    """Mean over rows of ``-log sum_{j in S_i} softmax(logits_i)_j``.

    Computed as ``logsumexp(all logits) - logsumexp(candidate logits)``, which stays
    finite however large the logits are. ``candidates`` is the (B, C) candidate mask;
    every row needs at least one candidate.
    """
    logits = logits.float()
    candidate_logits = logits.masked_fill(~candidates.bool(), float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(candidate_logits, dim=1)).mean()


@torch.no_grad()
def candidate_prediction(logits: Tensor, candidates: Tensor) -> Tensor:
    """The class with the largest logit inside each row's candidate set."""
    return logits.float().masked_fill(~candidates.bool(), float("-inf")).argmax(dim=1)


class CC(CandidateRows, ClassifierMethod):
    """Classifier-consistent PLL: maximise the probability mass on the candidate set.

    The loss needs no per-row state. For the disambiguation metric the method keeps each
    row's candidate-restricted prediction from the last step that saw it (initially its
    first candidate); it plays no part in training.
    """

    views = ("weak",)
    uses_candidates = True
    label_estimate: Tensor  # the row state buffer (init_candidate_rows)

    def __init__(self, backbone: nn.Module, task: TaskInfo) -> None:
        super().__init__(backbone, task)
        self.init_candidate_rows(task, "cc", "label_estimate", first_candidate)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        logits = self.classifier(self.backbone(batch.views[0]))
        candidates = self.candidates[batch.index]
        loss = cc_loss(logits, candidates)
        prediction = candidate_prediction(logits.detach(), candidates)
        self.write_rows_(batch.index, prediction)
        return {"loss": loss}

    def train_label_estimate(self) -> Tensor:
        return self.label_estimate
