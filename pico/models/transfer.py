"""Move weights between runs: a checkpoint's backbone into a new backbone, and the first
layers of its projection head on top (SimCLR v2's fine-tuning from the middle of the
projector)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

BACKBONE_PREFIX = "backbone."
#: where a method keeps its MLP projection head, in order of preference: ``projector``
#: (SimCLR, SimCLR v2, BYOL, SimSiam, MoCo v3, SwAV), else ``head`` (MoCo, PiCO)
HEAD_PREFIXES = ("projector.", "head.")


def sub_state(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix`` (e.g. ``"backbone."``), prefix removed."""
    return {
        key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)
    }


def backbone_state(path: str | Path) -> dict[str, Tensor]:
    """Backbone weights from a pico checkpoint (any method), a pico-export file or a plain
    state-dict file.

    In a checkpoint, the online backbone is the method's ``backbone`` submodule; its
    entries are returned without the ``backbone.`` prefix, ready for a torchvision-style
    model of the same architecture (the classifier ``fc`` is not part of it).
    """
    state = _load(path)
    if state.get("format") == "pico-export" and isinstance(state.get("backbone"), dict):
        return state["backbone"]  # a pico-export state dict (parts=all)
    if isinstance(state.get("method"), dict):
        state = sub_state(state["method"], BACKBONE_PREFIX)
        if not state:
            raise ValueError(f"{path} holds no 'backbone.*' weights; it is not a pico checkpoint")
    return state


def _load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; pass a checkpoint (.pt) written by pico-train")
    return torch.load(path, map_location="cpu", weights_only=True)


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


def projector_state(path: str | Path) -> dict[str, Tensor]:
    """The MLP projection head of a pico-train checkpoint, keys without its prefix
    (``0.weight``, ``1.running_mean``, ...): the method's ``projector``, or its ``head``
    where that is an MLP (:data:`HEAD_PREFIXES`)."""
    state = _load(path)
    method = state.get("method")
    if not isinstance(method, dict):
        raise ValueError(
            f"model.init_head_layers keeps layers of the projector of model.init_from, but "
            f"{path} holds no method state (a backbone-only file has no projector); pass a "
            "checkpoint written by pico-train, e.g. of method=simclr_v2"
        )
    for prefix in HEAD_PREFIXES:
        head = sub_state(method, prefix)
        if "0.weight" in head and head["0.weight"].ndim == 2:
            return head
    parts = sorted({key.split(".")[0] for key in method})
    raise ValueError(
        f"model.init_from={path} has no MLP projector (its method holds {parts}); "
        "model.init_head_layers keeps the first layers of a projector such as SimCLR v2's "
        "(method=simclr_v2, simclr, byol, moco, ...): pretrain with one, or set "
        "model.init_head_layers=0"
    )


def _is_linear(entry: Mapping[str, Tensor]) -> bool:
    weight = entry.get("weight")
    return weight is not None and weight.ndim == 2 and "running_mean" not in entry


def head_layers(
    state: Mapping[str, Tensor], count: int, source: str, output_layer: bool = True
) -> nn.Sequential:
    """The first ``count`` hidden layers of an MLP head from its state dict (the layout of
    :func:`~pico.models.mlp_head`: ``nn.Sequential`` entries ``0``, ``1``, ...), with its
    weights: each a Linear, the BatchNorm1d after it where there is one, and the ReLU.

    ``output_layer``: the last Linear of ``state`` is the head's output (a projector as
    pretrained), which is never kept, so at most the layers before it are; without it
    (the kept layers of a trained backbone) every Linear is a hidden layer. ``source``
    names the head in errors."""
    entries: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        index, _, name = key.partition(".")
        if not index.isdigit():
            raise ValueError(f"{source} is not an MLP head (nn.Sequential): it has an entry {key}")
        entries.setdefault(int(index), {})[name] = value
    hidden = sum(_is_linear(entry) for entry in entries.values()) - int(output_layer)
    if count > hidden:
        raise ValueError(
            f"model.init_head_layers={count}, but {source} has {max(hidden, 0)} hidden "
            f"layer(s) (its output layer is not kept); keep at most {max(hidden, 0)}"
        )
    modules: list[nn.Module] = []
    position = 0
    for _ in range(count):
        entry = entries.get(position, {})
        if not _is_linear(entry):
            raise ValueError(f"{source} is not an MLP head: its entry {position} is not a Linear")
        width = entry["weight"].shape[0]
        modules.append(nn.Linear(entry["weight"].shape[1], width, bias="bias" in entry))
        position += 1
        norm = entries.get(position, {})
        if "running_mean" in norm:
            modules.append(nn.BatchNorm1d(width, affine="weight" in norm))
            position += 1
        if position in entries:  # mlp_head's ReLU has no parameters
            raise ValueError(f"{source} is not an MLP head: no activation at its entry {position}")
        modules.append(nn.ReLU(inplace=True))
        position += 1
    head = nn.Sequential(*modules)
    head.load_state_dict({k: v for k, v in state.items() if int(k.partition(".")[0]) < position})
    return head


class ProjectedBackbone(nn.Module):
    """A backbone followed by the first layers of a pretrained projection head: the
    encoder SimCLR v2 fine-tunes ("from the middle layer of the projection head").
    Features are ``head(backbone(x))``; ``out_dim`` is the width of the last kept layer."""

    def __init__(self, backbone: nn.Module, head: nn.Sequential) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        widths = [m.out_features for m in head if isinstance(m, nn.Linear)]
        if not widths:
            raise ValueError("ProjectedBackbone needs a head with at least one Linear layer")
        self.out_dim = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
