"""The feature width of any backbone, for the heads and classifiers built on top of it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def feature_dim(backbone: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """Width ``D`` of the ``(B, D)`` features ``backbone`` returns.

    Its integer ``out_dim`` attribute when it has one (pico's and timm backbones set it);
    otherwise measured with one forward pass of two zero inputs of ``input_shape`` (one
    example's shape: ``(C, H, W)`` or ``(D,)``), in evaluation mode and without gradients,
    so no BatchNorm statistics move. A plain ``torchvision.models.resnet18()`` with
    ``fc = nn.Identity()`` gives 512.
    """
    dim = getattr(backbone, "out_dim", None)
    if isinstance(dim, int):
        return dim
    name = type(backbone).__name__
    if input_shape is None:
        raise ValueError(
            f"cannot tell the feature width of backbone {name}: it has no integer attribute "
            "'out_dim' and no input shape was given to measure it; set backbone.out_dim = D "
            "(its feature width) or pass TaskInfo(..., input_shape=(C, H, W))"
        )
    return measured_feature_dim(backbone, input_shape)


def measured_feature_dim(backbone: nn.Module, input_shape: Sequence[int]) -> int:
    """Width ``D`` of the ``(B, D)`` features ``backbone`` returns for inputs of
    ``input_shape`` (one example's shape), always measured with one forward pass of two zero
    inputs, whatever its ``out_dim`` says: also the check that the backbone takes inputs of
    that shape (CPC's patches, smaller than the images the backbone was built for). The pass
    runs in evaluation mode and without gradients, so no BatchNorm statistics move; a
    failing pass or an output that is not ``(batch, features)`` is a ``ValueError``.
    """
    name = type(backbone).__name__
    floats = (t for t in (*backbone.parameters(), *backbone.buffers()) if t.is_floating_point())
    like = next(floats, torch.zeros(()))
    x = torch.zeros(2, *input_shape, device=like.device, dtype=like.dtype)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(x)
    except Exception as err:
        raise ValueError(
            f"cannot measure the feature width of backbone {name}: a forward pass of zeros of "
            f"shape {tuple(x.shape)} failed ({type(err).__name__}: {err}); check that "
            f"input_shape={tuple(input_shape)} is one example's shape, or set "
            "backbone.out_dim = D"
        ) from err
    finally:
        backbone.train(was_training)
    if not isinstance(out, Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"backbone {name} must return (batch, features) tensors, got {shape}; end it with "
            "pooling and a flatten, and drop its classifier (e.g. resnet.fc = nn.Identity())"
        )
    return int(out.shape[1])
