"""Vision Transformers sized for small images, on torchvision's ``VisionTransformer``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn
from torchvision.models.vision_transformer import VisionTransformer as _TorchvisionViT

#: a derived patch size leaves a grid of at most this many patches per side
MAX_GRID = 8


def default_patch_size(image_size: int) -> int:
    """The smallest patch size of at least 2 pixels that divides ``image_size`` and leaves
    at most ``MAX_GRID`` patches per side: 2 on 8-pixel digits (4x4 patches), 4 on
    28-pixel MNIST (7x7) and on 32-pixel CIFAR (8x8), 12 on 96-pixel STL-10."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    for patch in range(2, image_size + 1):
        if image_size % patch == 0 and image_size // patch <= MAX_GRID:
            return patch
    return image_size


class VisionTransformer(_TorchvisionViT):
    """torchvision's ViT with ``in_channels`` input channels (1: grayscale), its classifier
    removed: (B, in_channels, S, S) -> (B, out_dim) class-token features after the final
    LayerNorm, ``out_dim = width``.

    ``image_size`` is the side ``S`` of the square inputs (``pico-train`` passes the
    data's size); ``patch_size=None`` takes :func:`default_patch_size`. The MLP blocks
    have ``mlp_ratio * width`` hidden units. DeiT sizes: tiny (width 192, depth 12,
    3 heads), small (384, 12, 6). ``patch_embed`` is the patch projection (a strided
    convolution), which MoCo v3 may freeze.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int | Sequence[int] = 32,
        patch_size: int | None = None,
        width: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ) -> None:
        side = _square_side(image_size)
        patch = default_patch_size(side) if patch_size is None else int(patch_size)
        if patch < 1 or side % patch:
            raise ValueError(
                f"ViT patch_size={patch} must be a positive divisor of the image size {side}; "
                "set model.patch_size=null to derive one"
            )
        if width < 1 or depth < 1 or heads < 1 or width % heads:
            raise ValueError(
                f"ViT needs positive width, depth and heads with width divisible by heads, got "
                f"width={width}, depth={depth}, heads={heads}"
            )
        if in_channels < 1:
            raise ValueError(f"ViT in_channels must be >= 1, got {in_channels}")
        super().__init__(
            image_size=side,
            patch_size=patch,
            num_layers=depth,
            num_heads=heads,
            hidden_dim=width,
            mlp_dim=round(mlp_ratio * width),
            dropout=dropout,
            attention_dropout=attention_dropout,
        )
        self.conv_proj = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / (in_channels * patch**2)))
        assert self.conv_proj.bias is not None  # Conv2d's default bias=True
        nn.init.zeros_(self.conv_proj.bias)
        self.heads = nn.Identity()
        self.out_dim = width

    @property
    def patch_embed(self) -> nn.Module:
        """The patch projection (``conv_proj``)."""
        return self.conv_proj


def _square_side(image_size: int | Sequence[int]) -> int:
    """The side of a square image size given as ``S`` or ``(S, S)``."""
    if isinstance(image_size, int):
        return image_size
    sizes = [int(s) for s in image_size]
    if len(sizes) != 2 or sizes[0] != sizes[1]:
        raise ValueError(
            f"the ViT needs square images, got image_size={tuple(sizes)}; resize the data"
        )
    return sizes[0]
