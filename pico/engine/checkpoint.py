"""Checkpoints written atomically and loaded without executing pickled code."""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message names the file and the fix."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename.

    A crash at any moment leaves either the previous file or the new one, never a
    partial file under ``path``. A full disk or an unwritable folder raises
    :class:`CheckpointError`, with the previous file intact.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {err.strerror or err}; choose a writable run_dir"
        ) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(
            f"cannot write checkpoint {path}: {err.strerror or err}; free disk space or choose "
            "another run_dir (the previous checkpoint is intact)"
        ) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only).

    A missing, truncated or corrupt file, or one that carries pickled code, raises
    :class:`CheckpointError`; nothing in the file is ever executed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing .pt file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain "
            f"containers (possibly code) and is not loaded ({_first_line(err)}); "
            "only load checkpoints written by pico-train"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({_first_line(err)}); "
            "resume from an earlier checkpoint (resume=auto picks the newest good one)"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def newest_loadable(
    candidates: list[Path], map_location: str | torch.device = "cpu"
) -> Path | None:
    """The first file of ``candidates`` (newest first) that loads; bad ones are logged."""
    for path in candidates:
        try:
            load_checkpoint(path, map_location)
        except CheckpointError as err:
            log.warning("skipping %s", err)
            continue
        return path
    return None
