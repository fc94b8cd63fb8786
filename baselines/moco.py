"""MoCo v2: momentum contrast with a feature queue (He et al. 2020; Chen et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import gather_no_grad
from pico.core.ema import cosine_momentum, ema_update_, momentum_copy
from pico.core.losses import info_nce
from pico.core.queue import FeatureQueue, queue_size_for
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.heads import mlp_head


class MoCo(Method):
    """Query encoder + MLP head against an EMA key encoder and a queue of past keys.

    The loss is InfoNCE (positive: the key of the other view; negatives: the queue),
    symmetrised over the two views when ``symmetric`` is set. The key momentum follows
    a cosine schedule from ``key_momentum`` to 1 when ``cosine_momentum`` is set.
    """

    views = ("contrastive", "contrastive")

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_dim: int = 128,
        proj_hidden: int = 2048,
        queue_size: int = 4096,
        key_momentum: float = 0.99,
        cosine_schedule: bool = False,
        temperature: float = 0.2,
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = mlp_head(backbone.out_dim, proj_hidden, proj_dim, num_layers=2)
        self.key_backbone = momentum_copy(backbone)
        self.key_head = momentum_copy(self.head)
        self.queue = FeatureQueue(queue_size_for(queue_size, task.num_train), proj_dim)
        self.key_momentum = key_momentum
        self.cosine_schedule = cosine_schedule
        self.temperature = temperature
        self.symmetric = symmetric

    def _query(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.backbone(x)), dim=1)

    @torch.no_grad()
    def _key(self, x: Tensor) -> Tensor:
        return F.normalize(self.key_head(self.key_backbone(x)), dim=1)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        a, b = batch.views
        valid = self.queue.valid_mask()
        queue = self.queue.features
        q_a, k_b = self._query(a), self._key(b)
        loss = info_nce(q_a, k_b.to(q_a.dtype), queue.to(q_a.dtype), valid, self.temperature)
        keys = [k_b]
        if self.symmetric:
            q_b, k_a = self._query(b), self._key(a)
            loss_b = info_nce(q_b, k_a.to(q_b.dtype), queue.to(q_b.dtype), valid, self.temperature)
            loss = (loss + loss_b) / 2
            keys.append(k_a)
        for key in keys:
            self.queue.enqueue(gather_no_grad(key.float()))
        return {"loss": loss}

    def after_optimizer_step(self, info: StepInfo) -> None:
        momentum = self.key_momentum
        if self.cosine_schedule:
            momentum = cosine_momentum(self.key_momentum, info.step + 1, info.total_steps)
        ema_update_([(self.backbone, self.key_backbone), (self.head, self.key_head)], momentum)
