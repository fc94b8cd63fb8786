"""SimCLR: contrast two augmented views of each image (Chen et al. 2020), and SimCLR v2's
deeper projector (Chen et al. 2020, "Big Self-Supervised Models are Strong
Semi-Supervised Learners")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import gather_with_grad
from pico.core.losses import nt_xent
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim
from pico.models.heads import mlp_head


class SimCLR(Method):
    """Backbone + MLP projector (BN in the hidden layers), NT-Xent over 2N views.

    Each view's positive is the other view of the same image; every other view in the
    batch is a negative. The projector has ``proj_layers`` linear layers (2 in SimCLR,
    3 in :class:`SimCLRv2`), hidden width ``proj_hidden`` (``None``: the backbone's
    feature width) and output ``proj_dim``. Under DDP the projections of all ranks are
    gathered with their gradient path, so negatives come from the global batch; every
    rank computes the same global loss, and DDP's gradient averaging then yields exactly
    the gradient of that loss (see :func:`~pico.core.distributed.gather_with_grad`).
    """

    views = ("contrastive", "contrastive")

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_hidden: int | None = 2048,
        proj_dim: int = 128,
        temperature: float = 0.5,
        proj_layers: int = 2,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if not temperature > 0:
            raise ValueError(f"{name} temperature must be > 0, got {temperature}")
        if proj_layers < 2:
            raise ValueError(
                f"{name} proj_layers must be >= 2 (a nonlinear projector), got {proj_layers}"
            )
        self.backbone = backbone
        width = feature_dim(backbone, task.input_shape)
        self.projector = mlp_head(
            width, proj_hidden or width, proj_dim, proj_layers, batch_norm=True
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


class SimCLRv2(SimCLR):
    """SimCLR v2's pretraining: :class:`SimCLR` with a 3-layer projector whose hidden
    layers are as wide as the backbone's features (Linear-BN-ReLU twice, then a linear
    128-d output) and NT-Xent at temperature 0.1.

    The values are the paper's ImageNet recipe (batch 4096; temperature 0.1 in the
    official code's README, google-research/simclr, tf2/README.md). The official code
    also puts a BatchNorm without shift on the output layer; here only the hidden layers
    have BN, as in :class:`SimCLR`. SimCLR v2's memory network (a MoCo-style queue) is
    left out: the paper reports about 1 % from it at batch 4096.

    Fine-tuning starts from the projector's first layer ("from the middle layer of the
    projection head"): ``model.init_from=CHECKPOINT model.init_head_layers=1`` makes
    backbone + that Linear-BN-ReLU the encoder of any method
    (:func:`~pico.models.build_backbone`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_hidden: int | None = None,
        proj_dim: int = 128,
        temperature: float = 0.1,
        proj_layers: int = 3,
    ) -> None:
        super().__init__(backbone, task, proj_hidden, proj_dim, temperature, proj_layers)
