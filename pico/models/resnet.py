"""ResNets with the CIFAR stem (3x3 stride-1 first convolution, no max-pool)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models import resnet18, resnet34, resnet50

_RESNETS: dict[int, Callable[..., nn.Module]] = {18: resnet18, 34: resnet34, 50: resnet50}


def cifar_resnet(
    depth: int = 18, in_channels: int = 3, zero_init_residual: bool = False
) -> nn.Module:
    """Randomly initialised torchvision ResNet-``depth`` adapted to small images.

    The 7x7 stride-2 stem becomes a 3x3 stride-1 convolution, the max-pool and the
    classifier are removed, so the module maps (B, in_channels, H, W) to pooled
    features (B, out_dim) with ``out_dim`` 512 (depth 18/34) or 2048 (depth 50).
    Works from 8x8 inputs upwards (the global average pool absorbs any size).
    """
    if depth not in _RESNETS:
        raise ValueError(
            f"cifar_resnet supports depth 18, 34 or 50, got {depth}; "
            "set model.depth to one of these"
        )
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")
    net = _RESNETS[depth](weights=None, zero_init_residual=zero_init_residual)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    net.out_dim = out_dim
    return net
