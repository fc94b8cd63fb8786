"""Methods built around a backbone and a linear classifier, and the supervised reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim


class ClassifierMethod(Method):
    """A backbone followed by a linear classifier; base of the classification methods.

    The backbone is any ``nn.Module`` mapping a batch to ``(B, D)`` features: ``D`` is its
    ``out_dim`` attribute, or measured on ``task.input_shape``
    (:func:`~pico.models.dims.feature_dim`).
    """

    def __init__(self, backbone: nn.Module, task: TaskInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(feature_dim(backbone, task.input_shape), task.num_classes)
        self.num_classes = task.num_classes

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        return self.classifier(self.backbone(x))


class Supervised(ClassifierMethod):
    """Cross-entropy on the true labels: the fully supervised upper bound."""

    views = ("weak",)

    def __init__(self, backbone: nn.Module, task: TaskInfo) -> None:
        super().__init__(backbone, task)
        if task.train_targets is None or bool((task.train_targets < 0).any()):
            raise ValueError(
                "Supervised (method=supervised) needs a true label for every training row "
                "in TaskInfo.train_targets; without them use a partial-label method "
                "(PiCO or PRODEN: method=pico or method=proden)"
            )

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        if batch.target is None:
            raise ValueError("Supervised trains on true labels: pass Batch(index, views, target)")
        logits = self.classifier(self.backbone(batch.views[0]))
        return {"loss": F.cross_entropy(logits, batch.target)}
