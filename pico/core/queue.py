"""A FIFO queue of key features with aligned extra columns (labels, indices, ...).

MoCo-style methods contrast queries against the keys of recent batches. The queue is
a ring buffer held in persistent buffers, so it moves with ``.to(device)`` and is
saved and restored exactly by ``state_dict``. It starts empty: ``valid_mask`` marks
the slots written so far, and losses must exclude the rest (never contrast against
placeholder entries).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn


class FeatureQueue(nn.Module):
    """Ring buffer of ``size`` feature rows of width ``dim`` plus 1-D extra columns.

    ``columns`` maps column names to dtypes, e.g. ``{"labels": torch.long}``; each
    becomes a buffer of shape ``(size,)`` named after the column (integer columns start
    at -1, others at 0). Buffers: ``features`` (float32), the columns, ``ptr`` (next slot
    to write) and ``filled`` (valid slots, at most ``size``).

    Enqueueing never synchronises host and device: slot indices and counters are
    computed with tensor ops from ``ptr``, only the Python batch size is read.

    Under DDP, gather the keys (and columns) of all ranks before calling
    :meth:`enqueue` (e.g. ``pico.core.distributed.gather_no_grad``), so that every rank
    holds the same queue.
    """

    _RESERVED = frozenset({"features", "ptr", "filled"})
    # buffers (register_buffer in __init__), declared for the type checker
    features: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(self, size: int, dim: int, columns: Mapping[str, torch.dtype] | None = None):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"FeatureQueue: size and dim must be >= 1, got size={size}, dim={dim}")
        self._size = int(size)
        self._dim = int(dim)
        self.register_buffer("features", torch.zeros(size, dim, dtype=torch.float32))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self._columns: tuple[str, ...] = tuple(columns or {})
        for name, dtype in (columns or {}).items():
            if not name.isidentifier() or name in self._RESERVED or hasattr(self, name):
                raise ValueError(
                    f"FeatureQueue: column name {name!r} is not an identifier or clashes with "
                    f"an attribute of the queue; pick another name (not one of "
                    f"{sorted(self._RESERVED)})"
                )
            if dtype.is_floating_point or dtype == torch.bool:
                init = torch.zeros(size, dtype=dtype)
            else:
                init = torch.full((size,), -1, dtype=dtype)
            self.register_buffer(name, init)

    @property
    def size(self) -> int:
        """Number of slots."""
        return self._size

    @property
    def dim(self) -> int:
        """Feature width."""
        return self._dim

    @property
    def column_names(self) -> tuple[str, ...]:
        """Names of the extra columns, in declaration order."""
        return self._columns

    def column(self, name: str) -> Tensor:
        """The buffer of extra column ``name``, shape ``(size,)``."""
        if name not in self._columns:
            raise ValueError(
                f"FeatureQueue: no column {name!r}; declared columns are {list(self._columns)}"
            )
        return getattr(self, name)

    def valid_mask(self) -> Tensor:
        """Bool ``(size,)`` mask of the slots that hold enqueued rows (on device, no sync)."""
        return torch.arange(self._size, device=self.filled.device) < self.filled

    def num_filled(self) -> int:
        """Number of valid slots as a Python int (synchronises; for logging and tests)."""
        return int(self.filled.item())

    @torch.no_grad()
    def enqueue(self, features: Tensor, **columns: Tensor) -> None:
        """Append a batch of rows FIFO, overwriting the oldest once the queue is full.

        ``features`` is ``(b, dim)`` (detached, cast to the buffer's dtype); every declared column
        must be given as a ``(b,)`` tensor. Any ``b`` works; when ``b > size`` only the
        last ``size`` rows are kept, as if the rows were appended one by one.
        """
        if features.ndim != 2 or features.shape[1] != self._dim:
            raise ValueError(
                f"FeatureQueue.enqueue: features must have shape (batch, {self._dim}), "
                f"got {tuple(features.shape)}"
            )
        if set(columns) != set(self._columns):
            raise ValueError(
                f"FeatureQueue.enqueue: columns given {sorted(columns)} but the queue declares "
                f"{sorted(self._columns)}; pass each declared column as a keyword argument"
            )
        batch = features.shape[0]
        for name, values in columns.items():
            if values.shape != (batch,):
                raise ValueError(
                    f"FeatureQueue.enqueue: column {name!r} must have shape ({batch},) to match "
                    f"the features, got {tuple(values.shape)}"
                )
        if batch == 0:
            return
        kept = min(batch, self._size)
        device = self.features.device
        # Slots the kept rows would occupy had all `batch` rows been written in turn.
        offsets = torch.arange(batch - kept, batch, device=device)
        slots = (self.ptr + offsets) % self._size
        rows = features[batch - kept :].detach().to(device=device, dtype=self.features.dtype)
        self.features.index_copy_(0, slots, rows)
        for name, values in columns.items():
            buf = getattr(self, name)
            buf.index_copy_(0, slots, values[batch - kept :].detach().to(device, buf.dtype))
        self.ptr.copy_((self.ptr + batch) % self._size)
        self.filled.copy_(torch.clamp(self.filled + batch, max=self._size))

    def extra_repr(self) -> str:
        return f"size={self._size}, dim={self._dim}, columns={list(self._columns)}"


def queue_size_for(requested: int, num_train: int) -> int:
    """Queue length for a training set of ``num_train`` rows: at most one key per row.

    A queue longer than the training set would hold several keys of the same example,
    which then act as negatives of its own query. The cap is logged when it applies.
    """
    if requested <= num_train:
        return requested
    logging.getLogger(__name__).info(
        "queue_size %d exceeds the %d training rows; using %d", requested, num_train, num_train
    )
    return num_train
