"""One run per run directory: a lock held while training, and no silent overwrite of a
finished run."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = "pico.lock"
#: what a run writes into its directory (besides config.yaml, rewritten by every run, and
#: Hydra's own .hydra/ and cli.log): its checkpoints, the loggers' outputs
#: (pico.engine.loggers), metrics.json, the figures (figures/, the t-SNE embedding.png),
#: and pico-eval's results
RUN_OUTPUTS = (
    "checkpoints",
    "tensorboard",
    "metrics.csv",
    "wandb",
    "mlruns",
    "metrics.json",
    "figures",
    "embedding.png",
    "eval.json",
)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message names the fix."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir/pico.lock`` for the block: an exclusive ``flock`` on a file holding
    this process's pid and host, removed at the end.

    The kernel drops the lock when its process dies, however it dies, so a lock file left
    by a killed run is stale, is detected as such, and is taken over. A lock held by a
    live run raises :class:`RunDirError`.
    """
    path = run_dir / LOCK_NAME
    fd = _acquire(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


def _acquire(path: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(
                f"run_dir={path.parent} is not writable ({err.strerror or err}); pass "
                "run_dir=DIR for a folder you can write to"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            owner = _read(fd)
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"cannot lock {path}: {err.strerror or err}") from err
            raise RunDirError(
                f"run_dir={path.parent} is in use by another run (pid {owner.get('pid', '?')} "
                f"on {owner.get('host', '?')}, lock file {path}); wait for it to end or "
                "choose another run_dir"
            ) from err
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed the file between our open and lock: retry
            break
        os.close(fd)
    stale = _read(fd)
    if stale:
        log.warning(
            "took over the stale lock of pid %s on %s (that run ended without releasing it)",
            stale.get("pid", "?"),
            stale.get("host", "?"),
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    return fd


def _read(fd: int) -> dict[str, object]:
    try:
        text = os.pread(fd, 4096, 0).decode()
        owner = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def finished_outputs(run_dir: Path) -> list[str]:
    """The outputs of an earlier run in ``run_dir``: checkpoint files and metrics.json."""
    found = [str(p.relative_to(run_dir)) for p in sorted((run_dir / "checkpoints").glob("*.pt"))]
    if (run_dir / "metrics.json").is_file():
        found.append("metrics.json")
    return found


def refuse_overwrite(run_dir: Path, overwrite: bool) -> None:
    """Refuse a fresh run in a directory that holds an earlier run's outputs, unless
    ``overwrite`` (they are then removed by :func:`clear_outputs` once the run starts)."""
    found = finished_outputs(run_dir)
    if found and not overwrite:
        listed = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise RunDirError(
            f"run_dir={run_dir} already holds a run ({listed}); continue it with resume=auto, "
            "replace it with overwrite=true, or choose another run_dir"
        )


def clear_outputs(run_dir: Path) -> None:
    """Remove what an earlier run wrote into ``run_dir`` (see ``RUN_OUTPUTS``)."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
