"""Clean stops on SIGINT and SIGTERM: the training loop finishes its step, saves, and ends."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(Exception):
    """Training stopped on a signal after saving a checkpoint at ``epoch`` (1-based, the
    one in progress) and global ``step``."""

    def __init__(self, signum: int, epoch: int, step: int, run_dir: Path) -> None:
        self.signum, self.epoch, self.step, self.run_dir = signum, epoch, step, run_dir
        super().__init__(
            f"stopped at epoch {epoch} step {step}; continue with: "
            f"pico-train run_dir={run_dir} resume=auto"
        )

    @property
    def exit_code(self) -> int:
        """The shell's status for a process ended by this signal (130, 143)."""
        return 128 + self.signum


class StopRequest:
    """The first stop signal received inside :meth:`catching`, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum
        log.warning("%s received: stopping after this step", signal.Signals(signum).name)

    @contextlib.contextmanager
    def catching(self) -> Iterator[StopRequest]:
        """Record SIGINT and SIGTERM instead of dying on them, for the block (main thread
        only; elsewhere signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
