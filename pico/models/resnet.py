"""ResNets: the CIFAR stem (3x3 stride-1 first convolution, no max-pool) and the ImageNet one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

_RESNETS: dict[int, Callable[..., nn.Module]] = {18: resnet18, 34: resnet34, 50: resnet50}
_BLOCKS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


def _set_width(net: ResNet, depth: int, width: int, zero_init_residual: bool) -> None:
    """Rebuild the stages of ``net`` with ``width, 2w, 4w, 8w`` channels (torchvision's
    layout and initialisation; ``width`` 64 is the standard network)."""
    block, counts = _BLOCKS[depth]
    net.inplanes = width
    net.bn1 = nn.BatchNorm2d(width)
    for stage, count in enumerate(counts):
        stride = 1 if stage == 0 else 2
        setattr(net, f"layer{stage + 1}", net._make_layer(block, width << stage, count, stride))
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in net.modules():
            last = getattr(module, "bn3" if depth == 50 else "bn2", None)
            if isinstance(module, BasicBlock | Bottleneck) and last is not None:
                nn.init.zeros_(last.weight)
    net.fc = nn.Linear(8 * width * block.expansion, 1)


def cifar_resnet(
    depth: int = 18, in_channels: int = 3, zero_init_residual: bool = False, width: int = 64
) -> nn.Module:
    """Randomly initialised torchvision ResNet-``depth`` adapted to small images.

    The 7x7 stride-2 stem becomes a 3x3 stride-1 convolution, the max-pool and the
    classifier are removed, so the module maps (B, in_channels, H, W) to pooled
    features (B, out_dim) with ``out_dim`` 512 (depth 18/34) or 2048 (depth 50).
    Works from 8x8 inputs upwards (the global average pool absorbs any size).
    ``width`` sets the first stage's channels (64 standard; the four stages have
    ``width·(1, 2, 4, 8)``): a narrow network for CPU budgets, e.g. 16, has about 1/16
    of the compute and ``out_dim`` scaled by ``width / 64``.
    """
    if depth not in _RESNETS:
        raise ValueError(
            f"cifar_resnet supports depth 18, 34 or 50, got {depth}; "
            "set model.depth to one of these"
        )
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")
    if width < 1:
        raise ValueError(f"model.width={width} must be a positive number of channels")
    net = _RESNETS[depth](weights=None, zero_init_residual=zero_init_residual)
    if width != 64:
        _set_width(net, depth, width, zero_init_residual)
    net.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    assert isinstance(net.fc, nn.Linear)  # torchvision's classifier, replaced below
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    # nn.Module.__setattr__ is annotated for tensors and modules; it stores any attribute
    net.out_dim = out_dim  # type: ignore[assignment]
    return net


def imagenet_resnet(depth: int = 18, in_channels: int = 3, weights: str | None = None) -> nn.Module:
    """torchvision ResNet-``depth`` with its ImageNet stem, for larger images (e.g. CUB-200).

    ``weights`` is a local file holding a torchvision ResNet state dict (for example the
    ImageNet weights saved once with ``torch.save(resnet18(weights="DEFAULT").state_dict())``);
    ``None`` initialises randomly. The classifier is removed; ``out_dim`` is set.
    """
    if depth not in _RESNETS:
        raise ValueError(
            f"imagenet_resnet supports depth 18, 34 or 50, got {depth}; "
            "set model.depth to one of these"
        )
    net = _RESNETS[depth](weights=None)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ValueError(
                f"model.weights={weights} does not exist; pass a local torchvision ResNet "
                "state dict file or model.weights=null for random initialisation"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not match ResNet-{depth}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}; pass weights saved from the same depth"
            )
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    assert isinstance(net.fc, nn.Linear)  # torchvision's classifier, replaced below
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    # nn.Module.__setattr__ is annotated for tensors and modules; it stores any attribute
    net.out_dim = out_dim  # type: ignore[assignment]
    return net
