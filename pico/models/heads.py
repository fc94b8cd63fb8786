"""Projection and prediction heads (MLPs on top of a backbone)."""

from __future__ import annotations

from torch import nn


def mlp_head(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    batch_norm: bool = False,
    last_batch_norm: bool = False,
) -> nn.Sequential:
    """MLP head: ``num_layers`` linear layers with (BN-)ReLU between them.

    ``num_layers=1`` is a single Linear(in_dim, out_dim). Hidden layers have width
    ``hidden_dim``; ``batch_norm`` adds BN after every hidden linear layer and
    ``last_batch_norm`` adds an affine-free BN after the output layer (SimCLR v2 /
    MoCo v3 style). Typical uses: PiCO 512-512-128 without BN, SimCLR / MoCo v2 two
    layers, BYOL projector and predictor with hidden 4096 and BN.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1, got {num_layers}")
    if min(in_dim, hidden_dim, out_dim) < 1:
        raise ValueError(
            f"head sizes must be positive, got in_dim={in_dim}, hidden_dim={hidden_dim}, "
            f"out_dim={out_dim}"
        )
    layers: list[nn.Module] = []
    prev = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(prev, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        prev = hidden_dim
    layers.append(nn.Linear(prev, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
