"""Deep InfoMax, the local-global objective (Hjelm et al. ICLR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pico.core.distributed import gather_with_grad
from pico.core.losses import jsd_mi_loss, sup_con
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import feature_dim
from pico.models.heads import mlp_head

ESTIMATORS = ("jsd", "infonce")


class DIM(Method):
    """Maximise the mutual information between an image's global feature and its local
    features (every location of an intermediate feature map).

    The local features are the output of the backbone submodule ``local_layer``
    ``(B, C, H, W)``, read with a forward hook during the step; the global feature is the
    backbone's pooled output. Both are embedded into ``embed_dim``: the local features by
    two 1x1 convolutions with a ReLU between them, the global one by a 2-layer MLP. The
    critic is the dot product of the two embeddings. A global feature and a location of
    the same image form a positive pair, with a location of any other image of the batch
    a negative one. ``estimator``:

    * ``"jsd"``: the Jensen-Shannon estimator over all pairs
      (:func:`~pico.core.losses.jsd_mi_loss`), the paper's DIM(L) default;
    * ``"infonce"``: each location's embedding picks its own image's global embedding
      among the B of the batch (the other images are its negatives), a cross-entropy
      (:func:`~pico.core.losses.sup_con` with one positive and temperature 1).

    Under DDP both embeddings are gathered with their gradient path, so negatives come
    from the global batch. The paper's optional prior-matching term is not included.
    """

    views = ("weak",)

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        local_layer: str = "blocks.0",
        embed_dim: int = 2048,
        estimator: str = "jsd",
    ) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"DIM estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if embed_dim < 1:
            raise ValueError(f"DIM embed_dim must be >= 1, got {embed_dim}")
        layers = dict(backbone.named_modules())
        if local_layer not in layers or local_layer == "":
            names = [name for name in layers if name][:12]
            raise ValueError(
                f"DIM local_layer={local_layer!r} is no submodule of the backbone; "
                f"its submodules include {names}"
            )
        self.backbone = backbone
        self.local_layer = local_layer
        self.estimator = estimator
        # the channels are measured with a forward pass on an input of this shape
        assert task.input_shape is not None, "DIM needs TaskInfo.input_shape"
        channels = self._local_channels(task.input_shape)
        self.local_head = nn.Sequential(
            nn.Conv2d(channels, embed_dim, 1), nn.ReLU(), nn.Conv2d(embed_dim, embed_dim, 1)
        )
        self.global_head = mlp_head(
            feature_dim(backbone, task.input_shape), embed_dim, embed_dim, 2
        )

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(local feature map, pooled backbone features)`` of a batch."""
        captured: list[Tensor] = []
        layer = self.backbone.get_submodule(self.local_layer)
        handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            pooled = self.backbone(x)
        finally:
            handle.remove()
        local = captured[-1]
        if local.ndim != 4:
            raise ValueError(
                f"DIM local_layer={self.local_layer!r} must output a (B, C, H, W) feature "
                f"map, got shape {tuple(local.shape)}"
            )
        return local, pooled

    def _local_channels(self, input_shape: tuple[int, ...]) -> int:
        """Channels of the ``local_layer`` output, measured with one forward pass."""
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            local, _ = self._encode(torch.zeros(2, *input_shape))
        self.backbone.train(was_training)
        return local.shape[1]

    def embeddings(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(local (B * H * W, E), global (B, E))`` embeddings; the local rows of image b
        are rows ``b * H * W`` to ``(b + 1) * H * W - 1``."""
        local, pooled = self._encode(x)
        local = self.local_head(local).flatten(2).transpose(1, 2)  # (B, HW, E)
        return local.reshape(-1, local.shape[-1]).float(), self.global_head(pooled).float()

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        (x,) = batch.views
        local, global_ = self.embeddings(x)
        locations = local.shape[0] // global_.shape[0]
        local, global_ = gather_with_grad(local), gather_with_grad(global_)
        images = torch.arange(global_.shape[0], device=global_.device)
        same = images.repeat_interleave(locations)[:, None] == images[None, :]  # (BHW, B)
        if self.estimator == "jsd":
            loss = jsd_mi_loss(global_, local, same.T)
        else:
            loss = sup_con(local, global_, same, temperature=1.0)
        return {"loss": loss}
