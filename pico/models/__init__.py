"""Backbones (CIFAR-stem ResNets, a small ConvNet, an MLP for tabular data) and heads."""

from __future__ import annotations

from pico.models.convnet import SmallConvNet
from pico.models.factory import build_backbone
from pico.models.heads import mlp_head
from pico.models.mlp import MLPEncoder
from pico.models.resnet import cifar_resnet, imagenet_resnet

__all__ = [
    "MLPEncoder",
    "SmallConvNet",
    "build_backbone",
    "cifar_resnet",
    "imagenet_resnet",
    "mlp_head",
]
