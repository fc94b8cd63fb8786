"""Build a backbone from a Hydra ``model`` config and the data's input shape."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from pico.models.transfer import (
    ProjectedBackbone,
    head_layers,
    load_backbone_,
    projector_state,
    sub_state,
)

#: the constructor argument that receives the input size, per data kind
_SIZE_ARG = {"image": "in_channels", "tabular": "in_dim"}
_FIX = {
    "image": "use an image backbone (model=convnet or model=resnet18) for image data",
    "tabular": "use model=mlp for tabular data",
}


def _accepted_kind(target: Any) -> str | None:
    """The data kind a backbone constructor accepts, judged by its size argument."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    if "in_channels" in params:
        return "image"
    if "in_dim" in params:
        return "tabular"
    return None


def _takes(target: Any, name: str) -> bool:
    """Whether ``target``'s signature has an argument ``name``."""
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def check_pretrained(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Refuse a model config with ``pretrained: true`` that names no starting weights.

    ``pretrained: true`` says the run must start from pretrained weights (``weights``, a
    local file, or ``init_from``, a checkpoint); nothing is downloaded, so without either
    the backbone would silently train from scratch. ``pretrained: false`` allows that.
    """
    if not cfg.get("pretrained", False) or cfg.get("weights") or cfg.get("init_from"):
        return
    weights = f"model.weights=FILE ({_weights_source(cfg)}) or " if "weights" in cfg else ""
    raise ValueError(
        "model.pretrained=true: this run must start from pretrained weights, but none are "
        f"given and none are ever downloaded; pass {weights}model.init_from=CHECKPOINT, or "
        "pass model.pretrained=false to train from scratch"
    )


def _weights_source(cfg: DictConfig | Mapping[str, Any]) -> str:
    """What the file behind ``model.weights`` holds and how to save it, per backbone."""
    if "name" in cfg:  # model=timm
        kind, model = "timm", f"timm.create_model({cfg.get('name') or 'NAME'!r}, pretrained=True)"
    else:
        kind = "torchvision"
        model = f"torchvision.models.resnet{cfg.get('depth', 18)}(weights='IMAGENET1K_V1')"
    return (
        f"a {kind} state dict, saved where the model hub is reachable with "
        f"torch.save({model}.state_dict(), FILE)"
    )


def build_backbone(
    cfg: DictConfig | Mapping[str, Any],
    input_shape: tuple[int, ...],
    kind: str,
    trained: Mapping[str, Tensor] | None = None,
) -> nn.Module:
    """Instantiate ``cfg`` (a mapping with ``_target_`` and kwargs) for inputs of ``input_shape``.

    Image data (``kind="image"``, shape (C, H, W)) passes ``in_channels=C``; tabular data
    (``kind="tabular"``, shape (D,)) passes ``in_dim=D``; these override any value in the
    config. The backbone kind is read from the target's signature (``in_channels`` means
    image, ``in_dim`` tabular), so a mismatch fails before anything is built; an image
    backbone that takes ``image_size`` (the ViT) also receives ``(H, W)``. The result
    must expose an integer ``out_dim`` (feature size). An ``init_from`` key (a checkpoint
    of any method, or a plain state dict) loads pretrained backbone weights; a
    ``pretrained`` key is checked by :func:`check_pretrained` and not passed on.

    ``init_head_layers: K`` (K > 0, with ``init_from``) appends the first K layers of the
    checkpoint's projection head (each Linear, its BatchNorm and ReLU; the output layer
    is never kept), with their weights: a
    :class:`~pico.models.transfer.ProjectedBackbone` whose features are those of the K-th
    layer (SimCLR v2 fine-tunes with K = 1).

    ``trained`` is the state dict of a backbone built from this config by a finished run
    (``pico-eval``, ``pico-export`` and the distillation teacher rebuild one): the layers
    are then shaped after it, and neither ``init_from`` nor ``weights`` is read (the
    caller loads ``trained``).
    """
    if kind not in _SIZE_ARG:
        raise ValueError(f"data kind must be 'image' or 'tabular', got {kind!r}")
    expected_ndim = 3 if kind == "image" else 1
    if len(input_shape) != expected_ndim:
        raise ValueError(
            f"{kind} data needs an input shape with {expected_ndim} dimension(s) "
            f"({'(C, H, W)' if kind == 'image' else '(D,)'}), got {tuple(input_shape)}"
        )
    model_cfg = OmegaConf.create(
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    )
    assert isinstance(model_cfg, DictConfig)  # created from a mapping
    if trained is not None:  # the trained weights replace any starting weights
        model_cfg.pretrained = False
        if model_cfg.get("weights"):
            model_cfg.weights = None
    check_pretrained(model_cfg)
    model_cfg.pop("pretrained", None)
    init_from = model_cfg.pop("init_from", None)
    head = _head_layers(model_cfg.pop("init_head_layers", 0), init_from, trained)
    target_name = model_cfg.get("_target_")
    if not target_name:
        raise ValueError(
            "model config has no '_target_'; pick a model config (e.g. model=convnet) "
            "or set _target_ to a backbone class or function such as pico.models.SmallConvNet"
        )
    try:
        target = get_object(target_name)
    except Exception as err:
        raise ValueError(
            f"model _target_ {target_name!r} cannot be imported ({err}); check the dotted path"
        ) from err
    accepted = _accepted_kind(target)
    if accepted is not None and accepted != kind:
        raise ValueError(
            f"backbone {target_name} is built for {accepted} data but the data is {kind} "
            f"(input shape {tuple(input_shape)}); {_FIX[kind]}"
        )
    sizes: dict[str, int | list[int]] = {_SIZE_ARG[kind]: int(input_shape[0])}
    if kind == "image" and _takes(target, "image_size"):  # a ViT: its position embeddings
        sizes["image_size"] = [int(s) for s in input_shape[1:]]
    model = instantiate(model_cfg, **sizes, _convert_="all")
    if not isinstance(getattr(model, "out_dim", None), int):
        raise ValueError(
            f"backbone {target_name} has no integer attribute 'out_dim'; set it to the size "
            "of the features the backbone returns"
        )
    if init_from and trained is None:
        load_backbone_(model, init_from)
    if head is None:
        return model
    if head[0].in_features != model.out_dim:
        raise ValueError(
            f"model.init_head_layers: the projector of {init_from} takes "
            f"{head[0].in_features} features, but this backbone gives {model.out_dim}; use "
            "the model config of the run that wrote it"
        )
    return ProjectedBackbone(model, head)


def _head_layers(
    layers: Any, init_from: str | None, trained: Mapping[str, Tensor] | None
) -> nn.Sequential | None:
    """The projector layers ``model.init_head_layers`` asks for, from ``init_from``'s
    projector or, for a trained run, shaped after its backbone's ``head``."""
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise ValueError(
            f"model.init_head_layers={layers!r} is not valid: it must be a whole number >= 0 "
            "(0: the backbone alone; 1: with the first layer of the checkpoint's projector)"
        )
    if layers == 0:
        return None
    if trained is not None:
        head = sub_state(trained, "head.")
        return head_layers(head, layers, "the trained backbone's head", output_layer=False)
    if not init_from:
        raise ValueError(
            f"model.init_head_layers={layers} keeps layers of a pretrained projector, but "
            "model.init_from is not set; pass model.init_from=CHECKPOINT (e.g. of "
            "method=simclr_v2), or model.init_head_layers=0"
        )
    return head_layers(projector_state(init_from), layers, f"the projector of {init_from}")
