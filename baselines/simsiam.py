"""SimSiam: a Siamese network with a predictor and a stop-gradient (Chen & He 2021)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from pico.engine.method import FIXED_LR, Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim
from pico.models.heads import mlp_head


def negative_cosine(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean over rows of ``-cos(p, z)`` (SimSiam's ``D``), in at least float32.

    The gradient flows into ``prediction`` only: ``target`` is detached here (the
    stop-gradient of the paper).
    """
    p = F.normalize(prediction.float(), dim=1)
    z = F.normalize(target.detach().float(), dim=1)
    return -(p * z).sum(dim=1).mean()


class SimSiam(Method):
    """Backbone + projector + predictor; each view's prediction regresses the other
    view's projection, which receives no gradient. No momentum encoder, no negatives.

    The projector has three linear layers with BN after each, the output one included
    (affine-free), and ReLU between them; the predictor is a bottleneck of two layers
    (``proj_dim -> pred_hidden -> proj_dim``, BN and ReLU in the hidden layer; the
    paper's hidden width is a quarter of ``proj_dim``, the default when ``pred_hidden``
    is ``None``). The loss ``D(p1, z2) / 2 + D(p2, z1) / 2`` lies in [-1, 1].

    With ``fixed_predictor_lr`` (the paper's choice) the predictor's parameters form
    a parameter group marked ``fixed_lr``: the trainer's schedule warms up and decays
    the backbone's and projector's learning rate but leaves the predictor's at the base
    value.
    """

    views = ("contrastive", "contrastive")

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_hidden: int = 2048,
        proj_dim: int = 2048,
        pred_hidden: int | None = None,
        fixed_predictor_lr: bool = True,
    ) -> None:
        super().__init__()
        hidden = proj_dim // 4 if pred_hidden is None else pred_hidden
        if min(proj_hidden, proj_dim, hidden) < 1:
            raise ValueError(
                f"SimSiam head sizes must be positive, got proj_hidden={proj_hidden}, "
                f"proj_dim={proj_dim}, pred_hidden={hidden}"
            )
        self.backbone = backbone
        width = feature_dim(backbone, task.input_shape)
        self.projector = mlp_head(
            width, proj_hidden, proj_dim, 3, batch_norm=True, last_batch_norm=True
        )
        self.predictor = mlp_head(proj_dim, hidden, proj_dim, 2, batch_norm=True)
        self.fixed_predictor_lr = fixed_predictor_lr

    def project(self, x: Tensor) -> Tensor:
        """Projection ``z`` of a batch of views."""
        return self.projector(self.backbone(x))

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        a, b = batch.views
        z_a, z_b = self.project(a), self.project(b)
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)
        loss = (negative_cosine(p_a, z_b) + negative_cosine(p_b, z_a)) / 2
        return {"loss": loss}

    def optim_parameters(self) -> list[dict[str, Any]]:
        """Two groups: backbone and projector (scheduled), then the predictor (marked
        ``fixed_lr`` when ``fixed_predictor_lr``)."""
        encoder = [p for m in (self.backbone, self.projector) for p in m.parameters()]
        predictor = [p for p in self.predictor.parameters() if p.requires_grad]
        return [
            {"params": [p for p in encoder if p.requires_grad]},
            {"params": predictor, FIXED_LR: self.fixed_predictor_lr},
        ]
