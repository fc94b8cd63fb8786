"""SwAV: swapped prediction of online cluster assignments (Caron et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import all_reduce_sum, gather_no_grad
from pico.core.multicrop import encode_views, multicrop_views
from pico.core.queue import FeatureQueue, queue_size_for
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim
from pico.models.heads import mlp_head


@torch.no_grad()
def sinkhorn_knopp(
    scores: Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    shared: Tensor | None = None,
    shared_mask: Tensor | None = None,
) -> Tensor:
    """Codes (B, K) of this process's rows: ``exp(scores / epsilon)`` scaled towards
    equal prototype (column) sums over the whole batch, each row summing to 1.

    Each iteration first divides every prototype's column by its sum over all rows, so
    the prototypes share the mass equally, then every row by its own sum, so each row
    carries ``1 / rows``: after the last iteration the row sums are exact and the
    prototype sums close to uniform (closer with more iterations). Under torchrun the
    column sums (and the row count) are all-reduced, so the codes are those of the global
    batch. ``shared`` (M, K) are further rows held equally by every process (SwAV's
    queue, scored against the current prototypes), counted once; ``shared_mask`` (M,)
    marks which of them to use. Computed in float32 at least, without gradient.
    """
    if iterations < 1 or not epsilon > 0:
        raise ValueError(
            f"sinkhorn_knopp needs iterations >= 1 and epsilon > 0, got {iterations}, {epsilon}"
        )
    dtype = torch.promote_types(scores.dtype, torch.float32)
    q = torch.exp(scores.to(dtype) / epsilon)
    rows = all_reduce_sum(torch.tensor(float(len(q)), dtype=dtype, device=q.device))
    if shared is None:
        r = q.new_zeros(0, q.shape[1])
    else:
        r = torch.exp(shared.to(dtype) / epsilon)
        if shared_mask is not None:
            r = r * shared_mask.to(dtype).unsqueeze(1)
            rows = rows + shared_mask.to(dtype).sum()
        else:
            rows = rows + len(r)
    total = all_reduce_sum(q.sum()) + r.sum()
    q, r = q / total, r / total
    prototypes = q.shape[1]
    for _ in range(iterations):
        columns = (all_reduce_sum(q.sum(0)) + r.sum(0)) * prototypes
        q, r = q / columns, r / columns
        q = q / (q.sum(1, keepdim=True) * rows)
        r = r / (r.sum(1, keepdim=True) * rows).clamp_min(torch.finfo(dtype).tiny)
    return q * rows


def swapped_prediction_loss(
    scores: Sequence[Tensor], codes: Sequence[Tensor], temperature: float = 0.1
) -> Tensor:
    """SwAV's loss: the codes of crop ``i`` (``codes[i]``, one per crop that assigns)
    predicted from every other crop's prototype scores, as the cross-entropy with
    ``softmax(scores[v] / temperature)``; the mean over rows, over the other crops and over
    the assigning crops. Computed in at least float32."""
    total = scores[0].new_zeros((), dtype=torch.float32)
    for i, code in enumerate(codes):
        others = [v for v in range(len(scores)) if v != i]
        sub = sum(
            -(code * F.log_softmax(scores[v].float() / temperature, dim=1)).sum(1).mean()
            for v in others
        )
        total = total + sub / len(others)
    return total / len(codes)


class SwAV(Method):
    """Backbone + projector onto the unit sphere, scored against trainable prototypes.

    The prototypes are a bias-free linear layer whose rows are kept at unit norm (after
    every optimizer step). Codes come from Sinkhorn-Knopp over the global batch on the
    two global crops only, without gradient; every crop (global and ``num_local_crops``
    local ones) predicts the codes of the global crops other than itself, at
    ``temperature``. The prototypes get no update during the first
    ``freeze_prototypes_epochs`` epochs. From epoch ``queue_start_epoch`` on, a queue
    of ``queue_size`` past projections per global crop (0: none) joins the Sinkhorn
    rows, which keeps equipartition meaningful with small batches.
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        num_prototypes: int = 3000,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        num_local_crops: int = 6,
        freeze_prototypes_epochs: int = 1,
        queue_size: int = 3840,
        queue_start_epoch: int = 15,
    ) -> None:
        super().__init__()
        if not temperature > 0 or not epsilon > 0 or sinkhorn_iterations < 1:
            raise ValueError(
                "SwAV needs temperature > 0, epsilon > 0 and sinkhorn_iterations >= 1, got "
                f"{temperature}, {epsilon}, {sinkhorn_iterations}"
            )
        if num_prototypes < 2 or queue_size < 0:
            raise ValueError(
                f"SwAV needs num_prototypes >= 2 and queue_size >= 0 (0: no queue), got "
                f"{num_prototypes}, {queue_size}"
            )
        self.views = multicrop_views(num_local_crops)
        self.backbone = backbone
        self.projector = mlp_head(
            feature_dim(backbone, task.input_shape), proj_hidden, proj_dim, 2, batch_norm=True
        )
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.normalize_prototypes_()
        size = queue_size_for(queue_size, task.num_train) if queue_size else 0
        self.queues = nn.ModuleList(FeatureQueue(size, proj_dim) for _ in range(2 if size else 0))
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        self.queue_start_epoch = queue_start_epoch

    @torch.no_grad()
    def normalize_prototypes_(self) -> None:
        """Scale every prototype (row of the layer's weight) to unit length, in place."""
        weight = self.prototypes.weight
        weight.copy_(F.normalize(weight, dim=1))

    def project(self, x: Tensor) -> Tensor:
        """L2-normalised projections of a batch of crops."""
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def codes(self, scores: Tensor, crop: int, use_queue: bool) -> Tensor:
        """Sinkhorn codes of global crop ``crop`` from its prototype ``scores``, with the
        crop's queue joining the rows when ``use_queue``."""
        if not use_queue:
            return sinkhorn_knopp(scores, self.epsilon, self.sinkhorn_iterations)
        queue = self.queues[crop]
        assert isinstance(queue, FeatureQueue)  # self.queues holds FeatureQueues only
        shared = queue.features @ self.prototypes.weight.detach().float().T
        return sinkhorn_knopp(
            scores, self.epsilon, self.sinkhorn_iterations, shared, queue.valid_mask()
        )

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        z = encode_views(self.project, batch.views)
        scores = [self.prototypes(v) for v in z]
        use_queue = len(self.queues) > 0 and info.epoch >= self.queue_start_epoch
        codes = [self.codes(scores[i].detach(), i, use_queue) for i in range(2)]
        loss = swapped_prediction_loss(scores, codes, self.temperature)
        if use_queue:
            for queue, projection in zip(self.queues, z[:2], strict=True):
                assert isinstance(queue, FeatureQueue)
                queue.enqueue(gather_no_grad(projection.detach().float()))
        return {"loss": loss}

    def before_optimizer_step(self, info: StepInfo) -> None:
        """No prototype update during the first ``freeze_prototypes_epochs`` epochs."""
        if info.epoch < self.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None

    def after_optimizer_step(self, info: StepInfo) -> None:
        self.normalize_prototypes_()
