"""Self-supervised baselines on the same engine as PiCO: MoCo v2, MoCo v3, SimCLR, SimCLR v2,
BYOL, SimSiam, SwAV, DINO, instance discrimination, InvaSpread, Deep InfoMax, CMC and CPC."""

from __future__ import annotations

from pico.baselines.byol import BYOL, byol_loss
from pico.baselines.cmc import CMC, cmc_loss
from pico.baselines.cpc import CPC, GRUContext, MaskedConvContext, RowCausalConv2d, patch_grid
from pico.baselines.dim import DIM
from pico.baselines.dino import DINO, DINOHead, dino_loss
from pico.baselines.instdisc import InstDisc
from pico.baselines.invaspread import InvaSpread
from pico.baselines.moco import MoCo
from pico.baselines.mocov3 import MoCoV3, mocov3_loss
from pico.baselines.simclr import SimCLR, SimCLRv2
from pico.baselines.simsiam import SimSiam, negative_cosine
from pico.baselines.swav import SwAV, sinkhorn_knopp, swapped_prediction_loss

__all__ = [
    "BYOL",
    "CMC",
    "CPC",
    "DIM",
    "DINO",
    "DINOHead",
    "GRUContext",
    "InstDisc",
    "InvaSpread",
    "MaskedConvContext",
    "MoCo",
    "MoCoV3",
    "RowCausalConv2d",
    "SimCLR",
    "SimCLRv2",
    "SimSiam",
    "SwAV",
    "byol_loss",
    "cmc_loss",
    "dino_loss",
    "mocov3_loss",
    "negative_cosine",
    "patch_grid",
    "sinkhorn_knopp",
    "swapped_prediction_loss",
]
