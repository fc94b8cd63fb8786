"""Checkpoints written atomically, checksummed, and loaded without executing pickled code."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: key of the content checksum in every checkpoint pico-train writes
CHECKSUM_KEY = "checksum"
#: glob of the temporary files :func:`save_checkpoint` writes before its rename
TMP_GLOB = ".*.tmp"


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message names the file and the fix."""


def content_checksum(state: Any) -> str:
    """BLAKE2b digest of every value in ``state`` (tensor bytes, dtypes and shapes, plain
    values and the container structure), independent of how the file was serialised."""
    digest = hashlib.blake2b(digest_size=16)
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        tensor = tensor.to_dense() if tensor.is_sparse else tensor
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        flat = tensor.contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple):
        digest.update(f"L{type(value).__name__}{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"V{type(value).__name__}:{value!r}".encode())


def with_checksum(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its :func:`content_checksum` under ``CHECKSUM_KEY`` (kept if present)."""
    if CHECKSUM_KEY in state:
        return state
    return {**state, CHECKSUM_KEY: content_checksum(state)}


def save_checkpoint(state: dict[str, Any], path: str | Path, checksum: bool = True) -> None:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename.

    With ``checksum`` the file carries a content checksum that :func:`load_checkpoint`
    verifies (plain state dicts meant for other tools are written without one). The
    state is serialised in memory first, so a full disk surfaces as the system's own
    error. A crash at any moment leaves either the previous file or the new one, never a
    partial file under ``path``. A full disk or an unwritable folder raises
    :class:`CheckpointError`, with the previous file intact.
    """
    path = Path(path)
    full = (
        f"cannot write checkpoint {path}: {{}}; free disk space or choose another run_dir "
        "(the previous checkpoint is intact)"
    )
    buffer = io.BytesIO()
    try:
        torch.save(with_checksum(state) if checksum else state, buffer)
    except OSError as err:
        raise CheckpointError(full.format(err.strerror or err)) from err
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {err.strerror or err}; choose a writable run_dir"
        ) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(full.format(err.strerror or err)) from err
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

    A missing, truncated or corrupt file, one whose content does not match its checksum,
    or one that carries pickled code, raises :class:`CheckpointError`; nothing in the
    file is ever executed. Files without a checksum (plain state dicts, older
    checkpoints) load unverified.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing .pt file")
    corrupt = (
        f"checkpoint {path} is truncated or corrupt ({{}}); resume from an earlier checkpoint "
        "(resume=auto picks the newest good one)"
    )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickling_detail(err)
        if "GLOBAL" not in detail:
            raise CheckpointError(corrupt.format(detail)) from err
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than tensors and plain "
            f"containers (possibly code) and is not loaded ({detail}); "
            "only load checkpoints written by pico-train"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(corrupt.format(_first_line(err))) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is not None and stored != content_checksum(state):
        raise CheckpointError(
            corrupt.format("its content does not match the checksum written with it")
        )
    return state


#: lines of torch's weights-only message that are advice, not the reason
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _unpickling_detail(err: BaseException) -> str:
    """The reason in torch's weights-only refusal, without its advice to turn the check off."""
    lines = [line.strip() for line in str(err).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(_TORCH_ADVICE)]
    return reasons[0] if reasons else type(err).__name__


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


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files an interrupted :func:`save_checkpoint` left in ``folder``
    (call it only while no other process writes there); returns the removed paths."""
    stale = sorted(folder.glob(TMP_GLOB)) if folder.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
