"""InvaSpread: invariant and spreading instance features (Ye et al. CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import gather_with_grad
from pico.core.losses import invaspread_loss
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim


class InvaSpread(Method):
    """One shared encoder, backbone -> linear embedding (``proj_dim``) -> L2 normalisation;
    no memory bank and no momentum encoder.

    Both augmented views of every image in the batch are embedded. Each view's positive is
    the other view of its image and every view of the other images is a negative, under
    the paper's non-parametric softmax with ``temperature`` (see
    :func:`~pico.core.losses.invaspread_loss`). Under DDP the embeddings of all ranks are
    gathered with their gradient path, so negatives come from the global batch and DDP's
    gradient averaging yields the gradient of the global loss.
    """

    views = ("contrastive", "contrastive")

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_dim: int = 128,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"InvaSpread temperature must be > 0, got {temperature}")
        if proj_dim < 1:
            raise ValueError(f"InvaSpread proj_dim must be >= 1, got {proj_dim}")
        self.backbone = backbone
        self.head = nn.Linear(feature_dim(backbone, task.input_shape), proj_dim)
        self.temperature = temperature

    def embed_views(self, x: Tensor) -> Tensor:
        """L2-normalised float32 embeddings of a batch of views."""
        return F.normalize(self.head(self.backbone(x)).float(), dim=1)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        return self.embed_views(x)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        a, b = batch.views
        z_a = gather_with_grad(self.embed_views(a))
        z_b = gather_with_grad(self.embed_views(b))
        return {"loss": invaspread_loss(z_a, z_b, self.temperature)}
