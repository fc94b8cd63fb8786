"""MoCo v3: momentum contrast over in-batch keys, with a predictor (Chen, Xie & He 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import gather_no_grad, get_rank
from pico.core.ema import cosine_momentum, momentum_copy
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim
from pico.models.heads import mlp_head


def mocov3_loss(query: Tensor, keys: Tensor, temperature: float = 0.2, offset: int = 0) -> Tensor:
    """MoCo v3's contrastive loss, ``2 * temperature * CE(q @ k.T / temperature)``.

    ``query`` is ``(N, D)``, ``keys`` ``(M, D)`` (the keys of the global batch, M >= N);
    query ``i``'s positive is ``keys[offset + i]`` and the other keys are its negatives.
    Rows are L2-normalised here; logits are computed in at least float32. The scale
    ``2 * temperature`` is the paper's (it keeps the gradient's size apart from the
    temperature). The caller detaches ``keys``.
    """
    if not temperature > 0:
        raise ValueError(f"MoCo v3 temperature must be > 0, got {temperature}")
    if not 0 <= offset <= len(keys) - len(query):
        raise ValueError(
            f"MoCo v3: offset {offset} leaves no positive key for each of the {len(query)} "
            f"queries among {len(keys)} keys"
        )
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(keys.float(), dim=1)
    logits = q @ k.T / temperature
    target = torch.arange(len(q), device=q.device) + offset
    return 2 * temperature * F.cross_entropy(logits, target)


class MoCoV3(Method):
    """Backbone + projector + predictor (queries) against a momentum encoder (keys).

    Each view's query is contrasted with the keys of the other view of every image in the
    *global* batch (no queue): under torchrun the keys of all processes are gathered
    (without gradient), so each process's loss over its own queries is the
    single-process loss restricted to those rows and DDP's gradient averaging gives the
    global gradient. The loss is ``ctr(q1, k2) + ctr(q2, k1)`` with :func:`mocov3_loss`.

    The projector has three linear layers, the predictor two; both have BN in their
    hidden layers and an affine-free BN at the output (the paper's ViT heads). The
    momentum encoder (backbone + projector copies) follows the online one with momentum
    rising along a cosine from ``base_momentum`` (first update) to 1 (last update).

    ``freeze_patch_embed`` keeps the backbone's patch projection at its random
    initialisation (the paper's stabilising trick for ViTs); the backbone must have a
    ``patch_embed`` module (``model=vit_tiny`` / ``vit_small``, or a timm ViT).
    """

    views = ("contrastive", "contrastive")

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_hidden: int = 4096,
        proj_dim: int = 256,
        pred_hidden: int = 4096,
        temperature: float = 0.2,
        base_momentum: float = 0.99,
        freeze_patch_embed: bool = False,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"MoCo v3 temperature must be > 0, got {temperature}")
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"MoCo v3 base_momentum must lie in [0, 1], got {base_momentum}")
        if freeze_patch_embed:
            patch = getattr(backbone, "patch_embed", None)
            if not isinstance(patch, nn.Module):
                raise ValueError(
                    f"MoCo v3 freeze_patch_embed=true needs a backbone with a patch projection "
                    f"('patch_embed', as in a ViT: model=vit_tiny or model=vit_small), but "
                    f"{type(backbone).__name__} has none; set method.freeze_patch_embed=false"
                )
            patch.requires_grad_(False)
        self.backbone = backbone
        width = feature_dim(backbone, task.input_shape)
        self.projector = mlp_head(
            width, proj_hidden, proj_dim, 3, batch_norm=True, last_batch_norm=True
        )
        self.predictor = mlp_head(
            proj_dim, pred_hidden, proj_dim, 2, batch_norm=True, last_batch_norm=True
        )
        self.key_backbone = momentum_copy(backbone)
        self.key_projector = momentum_copy(self.projector)
        self.temperature = temperature
        self.base_momentum = base_momentum
        self.freeze_patch_embed = freeze_patch_embed

    def _query(self, x: Tensor) -> Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        """Momentum-encoder projections of the global batch (every process's rows)."""
        return gather_no_grad(self.key_projector(self.key_backbone(x)).float())

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        a, b = batch.views
        offset = get_rank() * len(a)
        q_a, q_b = self._query(a), self._query(b)
        k_a, k_b = self._keys(a), self._keys(b)
        loss_ab = mocov3_loss(q_a, k_b, self.temperature, offset)
        loss_ba = mocov3_loss(q_b, k_a, self.temperature, offset)
        return {"loss": loss_ab + loss_ba}

    def momentum(self, info: StepInfo) -> float:
        """Key momentum for the update after step ``info.step``: base first, 1 last."""
        return cosine_momentum(self.base_momentum, info.step, max(info.total_steps - 1, 1))

    def momentum_pairs(self) -> tuple[tuple[nn.Module, nn.Module], ...]:
        """(backbone, key_backbone) and (projector, key_projector)."""
        return ((self.backbone, self.key_backbone), (self.projector, self.key_projector))

    def optim_parameters(self) -> list[nn.Parameter]:
        """Online backbone (without a frozen patch projection), projector and predictor."""
        online = (self.backbone, self.projector, self.predictor)
        return [p for module in online for p in module.parameters() if p.requires_grad]
