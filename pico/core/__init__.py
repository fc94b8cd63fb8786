"""The MoCo core shared by PiCO and the baselines: EMA, feature queue, losses, gathers."""

from __future__ import annotations

from pico.core.distributed import (
    all_reduce_sum,
    broadcast_object,
    gather_no_grad,
    gather_with_grad,
    get_rank,
    get_world_size,
    is_distributed,
    is_main_process,
)
from pico.core.ema import cosine_momentum, ema_update_, momentum_copy
from pico.core.losses import info_nce, nt_xent, sup_con, sup_con_from_labels
from pico.core.queue import FeatureQueue, queue_size_for

__all__ = [
    "FeatureQueue",
    "all_reduce_sum",
    "broadcast_object",
    "cosine_momentum",
    "ema_update_",
    "gather_no_grad",
    "gather_with_grad",
    "get_rank",
    "get_world_size",
    "info_nce",
    "is_distributed",
    "is_main_process",
    "momentum_copy",
    "nt_xent",
    "queue_size_for",
    "sup_con",
    "sup_con_from_labels",
]
