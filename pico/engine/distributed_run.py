"""Multi-process training under ``torchrun``: process group, DDP wrapper, BatchNorm sync.

``pico-train`` runs unchanged under ``torchrun --nproc_per_node=N`` (and multi-node
``--nnodes/--rdzv_*``): when ``WORLD_SIZE > 1`` the default process group is built from
torchrun's environment (``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ...), with NCCL on
CUDA (one GPU per process, ``cuda:LOCAL_RANK``) and gloo on CPU. The small helpers of
:mod:`pico.core.distributed` then work across processes.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from pico.core.distributed import all_reduce_sum, get_world_size, is_distributed
from pico.engine.method import Batch, Method, StepInfo


def env_world_size() -> int:
    """Process count announced by the launcher (``WORLD_SIZE``), 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK``), 0 without a launcher."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str) -> torch.device:
    """The training device for ``trainer.device``.

    ``"auto"`` picks CUDA when present, else CPU; anything else is passed to torch.
    Under a multi-process launch ``"auto"`` and ``"cuda"`` mean this process's GPU,
    ``cuda:LOCAL_RANK`` (``cuda:0`` where a launcher shows each process one GPU); naming
    one GPU (``cuda:N``) there is an error, since every process would take the same one.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if env_world_size() > 1 and device.type == "cuda":
        if device.index is not None:
            raise ValueError(
                f"trainer.device={name} names one GPU, but under torchrun each process uses "
                "its own (cuda:LOCAL_RANK); set trainer.device=cuda or auto"
            )
        return torch.device("cuda", local_rank() if torch.cuda.device_count() > 1 else 0)
    return device


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[None]:
    """Initialise the default process group for the block when ``WORLD_SIZE > 1``.

    NCCL when the device resolves to CUDA (after ``torch.cuda.set_device``), gloo
    otherwise; the group is destroyed afterwards. Nothing happens in a single process
    or when a group already exists (its owner keeps it).
    """
    if env_world_size() == 1 or is_distributed():
        yield
        return
    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        eager = "device_id" in inspect.signature(dist.init_process_group).parameters
        device_id: dict[str, Any] = {"device_id": device} if eager else {}
        dist.init_process_group("nccl", **device_id)
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


class StepModule(nn.Module):
    """The method's training step as a module forward, so DDP can wrap it."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        """``method.training_step(batch, info)``."""
        return self.method.training_step(batch, info)


def wrap_training_step(method: Method, device: torch.device) -> nn.Module:
    """A module whose forward runs ``method.training_step``; DDP-wrapped across processes.

    DDP averages the gradients of every trainable parameter over the ranks during
    ``backward``, which with equal per-rank batches is the gradient of the loss averaged
    over the global batch. Buffers are not broadcast before each forward: queues, banks
    and the confidence matrix are kept equal by the methods' own gathers, and BN
    statistics by :func:`average_bn_statistics_` (torch 2.14 renamed
    ``broadcast_buffers=False`` to ``forward_sync_buffers=False``, which still copies
    rank 0's buffers once at the start; they are equal on every rank then anyway).
    """
    step = StepModule(method)
    if get_world_size() == 1:
        return step
    device_ids = [device.index] if device.type == "cuda" else None
    no_buffer_sync: dict[str, Any]
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        no_buffer_sync = {"forward_sync_buffers": False}
    else:
        no_buffer_sync = {"broadcast_buffers": False}
    return DistributedDataParallel(step, device_ids=device_ids, **no_buffer_sync)


def convert_sync_bn(method: Method, device: torch.device) -> Method:
    """Every BatchNorm of ``method`` as ``SyncBatchNorm`` (statistics over the global batch).

    Only across processes (a single process already normalises over the whole batch).
    torch's SyncBatchNorm runs only on GPUs, so on CPU (gloo) this is a ``ValueError``.
    """
    if get_world_size() == 1:
        return method
    if device.type != "cuda":
        raise ValueError(
            "trainer.sync_bn=true needs CUDA: torch's SyncBatchNorm does not run on CPU "
            "(gloo); set trainer.sync_bn=false for CPU processes"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(method)


@torch.no_grad()
def average_bn_statistics_(module: nn.Module) -> None:
    """Average the BatchNorm running means and variances of ``module`` over the ranks.

    Without SyncBatchNorm each process tracks statistics of its own rows; averaging them
    (at epoch ends and before checkpoints) gives every rank the same evaluation model and
    makes the checkpoint independent of which rank writes it. No-op in one process.
    """
    world = get_world_size()
    if world == 1:
        return
    stats = [
        buf
        for m in module.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats
        for buf in (m.running_mean, m.running_var)
        if buf is not None
    ]
    if not stats:
        return
    flat = all_reduce_sum(torch.cat([s.reshape(-1).float() for s in stats]))
    flat /= world
    offset = 0
    for s in stats:
        s.copy_(flat[offset : offset + s.numel()].view_as(s))
        offset += s.numel()
