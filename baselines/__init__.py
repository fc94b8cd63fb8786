"""Self-supervised baselines on the same engine as PiCO: MoCo v2, MoCo v3, SimCLR, BYOL,
SimSiam and instance discrimination."""

from __future__ import annotations

from baselines.byol import BYOL, byol_loss
from baselines.instdisc import InstDisc
from baselines.invaspread import InvaSpread
from baselines.moco import MoCo
from baselines.mocov3 import MoCoV3, mocov3_loss
from baselines.simclr import SimCLR
from baselines.simsiam import SimSiam, negative_cosine

__all__ = [
    "BYOL",
    "InstDisc",
    "InvaSpread",
    "MoCo",
    "MoCoV3",
    "SimCLR",
    "SimSiam",
    "byol_loss",
    "mocov3_loss",
    "negative_cosine",
]
