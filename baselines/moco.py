"""MoCo v2: momentum contrast with a feature queue (He et al. 2020; Chen et al. 2020)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import broadcast_, gather_no_grad, get_rank, get_world_size
from pico.core.ema import cosine_momentum
from pico.core.losses import info_nce
from pico.core.momentum_encoder import MomentumEncoder
from pico.core.queue import FeatureQueue, queue_size_for
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim
from pico.models.heads import mlp_head

KEY_BN = ("shuffle", "local", "sync")


class MoCo(MomentumEncoder, Method):
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
    normalise their own share of the batch, both encoders normalise ``bn_groups``
    consecutive groups of the global batch separately, and the keys are encoded in a
    random order, so a key shares its BN group with only about ``1 / bn_groups`` of its
    query's group. ``bn_groups=1`` is plain BN.

    Across processes (torchrun) ``bn_groups`` still counts groups of the *global* batch
    and must be a multiple of the process count; each process normalises
    ``bn_groups / world_size`` groups of its own rows, so a run gives the same result
    with any process count. ``key_bn`` says how the keys are normalised:

    * ``shuffle``: the keys' inputs of all processes are gathered and shuffled with one
      permutation (drawn on every rank, broadcast from rank 0); each process encodes its
      share of the shuffled global batch, and the keys are gathered and put back in
      order: exactly the single-process shuffle;
    * ``local``: each process shuffles only its own rows (no images cross processes;
      a key then shares its BN group with more of its query's rows);
    * ``sync``: the key encoder's BN layers are ``SyncBatchNorm`` and the keys are
      encoded in one pass with statistics of the whole global batch (no shuffle; CUDA
      only across processes, as torch's SyncBatchNorm).

    In one process ``shuffle`` and ``local`` are the same, and ``sync`` is plain BN.
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
        bn_groups: int = 4,
        key_bn: str = "shuffle",
    ) -> None:
        super().__init__()
        if bn_groups < 1:
            raise ValueError(f"MoCo bn_groups must be >= 1 (1: plain BN), got {bn_groups}")
        if key_bn not in KEY_BN:
            raise ValueError(f"MoCo key_bn={key_bn!r} is unknown; choose one of {KEY_BN}")
        width = feature_dim(backbone, task.input_shape)
        hidden = width if proj_hidden is None else proj_hidden
        self.init_momentum_encoder(
            backbone,
            mlp_head(width, hidden, proj_dim, num_layers=2),
            key_momentum,
            FeatureQueue(queue_size_for(queue_size, task.num_train), proj_dim),
            sync_key_bn=key_bn == "sync",
        )
        self.cosine_schedule = cosine_schedule
        self.temperature = temperature
        self.symmetric = symmetric
        self.bn_groups = bn_groups
        self.key_bn = key_bn

    def _local_groups(self) -> int:
        """BN groups of this process's rows: its share of ``bn_groups``."""
        world = get_world_size()
        if self.bn_groups % world:
            raise ValueError(
                f"MoCo bn_groups={self.bn_groups} counts BN groups of the global batch and must "
                f"be a multiple of the {world} processes; set method.bn_groups={world} (one "
                "group per process, as in the paper) or a multiple of it"
            )
        return self.bn_groups // world

    def _grouped(self, encode: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """``encode`` run on this process's consecutive groups of rows, each with its own BN
        statistics (one pass over the whole batch outside training)."""
        groups = self._local_groups() if self.training else 1
        if groups == 1:
            return encode(x)
        return torch.cat([encode(chunk) for chunk in x.chunk(groups)])

    def _query(self, x: Tensor) -> Tensor:
        return F.normalize(self._grouped(self.project_query, x), dim=1)

    @torch.no_grad()
    def _key(self, x: Tensor) -> Tensor:
        """Keys encoded in a random order (shuffled BN groups), returned in batch order."""
        if not self.training or self.key_bn == "sync":
            if self.training and get_world_size() > 1 and x.device.type != "cuda":
                raise ValueError(
                    "MoCo key_bn=sync needs CUDA across processes: torch's SyncBatchNorm does "
                    "not run on CPU (gloo); use method.key_bn=shuffle"
                )
            return self.key(x)
        if self.key_bn == "local" or get_world_size() == 1:
            if self._local_groups() == 1:
                return self.key(x)
            order = torch.randperm(len(x), device=x.device)
            keys = self._unshuffle(self._grouped(self.project_key, x[order]), order)
            return F.normalize(keys, dim=1)
        return F.normalize(self._key_shuffled_across_ranks(x), dim=1)

    @staticmethod
    def _unshuffle(shuffled: Tensor, order: Tensor) -> Tensor:
        """Rows of ``shuffled`` (row ``j`` belongs to ``order[j]``) back in original order."""
        out = torch.empty_like(shuffled)
        out[order] = shuffled
        return out

    def _key_shuffled_across_ranks(self, x: Tensor) -> Tensor:
        """Shuffle-BN over processes: gather, permute, encode this rank's share, gather back.

        Every rank draws the permutation (keeping the random streams of the ranks in
        step) and takes rank 0's; the result is the single-process shuffled encoding.
        """
        full = gather_no_grad(x)
        order = broadcast_(torch.randperm(len(full), device=x.device))
        rank, size = get_rank(), len(x)
        mine = order[rank * size : (rank + 1) * size]
        keys = self._unshuffle(gather_no_grad(self._grouped(self.project_key, full[mine])), order)
        return keys[rank * size : (rank + 1) * size]

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

    def momentum(self, info: StepInfo) -> float:
        """Key momentum for the update after step ``info.step``: ``key_momentum``, or with
        ``cosine_schedule`` a cosine from it (before the first step) to 1 (after the last)."""
        if self.cosine_schedule:
            return cosine_momentum(self.key_momentum, info.step + 1, info.total_steps)
        return self.key_momentum
