"""Contrastive Predictive Coding on images (van den Oord et al. 2018; CPC v2, Hénaff et al.
2019): predict the encodings of patches further down an image from the rows above."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from pico.core.distributed import gather_with_grad
from pico.core.losses import cpc_loss
from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.models.dims import measured_feature_dim

CONTEXTS = ("masked_conv", "gru")


def grid_size(length: int, size: int, stride: int) -> int:
    """Patches of ``size`` pixels at ``stride`` along a side of ``length`` pixels."""
    return (length - size) // stride + 1


def patch_grid(x: Tensor, size: int, stride: int) -> Tensor:
    """The grid of overlapping square patches of a batch of images.

    ``(B, C, H, W)`` -> ``(B, Gh, Gw, C, size, size)`` with ``Gh = (H - size) // stride + 1``
    (``Gw`` alike): patch ``[:, i, j]`` is ``x[:, :, i * stride : i * stride + size,
    j * stride : j * stride + size]``. Pixels past the last whole patch are left out; the
    method refuses sizes that leave any.
    """
    if x.ndim != 4 or min(x.shape[-2:]) < size:
        raise ValueError(
            f"patch_grid needs (B, C, H, W) images of at least {size}x{size} pixels, got "
            f"shape {tuple(x.shape)}"
        )
    patches = x.unfold(2, size, stride).unfold(3, size, stride)  # (B, C, Gh, Gw, size, size)
    return rearrange(patches, "b c gh gw ph pw -> b gh gw c ph pw")


class RowCausalConv2d(nn.Conv2d):
    """A convolution that is causal along rows: output row ``r`` reads input rows
    ``r - kernel_size // 2`` to ``r`` only, and columns ``c - kernel_size // 2`` to
    ``c + kernel_size // 2`` (odd ``kernel_size``, output the size of the input).

    It is the PixelCNN-style masked ``kernel_size`` x ``kernel_size`` convolution whose
    kernel rows below the centre are zero, stored without the masked rows: a
    ``(kernel_size // 2 + 1) x kernel_size`` kernel over the input padded with
    ``kernel_size // 2`` rows on top only, so no work goes into the masked taps.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"RowCausalConv2d kernel_size must be odd and >= 1, got {kernel_size}")
        half = kernel_size // 2
        super().__init__(in_channels, out_channels, (half + 1, kernel_size))
        self.pad = (half, half, half, 0)  # left, right, top, bottom

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))


class _ResidualBlock(nn.Module):
    """``x + (1x1 conv -> row-causal 3x3 conv -> 1x1 conv)(x)``, a ReLU before each conv."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(dim, hidden, 1),
            nn.ReLU(),
            RowCausalConv2d(hidden, hidden, 3),
            nn.ReLU(),
            nn.Conv2d(hidden, dim, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class MaskedConvContext(nn.Module):
    """PixelCNN-style context network over a ``(B, Gh, Gw, D)`` grid of patch encodings:
    ``blocks`` residual blocks (:class:`RowCausalConv2d`, 3x3, in a ``hidden``-wide
    bottleneck); the context at row ``r`` sees rows ``r - blocks`` to ``r``. Output
    ``(B, Gh, Gw, D)``."""

    def __init__(self, dim: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(_ResidualBlock(dim, hidden) for _ in range(blocks)))
        self.out_dim = dim

    def forward(self, z: Tensor) -> Tensor:
        c = self.blocks(rearrange(z, "b gh gw d -> b d gh gw"))
        return rearrange(c, "b d gh gw -> b gh gw d")


class GRUContext(nn.Module):
    """A GRU of ``layers`` layers run down each column of a ``(B, Gh, Gw, D)`` grid, row 0
    first: the context at ``(r, c)`` sees rows 0 to ``r`` of column ``c``. Output
    ``(B, Gh, Gw, hidden)``."""

    def __init__(self, dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.gru = nn.GRU(dim, hidden, num_layers=layers, batch_first=True)
        self.out_dim = hidden

    def forward(self, z: Tensor) -> Tensor:
        out, _ = self.gru(rearrange(z, "b gh gw d -> (b gw) gh d"))
        return rearrange(out, "(b gw) gh h -> b gh gw h", gw=z.shape[2])


class CPC(Method):
    """Contrastive Predictive Coding on a grid of overlapping patches.

    Each image is cut into a ``Gh x Gw`` grid of ``patch_size`` px patches at
    ``patch_stride`` (:func:`patch_grid`; a 32 px image, 8 px patches, stride 4: 7 x 7, the
    papers' grid), and the backbone encodes all ``B * Gh * Gw`` patches in one call into
    ``z[b, r, c]`` (``D`` wide). A context network reads the grid causally along rows,
    ``context``:

    * ``"masked_conv"`` (CPC v2, the default): :class:`MaskedConvContext`, ``context_layers``
      residual blocks of masked (row-causal) 3x3 convolutions, ``context_dim`` wide inside;
    * ``"gru"``: :class:`GRUContext`, a GRU of ``context_layers`` layers and ``context_dim``
      units down each column (CPC's autoregressive model, applied per column).

    The context widths are this library's choice (the papers' context networks are
    ResNet-sized stacks at ImageNet scale): 5 blocks let a context of the 7 x 7 grid see
    the 5 rows above it, as far as its predictions reach.

    One linear map ``W_k`` (no bias) per offset ``k = 1..prediction_steps`` turns the
    context at ``(r, c)`` into a prediction of ``z[b, r + k, c]``, scored against every
    patch encoding of the batch (:func:`~pico.core.losses.cpc_loss`): the positive is the
    target, the negatives are all other patches of the same image and all patches of the
    other images. Under DDP the encodings and predictions of all ranks are gathered with
    their gradient path, so the negatives are the patches of the global batch and DDP's
    gradient averaging yields the gradient of the global loss.

    Each image gives one view, the ``contrastive`` recipe of the aug config. Evaluation
    (kNN, linear probe, t-SNE: :meth:`features`) uses the patch encodings of the
    whole grid averaged, as CPC v2 evaluates its encoder; :meth:`embed` is that mean,
    L2-normalised. ``pico-export`` refuses ``parts=all`` for it (the exported backbone
    would encode whole images) and writes the patch encoder with ``parts=backbone``.
    Not included from CPC v2: predictions from the other three directions, per-patch
    augmentation, and layer normalisation in the encoder (the backbone's own normalisation
    is kept, BatchNorm in ``model=convnet``; its statistics run over all patches of the
    batch).
    """

    views = ("contrastive",)

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        patch_size: int = 8,
        patch_stride: int = 4,
        prediction_steps: int = 5,
        context: str = "masked_conv",
        context_layers: int = 5,
        context_dim: int = 256,
    ) -> None:
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"CPC context must be one of {CONTEXTS}, got {context!r}")
        if patch_size < 1 or patch_stride < 1:
            raise ValueError(
                f"CPC patch_size and patch_stride must be >= 1, got {patch_size} and {patch_stride}"
            )
        if context_layers < 1 or context_dim < 1:
            raise ValueError(
                f"CPC context_layers and context_dim must be >= 1, got {context_layers} and "
                f"{context_dim}"
            )
        shape = task.input_shape
        if shape is None or len(shape) != 3:
            raise ValueError(
                f"CPC cuts images into patches: it needs TaskInfo.input_shape = (C, H, W), got "
                f"{shape}"
            )
        channels, height, width = shape
        if not all(n >= patch_size and (n - patch_size) % patch_stride == 0 for n in shape[1:]):
            raise ValueError(
                f"CPC patch_size={patch_size}, patch_stride={patch_stride} do not tile "
                f"{height}x{width} images: choose sizes with (side - patch_size) divisible by "
                "patch_stride (e.g. 8 and 4 on 32 px, 4 and 2 on 8 px)"
            )
        rows = grid_size(height, patch_size, patch_stride)
        if not 1 <= prediction_steps < rows:
            raise ValueError(
                f"CPC prediction_steps must be 1..{rows - 1} on a grid of {rows} rows "
                f"({height} px, patch_size={patch_size}, patch_stride={patch_stride}), got "
                f"{prediction_steps}"
            )
        patch = (channels, patch_size, patch_size)
        try:
            dim = measured_feature_dim(backbone, patch)
        except ValueError as err:
            cause = err.__cause__  # the failed forward pass, when it was one
            why = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
            raise ValueError(
                f"CPC encodes patches of shape {patch} with the backbone, which cannot take "
                f"them ({why}); use a backbone that takes any input size (model=convnet, "
                "model=resnet18) or another method.patch_size"
            ) from err
        self.backbone = backbone
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.context: MaskedConvContext | GRUContext
        if context == "masked_conv":
            self.context = MaskedConvContext(dim, context_dim, context_layers)
        else:
            self.context = GRUContext(dim, context_dim, context_layers)
        self.predictors = nn.ModuleList(
            nn.Linear(self.context.out_dim, dim, bias=False) for _ in range(prediction_steps)
        )

    def patch_encodings(self, x: Tensor) -> Tensor:
        """``(B, Gh, Gw, D)`` encodings of the patch grid of a batch of images, every patch
        through the backbone in one call."""
        patches = patch_grid(x, self.patch_size, self.patch_stride)
        rows, cols = patches.shape[1:3]
        z = self.backbone(rearrange(patches, "b gh gw c ph pw -> (b gh gw) c ph pw"))
        return rearrange(z, "(b gh gw) d -> b gh gw d", gh=rows, gw=cols)

    def predictions(self, z: Tensor) -> Tensor:
        """``(B, K, Gh, Gw, D)``: entry ``[:, k - 1, r, c]`` is ``W_k`` applied to the context
        at ``(r, c)``, the prediction of ``z[:, r + k, c]``."""
        c = self.context(z)
        return torch.stack([predict(c) for predict in self.predictors], dim=1)

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """Patch encodings averaged over the grid, ``(B, D)``."""
        return self.patch_encodings(x).mean(dim=(1, 2))

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.features(x).float(), dim=1)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        (x,) = batch.views
        z = self.patch_encodings(x)
        predictions = self.predictions(z)
        z, predictions = gather_with_grad(z.float()), gather_with_grad(predictions.float())
        return {"loss": cpc_loss(predictions, z)}
