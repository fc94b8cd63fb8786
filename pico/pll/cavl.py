"""CAVL: class activation value learning (Zhang et al., ICLR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.pll.candidates_buffer import (
    CandidateRows,
    uniform_confidence,
    weighted_cross_entropy,
)
from pico.pll.supervised import ClassifierMethod
from pico.pll.warmup import Warmup


def class_activation_values(logits: Tensor) -> Tensor:
    """Class activation value of every class: ``f_j * |1 - f_j|`` on the logits ``f``."""
    logits = logits.float()
    return logits * (1 - logits).abs()


@torch.no_grad()
def cav_targets(logits: Tensor, candidates: Tensor) -> Tensor:
    """One-hot targets at the candidate with the largest class activation value.

    The arg-max runs over the candidates only, so the target is always a candidate (the
    authors multiply the values by the 0/1 candidate row, which picks a non-candidate
    when every candidate has a negative value).
    """
    values = class_activation_values(logits).masked_fill(~candidates.bool(), float("-inf"))
    return F.one_hot(values.argmax(dim=1), logits.shape[1]).float()


class CAVL(CandidateRows, ClassifierMethod):
    """Self-training on the candidate with the largest class activation value.

    Each row keeps target weights, uniform over its candidates at the start. The loss is
    the cross-entropy against the row's current targets; after it, during the same step,
    the rows of the batch take one-hot targets at the candidate with the largest class
    activation value of that step's detached logits. The authors' code refreshes them
    after the optimizer step instead, from a second forward pass of the updated model on
    the same batch (``outputs * |1 - outputs| * Y`` on the raw outputs, one-hot at its
    arg-max). So here the targets come from the model before this step's update, one
    optimizer step older than there, and BatchNorm sees each batch once (the reference's
    second pass runs in training mode: batch statistics, and a second update of the
    running statistics). With the paper's rule (no warm-up) a row keeps its uniform
    targets only until its first visit, i.e. for one epoch: hundreds of steps on the
    paper's data, 20 on digits, where the one-hot targets of an untrained model lock in.
    So every target stays uniform through a warm-up (:class:`~pico.pll.warmup.Warmup`:
    ``warmup_epochs``, at least ``warmup_min_steps`` steps unless that takes more than
    ``warmup_share`` of the run) before re-selection starts. Unlike PiCO's moving-average
    confidences, a one-hot CAVL target is self-reinforcing, so the floor does not shrink
    for unambiguous candidate sets (``warmup_full_ambiguity=0``); ``warmup_min_steps=0`` gives
    the paper's rule.
    """

    views = ("weak",)
    uses_candidates = True
    targets: Tensor  # the row state buffer (init_candidate_rows)

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        warmup_epochs: float = 0,
        warmup_min_steps: int = 600,
        warmup_share: float = 0.3,
        warmup_full_ambiguity: float = 0,
    ) -> None:
        super().__init__(backbone, task)
        candidates = self.init_candidate_rows(task, "cavl", "targets", uniform_confidence)
        self.warmup = Warmup.for_candidates(
            candidates, warmup_epochs, warmup_min_steps, warmup_share, warmup_full_ambiguity
        )

    def on_epoch_start(self, info: StepInfo) -> None:
        self.warmup.check("cavl", info.steps_per_epoch, info.total_steps)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        logits = self.classifier(self.backbone(batch.views[0]))
        loss = weighted_cross_entropy(logits, self.targets[batch.index])
        if info.step >= self.warmup.steps(info.steps_per_epoch, info.total_steps):
            updated = cav_targets(logits.detach(), self.candidates[batch.index])
            self.write_rows_(batch.index, updated)
        return {"loss": loss}

    def train_label_estimate(self) -> Tensor:
        return self.targets.argmax(dim=1)
