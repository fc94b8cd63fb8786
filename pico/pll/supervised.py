"""Methods built around a backbone and a linear classifier, and the supervised reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.engine.method import Batch, Method, StepInfo, TaskInfo


class ClassifierMethod(Method):
    """A backbone followed by a linear classifier; base of the classification methods."""

    def __init__(self, backbone: nn.Module, task: TaskInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(backbone.out_dim, task.num_classes)
        self.num_classes = task.num_classes

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        return self.classifier(self.backbone(x))


class Supervised(ClassifierMethod):
    """Cross-entropy on the true labels: the fully supervised upper bound."""

    views = ("weak",)

    def __init__(self, backbone: nn.Module, task: TaskInfo) -> None:
        super().__init__(backbone, task)
        if bool((task.train_targets < 0).any()):
            raise ValueError(
                "method=supervised needs a true label for every training row; "
                "use a partial-label method (method=pico or method=proden) instead"
            )

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        logits = self.classifier(self.backbone(batch.views[0]))
        return {"loss": F.cross_entropy(logits, batch.target)}
