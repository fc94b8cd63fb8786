"""Backbones from timm (``model=timm model.name=NAME``), built offline.

timm is an optional extra (``pip install 'pico-pll[timm]'``). Nothing is downloaded: a model
is randomly initialised, or starts from a local weights file given as ``weights``.
"""

from __future__ import annotations

import difflib
import importlib
import pickle
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

INSTALL_HINT = "pip install 'pico-pll[timm]' (or pip install timm)"


def import_timm() -> ModuleType:
    """The timm module, or an ImportError that says how to install it."""
    try:
        return importlib.import_module("timm")
    except ImportError as err:
        raise ImportError(
            f"model=timm needs the timm package, which is not installed; {INSTALL_HINT}, "
            "or pick a built-in backbone (model=resnet18, model=resnet18_imagenet)"
        ) from err


def _check_name(timm: ModuleType, name: str | None) -> str:
    """``name``, refusing a missing name or one timm does not know (suggesting the closest
    ones)."""
    if not name:
        raise ValueError(
            "model=timm needs a model name: pass model.name=NAME, e.g. model.name=resnet18"
        )
    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"close matches: {close}; " if close else ""
    raise ValueError(
        f"model.name={name!r} is not a timm model; {hint}list them with "
        "python -c \"import timm; print(timm.list_models('resnet*'))\""
    )


def timm_backbone(
    name: str | None, in_channels: int = 3, weights: str | None = None, **kwargs: Any
) -> nn.Module:
    """timm model ``name`` without its classifier: (B, in_channels, H, W) -> (B, out_dim).

    ``weights`` is a local file (a state dict saved with ``torch.save(model.state_dict())``,
    a training checkpoint holding one, or the hub's ``.safetensors``) for the same
    architecture; timm drops its classifier and adapts the first convolution when
    ``in_channels`` is not 3. ``None`` initialises randomly. ``kwargs`` go to
    ``timm.create_model`` (e.g. ``drop_path_rate``). ``out_dim`` is the pooled feature size.
    """
    timm = import_timm()
    name = _check_name(timm, name)
    options: dict[str, Any] = {"num_classes": 0, "in_chans": in_channels, **kwargs}
    if weights is None:
        net = timm.create_model(name, pretrained=False, **options)
    else:
        net = _with_local_weights(timm, name, Path(weights).expanduser(), options)
    net.out_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return net


def _with_local_weights(
    timm: ModuleType, name: str, path: Path, options: dict[str, Any]
) -> nn.Module:
    """Build ``name`` from the weights in ``path`` through timm's own file loader."""
    save = (
        f"save them where the model hub is reachable with torch.save(timm.create_model("
        f"{name!r}, pretrained=True).state_dict(), FILE)"
    )
    if not path.is_file():
        raise ValueError(
            f"model.weights={path} does not exist; {save}, or pass model.weights=null "
            "for random initialisation"
        )
    # source '' with a file: timm reads the file and never asks the hub
    overlay = {"file": str(path), "source": ""}
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **options)
    except (RuntimeError, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()
        raise ValueError(
            f"model.weights={path} does not fit timm model {name!r} "
            f"({' '.join(first[:3])[:400]}); pass weights of the same architecture: {save}"
        ) from err
