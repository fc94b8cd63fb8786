"""BYOL: predict a momentum target's projection of the other view (Grill et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.ema import cosine_momentum, momentum_copy
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim
from pico.models.heads import mlp_head


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean of ``2 - 2 cos(p, z)`` over rows (the squared distance of unit vectors).

    Computed in at least float32; the caller detaches ``target``.
    """
    p = F.normalize(prediction.float(), dim=1)
    z = F.normalize(target.float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


class BYOL(Method):
    """Online backbone + projector + predictor regressing an EMA target's projection.

    Projector and predictor are 2-layer MLPs with BN in the hidden layer. The target
    (backbone + projector) is a frozen copy moved only by the EMA after each optimizer
    step, with momentum rising along a cosine from ``base_momentum`` (first update) to
    1 (last update). The loss is the symmetrised ``2 - 2 cos(p, z')``, averaged over the
    two view orders, so it lies in [0, 4].
    """

    views = ("contrastive", "contrastive")

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        pred_hidden: int = 4096,
        base_momentum: float = 0.99,
    ) -> None:
        super().__init__()
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"BYOL base_momentum must lie in [0, 1], got {base_momentum}")
        self.backbone = backbone
        self.projector = mlp_head(
            feature_dim(backbone, task.input_shape), proj_hidden, proj_dim, 2, batch_norm=True
        )
        self.predictor = mlp_head(proj_dim, pred_hidden, proj_dim, num_layers=2, batch_norm=True)
        self.target_backbone = momentum_copy(backbone)
        self.target_projector = momentum_copy(self.projector)
        self.base_momentum = base_momentum

    def _online(self, x: Tensor) -> Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def _target(self, x: Tensor) -> Tensor:
        return self.target_projector(self.target_backbone(x))

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        a, b = batch.views
        loss_ab = byol_loss(self._online(a), self._target(b))
        loss_ba = byol_loss(self._online(b), self._target(a))
        return {"loss": (loss_ab + loss_ba) / 2}

    def momentum(self, info: StepInfo) -> float:
        """Target momentum for the update after step ``info.step``: base first, 1 last."""
        return cosine_momentum(self.base_momentum, info.step, max(info.total_steps - 1, 1))

    def momentum_pairs(self) -> tuple[tuple[nn.Module, nn.Module], ...]:
        """(backbone, target_backbone) and (projector, target_projector)."""
        return ((self.backbone, self.target_backbone), (self.projector, self.target_projector))

    def optim_parameters(self) -> list[nn.Parameter]:
        """Online backbone, projector and predictor; never the target."""
        online = (self.backbone, self.projector, self.predictor)
        return [p for module in online for p in module.parameters() if p.requires_grad]
