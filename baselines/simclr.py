"""SimCLR: contrast two augmented views of each image (Chen et al. 2020)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import gather_with_grad
from pico.core.losses import nt_xent
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim
from pico.models.heads import mlp_head


class SimCLR(Method):
    """Backbone + 2-layer MLP projector (BN in the hidden layer), NT-Xent over 2N views.

    Each view's positive is the other view of the same image; every other view in the
    batch is a negative. Under DDP the projections of all ranks are gathered with their
    gradient path, so negatives come from the global batch; every rank computes the
    same global loss, and DDP's gradient averaging then yields exactly the gradient of
    that loss (see :func:`~pico.core.distributed.gather_with_grad`).
    """

    views = ("contrastive", "contrastive")

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.5,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"SimCLR temperature must be > 0, got {temperature}")
        self.backbone = backbone
        self.projector = mlp_head(
            feature_dim(backbone, task.input_shape), proj_hidden, proj_dim, 2, batch_norm=True
        )
        self.temperature = temperature

    def project(self, x: Tensor) -> Tensor:
        """L2-normalised projection of a batch of views."""
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        a, b = batch.views
        z_a = gather_with_grad(self.project(a))
        z_b = gather_with_grad(self.project(b))
        return {"loss": nt_xent(z_a, z_b, self.temperature)}
