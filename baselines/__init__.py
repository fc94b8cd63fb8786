"""Self-supervised baselines on the same engine as PiCO: MoCo v2, MoCo v3, SimCLR, BYOL,
SimSiam, SwAV, DINO and instance discrimination."""

from __future__ import annotations

from baselines.byol import BYOL, byol_loss
from baselines.dim import DIM
from baselines.dino import DINO, DINOHead, dino_loss
from baselines.instdisc import InstDisc
from baselines.invaspread import InvaSpread
from baselines.moco import MoCo
from baselines.mocov3 import MoCoV3, mocov3_loss
from baselines.simclr import SimCLR
from baselines.simsiam import SimSiam, negative_cosine
from baselines.swav import SwAV, sinkhorn_knopp, swapped_prediction_loss

__all__ = [
    "BYOL",
    "DIM",
    "DINO",
    "DINOHead",
    "InstDisc",
    "InvaSpread",
    "MoCo",
    "MoCoV3",
    "SimCLR",
    "SimSiam",
    "SwAV",
    "byol_loss",
    "dino_loss",
    "mocov3_loss",
    "negative_cosine",
    "sinkhorn_knopp",
    "swapped_prediction_loss",
]
