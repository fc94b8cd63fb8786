"""The MoCo core shared by PiCO and the baselines: EMA, feature queue, losses, gathers.

None of it needs Hydra: ``from pico.core import FeatureQueue, info_nce, momentum_copy``
in any training loop; :class:`MomentumEncoder` is MoCo's query / key encoder pair with its
queue, mixed into a method.
"""

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
from pico.core.ema import (
    MomentumTensors,
    cosine_momentum,
    ema_step_,
    ema_update_,
    momentum_copy,
    momentum_tensors,
    run_momentum,
)
from pico.core.losses import (
    cpc_loss,
    info_nce,
    invaspread_loss,
    jsd_mi_loss,
    margin_contrastive_loss,
    nt_xent,
    sup_con,
    sup_con_from_labels,
    triplet_loss,
    triplet_loss_from_labels,
)
from pico.core.momentum_encoder import MomentumEncoder
from pico.core.multicrop import encode_views, multicrop_views
from pico.core.nce import bank_logits, estimate_log_z, nce_loss
from pico.core.queue import FeatureQueue, queue_size_for

__all__ = [
    "FeatureQueue",
    "MomentumEncoder",
    "MomentumTensors",
    "all_reduce_sum",
    "bank_logits",
    "broadcast_object",
    "cosine_momentum",
    "cpc_loss",
    "ema_step_",
    "ema_update_",
    "encode_views",
    "estimate_log_z",
    "gather_no_grad",
    "gather_with_grad",
    "get_rank",
    "get_world_size",
    "info_nce",
    "invaspread_loss",
    "is_distributed",
    "is_main_process",
    "jsd_mi_loss",
    "margin_contrastive_loss",
    "momentum_copy",
    "momentum_tensors",
    "multicrop_views",
    "nce_loss",
    "nt_xent",
    "queue_size_for",
    "run_momentum",
    "sup_con",
    "sup_con_from_labels",
    "triplet_loss",
    "triplet_loss_from_labels",
]
