"""MoCo v2: momentum contrast with a feature queue (He et al. 2020; Chen et al. 2020)."""

from __future__ import annotations

from collections.abc import Callable

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
    symmetrised over the two views when ``symmetric`` is set. The head is
    Linear-ReLU-Linear; its hidden width is the backbone's feature width unless
    ``proj_hidden`` is given (MoCo v2's head: 2048 on ResNet-50). The key momentum follows
    a cosine schedule from ``key_momentum`` to 1 when ``cosine_momentum`` is set.

    Shuffling BN (He et al. 2020, Sec. 3.3): with plain batch statistics a query and its
    key are normalised over the same images, so the positive is the one key that shares
    the current batch's statistics and the model can find it without learning features
    (the queue's keys come from other batches). As in the paper, whose 8 GPUs each
    normalise their own share of the batch, both encoders here normalise ``bn_groups``
    groups of the batch separately (each process on its own rows), and the keys are
    encoded in a random order, so a key shares its BN group with only about
    ``1 / bn_groups`` of its query's group. ``bn_groups=1`` is plain BN.
    """

    views = ("contrastive", "contrastive")

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_dim: int = 128,
        proj_hidden: int | None = None,
        queue_size: int = 4096,
        key_momentum: float = 0.99,
        cosine_schedule: bool = False,
        temperature: float = 0.2,
        symmetric: bool = True,
        bn_groups: int = 1,
    ) -> None:
        super().__init__()
        if bn_groups < 1:
            raise ValueError(f"MoCo bn_groups must be >= 1 (1: plain BN), got {bn_groups}")
        self.backbone = backbone
        hidden = backbone.out_dim if proj_hidden is None else proj_hidden
        self.head = mlp_head(backbone.out_dim, hidden, proj_dim, num_layers=2)
        self.key_backbone = momentum_copy(backbone)
        self.key_head = momentum_copy(self.head)
        self.queue = FeatureQueue(queue_size_for(queue_size, task.num_train), proj_dim)
        self.key_momentum = key_momentum
        self.cosine_schedule = cosine_schedule
        self.temperature = temperature
        self.symmetric = symmetric
        self.bn_groups = bn_groups

    def _grouped(self, encode: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``encode`` run on ``bn_groups`` consecutive groups of rows, each with its own BN
        statistics (one pass over the whole batch outside training)."""
        if not self.training or self.bn_groups == 1:
            return encode(x)
        return torch.cat([encode(chunk) for chunk in x.chunk(self.bn_groups)])

    def _query(self, x: Tensor) -> Tensor:
        return F.normalize(self._grouped(lambda v: self.head(self.backbone(v)), x), dim=1)

    @torch.no_grad()
    def _key(self, x: Tensor) -> Tensor:
        """Keys encoded in a random order (shuffled BN groups), returned in batch order."""

        def encode(v: Tensor) -> Tensor:
            return self.key_head(self.key_backbone(v))

        if not self.training or self.bn_groups == 1:
            return F.normalize(encode(x), dim=1)
        order = torch.randperm(len(x), device=x.device)
        shuffled = self._grouped(encode, x[order])
        keys = torch.empty_like(shuffled)
        keys[order] = shuffled
        return F.normalize(keys, dim=1)

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
