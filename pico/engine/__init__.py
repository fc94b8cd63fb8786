"""The training engine: the method protocol (:class:`Method`, :class:`Batch`,
:class:`StepInfo`, :class:`TaskInfo`), the :class:`Trainer` and its callbacks, the loader,
optimizers and checkpoints.

Only the protocol loads with the package; the trainer and its parts (Hydra, OmegaConf,
TensorBoard) load on first use, so a method module imports without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pico._lazy import lazy_exports
from pico.engine.method import Batch, Method, StepInfo, TaskInfo, constructor_defaults

if TYPE_CHECKING:
    from pico.engine.callbacks import BestCheckpoint, Callback, MetricsFile
    from pico.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from pico.engine.distributed_run import resolve_device
    from pico.engine.loader import TensorLoader
    from pico.engine.optim import build_optimizer, warmup_cosine
    from pico.engine.trainer import NonFiniteLossError, Trainer
    from pico.engine.trainer_config import TrainerConfig

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BestCheckpoint": "pico.engine.callbacks",
        "Callback": "pico.engine.callbacks",
        "MetricsFile": "pico.engine.callbacks",
        "CheckpointError": "pico.engine.checkpoint",
        "load_checkpoint": "pico.engine.checkpoint",
        "save_checkpoint": "pico.engine.checkpoint",
        "resolve_device": "pico.engine.distributed_run",
        "TensorLoader": "pico.engine.loader",
        "build_optimizer": "pico.engine.optim",
        "warmup_cosine": "pico.engine.optim",
        "NonFiniteLossError": "pico.engine.trainer",
        "Trainer": "pico.engine.trainer",
        "TrainerConfig": "pico.engine.trainer_config",
    },
)

__all__ = [
    "Batch",
    "BestCheckpoint",
    "Callback",
    "CheckpointError",
    "Method",
    "MetricsFile",
    "NonFiniteLossError",
    "StepInfo",
    "TaskInfo",
    "TensorLoader",
    "Trainer",
    "TrainerConfig",
    "build_optimizer",
    "constructor_defaults",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "warmup_cosine",
]
