"""The run fingerprint: what defines a run, stored in every checkpoint and compared on resume.

A resumed run continues the checkpoint's per-row state (confidence matrices, candidate
buffers, queues) on the new run's data; if the data, the split, the candidates, the
method or the model differ, that pairing is silently wrong. The fingerprint names each
defining part; a resume whose parts differ is refused unless ``allow_changes`` lists
them. Keys outside the fingerprint (logging, evaluation, checkpoint cadence, device,
threads) may always change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pico.data.bundle import DataBundle

#: parts whose change ``allow_changes`` may admit (the data stay the same rows)
ADMISSIBLE = (
    "seed",
    "data.source",
    "data.split",
    "data.candidates",
    "trainer.epochs",
    "trainer.steps",
    "trainer.max_steps",
    "trainer.batch_size",
    "trainer.optimizer",
)
#: parts that can never change on resume: the checkpoint's state would not fit
FIXED = ("method", "model", "train_candidates", "splits")
KEYS = (*ADMISSIBLE, *FIXED)
#: ``allow_changes`` entry that resumes a checkpoint written before fingerprints, unchecked
UNCHECKED = "fingerprint"


def run_fingerprint(cfg: DictConfig, bundle: DataBundle) -> dict[str, str]:
    """Each part of ``KEYS`` as a short string: config parts as canonical JSON of their
    resolved values, data parts as digests of the tensors."""
    data, trainer = cfg.data, cfg.trainer
    parts: dict[str, Any] = {
        "seed": cfg.seed,
        "data.source": data.get("source"),
        "data.split": {"val_fraction": data.get("val_fraction"), "seed": data.get("seed")},
        "data.candidates": data.get("candidates"),
        "trainer.epochs": trainer.get("epochs"),
        "trainer.steps": trainer.get("steps"),
        "trainer.max_steps": trainer.get("max_steps"),
        "trainer.batch_size": trainer.get("batch_size"),
        "trainer.optimizer": trainer.get("optimizer"),
        "method": cfg.method,
        "model": _model_part(cfg.model),
    }
    out = {key: _canonical(value) for key, value in parts.items()}
    out["train_candidates"] = _digest([bundle.train.candidates])
    splits = (bundle.train, bundle.val, bundle.test)
    out["splits"] = _digest([t for split in splits for t in (split.inputs, split.targets)])
    return out


def _model_part(model: DictConfig) -> Any:
    """The ``model`` config, ``init_head_layers`` left out at its default 0, so a
    checkpoint written before that key existed still resumes."""
    plain = OmegaConf.to_container(model, resolve=True)
    if isinstance(plain, dict) and plain.get("init_head_layers", 0) == 0:
        plain.pop("init_head_layers", None)
    return plain


def _canonical(value: Any) -> str:
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    return json.dumps(value, sort_keys=True, default=str)


def _digest(tensors: Iterable[torch.Tensor | None]) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none")
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().data)  # .data: the bytes, as a memoryview
    return digest.hexdigest()


def check_allow_changes(allowed: Iterable[str]) -> list[str]:
    """The ``allow_changes`` list, checked: every name must be an admissible part."""
    names = [str(name) for name in allowed or []]
    bad = [name for name in names if name not in (*ADMISSIBLE, UNCHECKED)]
    if bad:
        why = "can never change on resume" if set(bad) <= set(FIXED) else "are not run parts"
        raise ValueError(
            f"allow_changes={bad} {why}; allow_changes takes some of {list(ADMISSIBLE)} "
            f"or {UNCHECKED} (a new method, model or data needs a new run_dir)"
        )
    return names


def check_resume(
    path: Path, stored: Mapping[str, str] | None, current: Mapping[str, str], allowed: list[str]
) -> None:
    """Refuse (``ValueError``) to resume from ``path`` when the run it was written by
    differs from this one in a part not listed in ``allowed``."""
    if stored is None:
        if UNCHECKED in allowed:
            return
        raise ValueError(
            f"cannot resume from {path}: it holds no run fingerprint (written by an older "
            f"pico), so this run cannot be checked against it; pass allow_changes=[{UNCHECKED}] "
            "to resume it unchecked, with the config it was written with"
        )
    differ = [key for key in KEYS if stored.get(key) != current.get(key)]
    refused = [key for key in differ if key not in allowed]
    if not refused:
        return
    fixed = [key for key in refused if key in FIXED]
    hint = (
        f"{fixed} cannot change on resume: start a new run_dir"
        if fixed
        else f"if the change is intended, add allow_changes=[{','.join(refused)}]"
    )
    raise ValueError(
        f"cannot resume from {path}: this run differs from the checkpoint's in {refused} "
        f"(its config is in the checkpoint and in run_dir/config.yaml); {hint}"
    )
