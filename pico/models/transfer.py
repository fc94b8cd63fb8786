"""Move backbone weights between runs: from any method's checkpoint into a new backbone."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

BACKBONE_PREFIX = "backbone."


def backbone_state(path: str | Path) -> dict[str, Tensor]:
    """Backbone weights from a pico checkpoint (any method), a pico-export file or a plain
    state-dict file.

    In a checkpoint, the online backbone is the method's ``backbone`` submodule; its
    entries are returned without the ``backbone.`` prefix, ready for a torchvision-style
    model of the same architecture (the classifier ``fc`` is not part of it).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; pass a checkpoint (.pt) written by pico-train")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") == "pico-export" and isinstance(state.get("backbone"), dict):
        return state["backbone"]  # a pico-export state dict (parts=all)
    if isinstance(state.get("method"), dict):
        state = {
            key.removeprefix(BACKBONE_PREFIX): value
            for key, value in state["method"].items()
            if key.startswith(BACKBONE_PREFIX)
        }
        if not state:
            raise ValueError(f"{path} holds no 'backbone.*' weights; it is not a pico checkpoint")
    return state


def load_backbone_(model: nn.Module, path: str | Path) -> None:
    """Load the backbone weights of ``path`` into ``model``; every tensor must fit exactly."""
    state = backbone_state(path)
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    mismatched = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in sorted(own.keys() & state.keys())
        if state[key].shape != own[key].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"model.init_from={path} does not fit this backbone: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, shape mismatch {mismatched[:3]}; use the same model "
            "config (architecture, widths, input channels) as the run that wrote it"
        )
    model.load_state_dict(state)
