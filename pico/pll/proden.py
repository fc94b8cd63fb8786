"""PRODEN: progressive identification of the true label (Lv et al., ICML 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import gather_no_grad
from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.pll.candidates_buffer import require_candidates, uniform_confidence
from pico.pll.supervised import ClassifierMethod


class PRODEN(ClassifierMethod):
    """Self-training restricted to the candidates.

    Each row keeps label weights (uniform over its candidates at the start); the loss
    is the weighted cross-entropy, and after every step the rows of the batch take the
    model's probabilities renormalised over their candidate set.
    """

    views = ("weak",)
    uses_candidates = True

    def __init__(self, backbone: nn.Module, task: TaskInfo) -> None:
        super().__init__(backbone, task)
        candidates = require_candidates(task, "proden")
        self.register_buffer("candidates", candidates)
        self.register_buffer("confidence", uniform_confidence(candidates))

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        logits = self.classifier(self.backbone(batch.views[0]))
        log_probs = F.log_softmax(logits, dim=1)
        loss = -(self.confidence[batch.index] * log_probs).sum(dim=1).mean()
        with torch.no_grad():
            restricted = log_probs.float().exp() * self.candidates[batch.index]
            restricted = restricted / restricted.sum(dim=1, keepdim=True).clamp_min(1e-12)
            index = gather_no_grad(batch.index)
            self.confidence[index] = gather_no_grad(restricted)
        return {"loss": loss}

    def train_label_estimate(self) -> Tensor:
        return self.confidence.argmax(dim=1)
