"""The query / key encoder pair of momentum contrast, with its queue of past keys.

MoCo, PiCO and PiCO+ encode queries with an online backbone and projection head and
keys with momentum copies of both, which trail the online ones by EMA after every
optimizer step, and keep the keys of recent batches in a
:class:`~pico.core.queue.FeatureQueue`. :class:`MomentumEncoder` is that part, mixed into
a :class:`~pico.engine.method.Method`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.ema import momentum_copy
from pico.core.queue import FeatureQueue

if TYPE_CHECKING:
    from pico.engine.method import StepInfo


class MomentumEncoder:
    """Mixin of a method: online ``backbone`` + ``head``, their momentum copies
    ``key_backbone`` + ``key_head`` and an optional ``queue``.

    :meth:`init_momentum_encoder` registers the modules on the method itself, under those
    names and in that order, so checkpoints and optimizer states keep their layout. The
    mixin declares the two (online, key) pairs (:meth:`momentum_pairs`) with the constant
    coefficient ``key_momentum`` (:meth:`momentum`), so the method's default
    ``after_optimizer_step`` moves the key encoder; a method with a momentum schedule
    overrides :meth:`momentum`. Put it before the method's base class::

        class MyMoCo(MomentumEncoder, Method):
            def __init__(self, backbone, task):
                super().__init__()
                head = mlp_head(feature_dim(backbone, task.input_shape), 128, 128)
                self.init_momentum_encoder(backbone, head, 0.99, FeatureQueue(4096, 128))

            def training_step(self, batch, info):
                q, k = self.query(batch.views[0]), self.key(batch.views[1])
                ...
    """

    backbone: nn.Module
    head: nn.Module
    key_backbone: nn.Module
    key_head: nn.Module
    key_momentum: float

    def init_momentum_encoder(
        self,
        backbone: nn.Module,
        head: nn.Module,
        key_momentum: float,
        queue: FeatureQueue | None = None,
        sync_key_bn: bool = False,
    ) -> None:
        """Register ``backbone``, ``head``, their momentum copies and ``queue`` (if any);
        with ``sync_key_bn`` the key encoder's BatchNorm layers are ``SyncBatchNorm``
        (statistics of the global batch under torchrun)."""
        if not 0.0 <= key_momentum <= 1.0:
            raise ValueError(f"key_momentum must lie in [0, 1], got {key_momentum}")
        self.backbone = backbone
        self.head = head
        self.key_backbone = momentum_copy(backbone)
        self.key_head = momentum_copy(head)
        if sync_key_bn:
            self.key_backbone = nn.SyncBatchNorm.convert_sync_batchnorm(self.key_backbone)
            self.key_head = nn.SyncBatchNorm.convert_sync_batchnorm(self.key_head)
        if queue is not None:
            self.queue = queue
        self.key_momentum = key_momentum

    def project_query(self, x: Tensor) -> Tensor:
        """``head(backbone(x))``: unnormalised query projections."""
        return self.head(self.backbone(x))

    @torch.no_grad()
    def project_key(self, x: Tensor) -> Tensor:
        """``key_head(key_backbone(x))``: unnormalised key projections, without gradient."""
        return self.key_head(self.key_backbone(x))

    def query(self, x: Tensor) -> Tensor:
        """L2-normalised query projections."""
        return F.normalize(self.project_query(x), dim=1)

    @torch.no_grad()
    def key(self, x: Tensor) -> Tensor:
        """L2-normalised key projections, without gradient."""
        return F.normalize(self.project_key(x), dim=1)

    def momentum_pairs(self) -> Sequence[tuple[nn.Module, nn.Module]]:
        """(backbone, key_backbone) and (head, key_head)."""
        return ((self.backbone, self.key_backbone), (self.head, self.key_head))

    def momentum(self, info: StepInfo) -> float:
        """``key_momentum`` at every step."""
        return self.key_momentum
