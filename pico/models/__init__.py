"""Backbones (CIFAR-stem ResNets, a small ConvNet, small-image ViTs, an MLP for tabular
data), heads, and :func:`feature_dim`, the feature width of any backbone
(:func:`measured_feature_dim` measures it on inputs of a given shape).

:func:`build_backbone` (a backbone from a Hydra ``model`` config), the ResNets, the ViT and
:func:`timm_backbone` load on first use, so importing this package needs neither Hydra,
torchvision nor timm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pico._lazy import lazy_exports
from pico.models.convnet import SmallConvNet
from pico.models.dims import feature_dim, measured_feature_dim
from pico.models.heads import mlp_head
from pico.models.mlp import MLPEncoder
from pico.models.transfer import (
    ProjectedBackbone,
    backbone_state,
    head_layers,
    load_backbone_,
    projector_state,
)

if TYPE_CHECKING:
    from pico.models.factory import build_backbone, check_pretrained
    from pico.models.resnet import cifar_resnet, imagenet_resnet
    from pico.models.timm_backbone import timm_backbone
    from pico.models.vit import VisionTransformer

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "build_backbone": "pico.models.factory",
        "check_pretrained": "pico.models.factory",
        "cifar_resnet": "pico.models.resnet",
        "imagenet_resnet": "pico.models.resnet",
        "timm_backbone": "pico.models.timm_backbone",
        "VisionTransformer": "pico.models.vit",
    },
)

__all__ = [
    "MLPEncoder",
    "ProjectedBackbone",
    "SmallConvNet",
    "VisionTransformer",
    "backbone_state",
    "build_backbone",
    "check_pretrained",
    "cifar_resnet",
    "feature_dim",
    "head_layers",
    "imagenet_resnet",
    "load_backbone_",
    "measured_feature_dim",
    "mlp_head",
    "projector_state",
    "timm_backbone",
]
