"""Self-supervised baselines on the same engine as PiCO: MoCo v2, SimCLR, BYOL and
instance discrimination."""

from __future__ import annotations

from baselines.byol import BYOL, byol_loss
from baselines.instdisc import InstDisc
from baselines.invaspread import InvaSpread
from baselines.moco import MoCo
from baselines.simclr import SimCLR

__all__ = ["BYOL", "InstDisc", "InvaSpread", "MoCo", "SimCLR", "byol_loss"]
