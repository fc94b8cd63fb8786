"""PRODEN: progressive identification of the true label (Lv et al., ICML 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.pll.candidates_buffer import (
    CandidateRows,
    softmax_within,
    uniform_confidence,
    weighted_cross_entropy,
)
from pico.pll.supervised import ClassifierMethod


class PRODEN(CandidateRows, ClassifierMethod):
    """Self-training restricted to the candidates.

    Each row keeps label weights (uniform over its candidates at the start); the loss is
    the cross-entropy weighted by the rows' current weights. During the same step, the
    rows of the batch take the step's detached probabilities renormalised over their
    candidate set, so the new weights come from the model before this step's update.
    The official code does the same: its loss also returns the new weights, computed from
    that forward pass, and stores them after the optimizer step. Two details differ
    there: it renormalises ``softmax(outputs) * mask`` with ``mask`` the classes whose
    current weight is positive, so a candidate whose weight underflowed to zero stays out
    for good, and a row whose candidates' probabilities all underflow becomes 0/0; here
    the softmax runs over the candidate set only
    (:func:`~pico.pll.candidates_buffer.softmax_within`), which avoids both.
    """

    views = ("weak",)
    uses_candidates = True
    confidence: Tensor  # the row state buffer (init_candidate_rows)
    #: the name in ``method=...``, for error messages
    method_name = "proden"

    def __init__(self, backbone: nn.Module, task: TaskInfo) -> None:
        super().__init__(backbone, task)
        self.init_candidate_rows(task, self.method_name, "confidence", uniform_confidence)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        logits = self.classifier(self.backbone(batch.views[0]))
        loss = weighted_cross_entropy(logits, self.confidence[batch.index])
        with torch.no_grad():
            restricted = softmax_within(logits, self.candidates[batch.index])
            self.write_rows_(batch.index, restricted)
        return {"loss": loss}

    def train_label_estimate(self) -> Tensor:
        return self.confidence.argmax(dim=1)
