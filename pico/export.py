"""Export a trained run for inference: backbone, classifier head and preprocessing.

:func:`export_model` writes up to three files from a pico-train checkpoint:

* ``state`` (``OUT``, e.g. ``model.pt``): a plain dict, ``torch.load(..., weights_only=True)``
  -able, described in :data:`STATE_KEYS`; :func:`load_exported` rebuilds the model;
* ``torchscript`` (``OUT`` with suffix ``.ts``): a :class:`Predictor` as TorchScript
  (``torch.jit.load``; no pico needed), with the metadata as attributes;
* ``onnx`` (``OUT`` with suffix ``.onnx``): the same model in ONNX, where ``onnx`` and
  ``onnxscript`` are installed (``pip install 'pico-pll[onnx]'``).

Every exported model takes **raw inputs**: images as ``uint8`` (0-255) or float (0-1) in the
data's layout ``(B, C, H, W)`` (or one ``(C, H, W)`` image), tabular rows as the raw
features of the data file ``(B, D)``. It applies what the run's evaluation applied (the
``test`` augmentation recipe and the normalisation; for tabular data the z-scoring the
loader did with training statistics) and returns logits ``(B, num_classes)``, or backbone
features ``(B, D_feat)`` for methods without a classifier head (self-supervised ones).

``parts="backbone"`` writes the backbone's state dict alone (the format ``model.init_from``
reads, as before), and no other file.
"""

import contextlib
import dataclasses
import importlib.util
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from pico.data.augment import BatchAugment, build_augment
from pico.engine.checkpoint import (
    CheckpointError,
    content_checksum,
    load_checkpoint,
    save_checkpoint,
)
from pico.engine.method import Method

EXPORT_FORMAT = "pico-export"
EXPORT_VERSION = 1
PARTS = ("all", "backbone")
FORMATS = ("state", "torchscript", "onnx")
ONNX_INSTALL = "pip install 'pico-pll[onnx]' (or: pip install onnx onnxscript)"

#: the keys of the state-dict export and what they hold
STATE_KEYS = {
    "format": f"'{EXPORT_FORMAT}'",
    "version": f"{EXPORT_VERSION}",
    "output": "'logits' (classifier head) or 'features' (backbone alone)",
    "kind": "'image' or 'tabular'",
    "input_shape": "one input without the batch dimension: [C, H, W] or [D]",
    "class_names": "the class names, in logit order",
    "mean": "per-channel normalisation mean on the 0-1 scale (images; may be empty)",
    "std": "per-channel normalisation std on the 0-1 scale (images; may be empty)",
    "feature_shift": "float64 (D,) subtracted from raw tabular rows (None for images)",
    "feature_scale": "float64 (D,) dividing raw tabular rows after the shift (None for images)",
    "test_recipe": "the test augmentation recipe (op configs with _target_)",
    "image_resize": "{'size': N or None, 'keep_aspect': bool}: the loader's resizing",
    "model": "the backbone's model config (_target_ and arguments)",
    "backbone": "backbone state dict",
    "classifier": "classifier head state dict (nn.Linear: weight, bias), or None",
}


class RawInput(nn.Module):
    """Raw inputs to the float batch the augmentation expects: a batch dimension added to
    a single input, ``uint8`` images divided by 255, raw tabular rows z-scored with the
    training statistics (``(x - shift) / scale`` in float64). Scriptable."""

    kind: str
    input_shape: list[int]
    feature_shift: Tensor
    feature_scale: Tensor

    def __init__(
        self,
        kind: str,
        input_shape: Sequence[int],
        feature_shift: Tensor | None = None,
        feature_scale: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.input_shape = [int(s) for s in input_shape]
        empty = torch.zeros(0, dtype=torch.float64)
        shift = empty if feature_shift is None else feature_shift.to(torch.float64)
        scale = empty if feature_scale is None else feature_scale.to(torch.float64)
        self.register_buffer("feature_shift", shift.clone())
        self.register_buffer("feature_scale", scale.clone())

    def forward(self, x: Tensor) -> Tensor:
        """``x`` (B, *input_shape) or (*input_shape) -> float32 (B, *input_shape)."""
        if x.dim() == len(self.input_shape):
            x = x.unsqueeze(0)
        if x.dim() != len(self.input_shape) + 1 or list(x.shape[1:]) != self.input_shape:
            raise ValueError(
                "expected inputs of shape (B, "
                + ", ".join([str(s) for s in self.input_shape])
                + "), got "
                + str(list(x.shape))
            )
        if self.kind == "image":
            if x.dtype == torch.uint8:
                return x.float() / 255.0
            if not x.is_floating_point():
                raise ValueError("images must be uint8 (0-255) or float (0-1), got " + str(x.dtype))
            return x.float()
        if self.feature_shift.numel() > 0:
            x = (x.double() - self.feature_shift) / self.feature_scale
        return x.float()


class Network(nn.Module):
    """The test augmentation (normalisation included), the backbone, and the classifier
    head (``nn.Identity`` for features) on float inputs."""

    def __init__(self, preprocess: BatchAugment, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(self.preprocess(x)))


class Predictor(nn.Module):
    """Raw inputs -> logits (or features), with the metadata a user needs as attributes:
    ``class_names``, ``kind``, ``input_shape``, ``output``, ``keep_aspect`` and
    ``image_size`` (0: the loader kept the images' size)."""

    class_names: list[str]
    kind: str
    output: str
    input_shape: list[int]
    image_size: int
    keep_aspect: bool

    def __init__(
        self,
        raw: RawInput,
        network: nn.Module,
        class_names: Sequence[str],
        output: str,
        image_size: int | None = None,
        keep_aspect: bool = False,
    ) -> None:
        super().__init__()
        self.raw = raw
        self.network = network
        self.class_names = [str(c) for c in class_names]
        self.kind = raw.kind
        self.output = output
        self.input_shape = list(raw.input_shape)
        self.image_size = int(image_size or 0)
        self.keep_aspect = bool(keep_aspect)

    def forward(self, x: Tensor) -> Tensor:
        return self.network(self.raw(x))


@dataclasses.dataclass
class Exported:
    """What :func:`export_model` wrote: the file of each format, and the formats skipped
    with the reason."""

    files: dict[str, Path]
    skipped: dict[str, str]
    output: str


def _resolved(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def export_state(checkpoint: str | Path, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The state-dict export (keys: :data:`STATE_KEYS`) of a pico-train ``checkpoint``.

    The run is rebuilt from its stored config, data included (``data`` changes the stored
    data config as for ``pico-eval``, e.g. ``{"root": DIR}``), to read the class names,
    normalisation and, for tabular data, the z-scoring statistics.
    """
    from pico.api import apply_data_overrides
    from pico.experiment import build_experiment

    path = Path(checkpoint)
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), str) or not isinstance(state.get("method"), dict):
        raise CheckpointError(
            f"{path} is not a pico-train checkpoint (it holds no run config and method "
            "state); pass run_dir/checkpoints/best.pt or last.pt"
        )
    cfg = OmegaConf.create(state["config"])
    cfg.trainer.device = "cpu"
    cfg.model.init_from = None  # the checkpoint holds the trained weights
    if "pretrained" in cfg.model:
        cfg.model.pretrained = False
    apply_data_overrides(cfg.data, data or {})
    exp = build_experiment(cfg, trained=state["method"])
    method = exp.method
    method.load_state_dict(state["method"])
    method.eval()
    bundle = exp.bundle
    backbone = method.backbone_module()
    check_rebuilds(method, cfg.model, bundle.input_shape, bundle.kind)
    probe = bundle.test.inputs[:2] if len(bundle.test) else bundle.train.inputs[:2]
    head = _classifier(method, probe, exp.augmenters["test"])
    shift = scale = None
    if bundle.kind == "tabular":
        shift, scale = _tabular_scaling(cfg.data, bundle.input_shape[0])
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "output": "features" if head is None else "logits",
        "kind": bundle.kind,
        "input_shape": list(bundle.input_shape),
        "class_names": list(bundle.class_names),
        "mean": [float(m) for m in bundle.mean],
        "std": [float(s) for s in bundle.std],
        "feature_shift": shift,
        "feature_scale": scale,
        "test_recipe": _resolved(cfg.aug.test) or [],
        "image_resize": _image_resize(cfg.data),
        "model": _resolved(cfg.model),
        "backbone": {k: v.detach().clone() for k, v in backbone.state_dict().items()},
        "classifier": (
            None if head is None else {k: v.detach().clone() for k, v in head.state_dict().items()}
        ),
    }


def check_rebuilds(
    method: Method, model_cfg: DictConfig, input_shape: tuple[int, ...], kind: str
) -> None:
    """Refuse a method whose backbone is not what ``model_cfg`` builds (CMC: one encoder
    per view): :func:`load_exported` rebuilds the backbone from the model config (shaped
    after the trained weights, as for a fine-tuned run's projector layers), so its state
    must fit that model exactly."""
    from pico.models.factory import build_backbone

    state = method.backbone_module().state_dict()
    with torch.random.fork_rng():  # building draws initial weights: leave the RNG as it was
        fresh = build_backbone(model_cfg, input_shape, kind, trained=state).state_dict()
    if fresh.keys() != state.keys() or any(fresh[k].shape != v.shape for k, v in state.items()):
        raise ValueError(
            f"the backbone of {type(method).__name__} is not the configured model "
            f"({model_cfg.get('_target_')}) alone, so an export could not rebuild it; "
            "pico-export supports parts=backbone for it"
        )


def _image_resize(data_cfg: DictConfig) -> dict[str, Any]:
    """The loader's ``image_size`` and ``keep_aspect`` (in ``data`` or ``data.source``)."""
    source = data_cfg.get("source") or {}

    def key(name: str) -> Any:
        return data_cfg.get(name, source.get(name) if isinstance(source, DictConfig) else None)

    size = key("image_size")
    return {"size": int(size) if size else None, "keep_aspect": bool(key("keep_aspect"))}


def _classifier(method: Method, probe: Tensor, preprocess: BatchAugment) -> nn.Module | None:
    """The method's ``classifier`` head, checked to give its logits on ``probe``; ``None``
    for a method without logits, checked to give its evaluated features as the backbone
    alone does (the export's output)."""
    if len(probe) == 0:
        return None
    x = preprocess(probe)
    with torch.no_grad():
        logits = method.logits(x)
        if logits is None:
            if not torch.allclose(method.backbone_module()(x), method.features(x), atol=1e-5):
                raise ValueError(
                    f"the features of {type(method).__name__} (what its evaluation reads) are not "
                    "backbone(x); pico-export supports parts=backbone for it"
                )
            return None
        head = getattr(method, "classifier", None)
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"{type(method).__name__} has logits but no nn.Linear `classifier` head over "
                "its backbone; pico-export supports parts=backbone for it"
            )
        if not torch.allclose(head(method.backbone_module()(x)), logits, atol=1e-5):
            raise ValueError(
                f"the logits of {type(method).__name__} are not classifier(backbone(x)); "
                "pico-export supports parts=backbone for it"
            )
    return head


def _tabular_scaling(data_cfg: DictConfig, width: int) -> tuple[Tensor, Tensor]:
    """The z-scoring the tabular loader applied to the raw rows, as ``(shift, scale)``."""
    source = data_cfg.source
    target = str(source.get("_target_", ""))
    if target == "pico.data.tabular.load_pll_mat_source":
        from pico.data.tabular import pll_mat_scaling

        kwargs = _resolved(source)
        kwargs.pop("_target_")
        return pll_mat_scaling(**kwargs)
    warnings.warn(
        f"tabular source {target} is not the .mat loader: the exported model takes its rows "
        "as the loader returned them (no z-scoring is included)",
        stacklevel=2,
    )
    return torch.zeros(width, dtype=torch.float64), torch.ones(width, dtype=torch.float64)


def load_exported(source: str | Path | Mapping[str, Any]) -> Predictor:
    """Rebuild the :class:`Predictor` (eager, in eval mode) of a state-dict export."""
    from pico.models.factory import build_backbone

    state = load_checkpoint(source) if isinstance(source, str | Path) else dict(source)
    if state.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{source} is not a pico-export state dict (no format={EXPORT_FORMAT!r}); "
            "write one with pico-export checkpoint=PATH out=FILE"
        )
    if state.get("version") != EXPORT_VERSION:
        raise CheckpointError(
            f"{source} is pico-export version {state.get('version')}; this pico reads "
            f"version {EXPORT_VERSION}"
        )
    shape = tuple(state["input_shape"])
    backbone = build_backbone(state["model"], shape, state["kind"], trained=state["backbone"])
    backbone.load_state_dict(state["backbone"])
    head: nn.Module = nn.Identity()
    if state["classifier"] is not None:
        weight = state["classifier"]["weight"]
        head = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state["classifier"])
        head.load_state_dict(state["classifier"])
    preprocess = build_augment(state["test_recipe"], state["mean"], state["std"])
    raw = RawInput(state["kind"], shape, state["feature_shift"], state["feature_scale"])
    resize = state.get("image_resize") or {}
    predictor = Predictor(
        raw,
        Network(preprocess, backbone, head),
        state["class_names"],
        state["output"],
        resize.get("size"),
        bool(resize.get("keep_aspect", False)),
    )
    return predictor.eval()


def load_classifier(
    source: str | Path, input_shape: Sequence[int], kind: str
) -> tuple[nn.Sequential, str]:
    """``nn.Sequential(backbone, classifier)`` of a trained run, on inputs already
    preprocessed as its training views were (normalised, of ``input_shape``), in eval mode
    and with every parameter frozen; and a digest of its weights (hex).

    ``source`` is a pico-train checkpoint of a method with a linear classifier head
    (PRODEN, PiCO, CC, ...: a :class:`~pico.pll.supervised.ClassifierMethod`, whose logits
    are ``classifier(backbone(x))``), rebuilt from its model config and weights alone (no
    data is loaded), or a pico-export state dict whose output is logits. A checkpoint of a
    method without a classifier head (SimCLR, MoCo, ...) is refused, and so is a model
    built for other inputs than ``input_shape`` / ``kind``.
    """
    from pico.models.factory import build_backbone
    from pico.models.transfer import BACKBONE_PREFIX, sub_state
    from pico.pll.supervised import ClassifierMethod

    state = load_checkpoint(source)
    if state.get("format") == EXPORT_FORMAT:
        predictor = load_exported(state)
        if predictor.output != "logits":
            raise ValueError(f"{source} exports backbone features, not logits: {_NO_HEAD}")
        if (predictor.kind, list(predictor.input_shape)) != (kind, list(input_shape)):
            raise ValueError(
                f"{source} takes {predictor.kind} inputs of shape {predictor.input_shape}, "
                f"but this data is {kind} of shape {list(input_shape)}"
            )
        network = predictor.network
        assert isinstance(network, Network)  # load_exported builds one
        backbone, head = network.backbone, network.head
    elif isinstance(state.get("config"), str) and isinstance(state.get("method"), dict):
        cfg = OmegaConf.create(state["config"])
        target = str(cfg.method._target_)
        method_cls = get_object(target)
        if not (
            isinstance(method_cls, type)
            and issubclass(method_cls, ClassifierMethod)
            and method_cls.logits is ClassifierMethod.logits
        ):
            raise ValueError(f"{source} is a run of {target}, which has {_NO_HEAD}")
        trained = sub_state(state["method"], BACKBONE_PREFIX)
        backbone = build_backbone(cfg.model, tuple(input_shape), kind, trained=trained)
        _load_fitting(backbone, trained, source)
        weight = state["method"]["classifier.weight"]
        head = nn.Linear(weight.shape[1], weight.shape[0])
        head.load_state_dict(sub_state(state["method"], "classifier."))
    else:
        raise CheckpointError(
            f"{source} is neither a pico-train checkpoint nor a pico-export state dict; pass "
            "run_dir/checkpoints/best.pt (or last.pt) of a run with a classifier head"
        )
    network = nn.Sequential(backbone, head).eval().requires_grad_(False)
    return network, content_checksum(network.state_dict())


#: why a run without a classifier head cannot teach
_NO_HEAD = (
    "no classifier head to teach with; pass a run of a classification method (method=proden, "
    "pico, cc, lws, ...)"
)


def _load_fitting(module: nn.Module, state: Mapping[str, Tensor], source: str | Path) -> None:
    """``module.load_state_dict(state)``, a mismatch reported as a ``ValueError``."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"the backbone of {source} does not fit this data's inputs ({first}); use the "
            "data (channels, image size) the run was trained on"
        ) from err


def _example(predictor: Predictor, batch: int = 2) -> Tensor:
    """A float example batch of the network's input (after :class:`RawInput`)."""
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, *predictor.input_shape, generator=gen)


def _check_deterministic(predictor: Predictor) -> None:
    x = _example(predictor)
    with torch.no_grad():
        a, b = predictor.network(x), predictor.network(x)
    if not torch.equal(a, b):
        raise ValueError(
            "the run's test augmentation recipe is random (two passes differ), so it cannot "
            "be exported; make aug.test deterministic (resize / crop / normalisation only)"
        )


def to_torchscript(predictor: Predictor) -> torch.jit.ScriptModule:
    """``predictor`` as TorchScript: the network traced on float inputs of its input
    shape (any batch size), the raw-input handling and the metadata scripted."""
    predictor = predictor.eval()
    _check_deterministic(predictor)
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(predictor.network, (_example(predictor),), check_trace=False)
        scripted = Predictor(
            predictor.raw,
            traced,
            predictor.class_names,
            predictor.output,
            predictor.image_size,
            predictor.keep_aspect,
        )
        return torch.jit.script(scripted)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence TorchScript's tracer warnings and its deprecation notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def save_torchscript(module: torch.jit.ScriptModule, path: str | Path) -> Path:
    """``torch.jit.save`` without its deprecation notice."""
    with _quiet_jit():
        torch.jit.save(module, str(path))
    return Path(path)


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on the CPU, without its deprecation notice."""
    with _quiet_jit():
        return torch.jit.load(str(path), map_location="cpu")


def onnx_available() -> bool:
    """Whether ``onnx`` and ``onnxscript`` (torch's ONNX exporter) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def to_onnx(predictor: Predictor, path: str | Path) -> Path:
    """Write ``predictor`` as ONNX to ``path``: input ``input`` (uint8 images in the data's
    layout, or float32 raw tabular rows) with a dynamic batch dimension, output ``output``."""
    if not onnx_available():
        raise ValueError(f"ONNX export needs onnx and onnxscript; {ONNX_INSTALL}")
    predictor = predictor.eval()
    dtype = torch.uint8 if predictor.kind == "image" else torch.float32
    example = (_example(predictor) * (255 if dtype == torch.uint8 else 1)).to(dtype)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        predictor,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    return Path(path)


def export_paths(out: str | Path) -> dict[str, Path]:
    """The file of each format for ``out``: ``out`` itself for the state dict, and ``out``
    with the suffix ``.ts`` (TorchScript) and ``.onnx``."""
    out = Path(out)
    return {"state": out, "torchscript": out.with_suffix(".ts"), "onnx": out.with_suffix(".onnx")}


def parse_formats(formats: str | Sequence[str]) -> tuple[list[str], bool]:
    """``formats`` as a list, and whether ONNX was asked for by name (``all``: every format,
    ONNX only where it is installed)."""
    if isinstance(formats, str):
        names = [f.strip() for f in formats.split(",") if f.strip()]
    else:
        names = [str(f) for f in formats]
    if names == ["all"]:
        return list(FORMATS), False
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(
            f"formats={','.join(names)} names unknown formats {unknown}; choose from "
            f"all, {', '.join(FORMATS)} (a list, e.g. formats=[state,torchscript])"
        )
    return list(dict.fromkeys(names)), "onnx" in names


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    parts: str = "all",
    formats: str | Sequence[str] = "all",
    data: Mapping[str, Any] | None = None,
) -> Exported:
    """Export ``checkpoint`` to ``out`` (see the module docstring); returns what was
    written. ``parts="backbone"`` writes the backbone's state dict alone to ``out``."""
    from pico.models.transfer import backbone_state

    if parts not in PARTS:
        raise ValueError(f"parts={parts} is unknown; choose one of {', '.join(PARTS)}")
    names, onnx_named = parse_formats(formats)
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise FileNotFoundError(f"out={out}: folder {out.parent} does not exist; create it first")
    if parts == "backbone":
        load_checkpoint(checkpoint)  # refuses a missing, corrupt or code-carrying file first
        backbone = backbone_state(checkpoint)
        save_checkpoint(backbone, out, checksum=False)
        return Exported({"backbone": out}, {}, "features")
    if onnx_named and not onnx_available():
        raise ValueError(
            f"formats names onnx, but onnx/onnxscript are not installed; {ONNX_INSTALL}"
        )
    state = export_state(checkpoint, data)
    predictor = load_exported(state)
    paths = export_paths(out)
    files: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    if "state" in names:
        save_checkpoint(state, paths["state"], checksum=False)
        files["state"] = paths["state"]
    if "torchscript" in names:
        files["torchscript"] = save_torchscript(to_torchscript(predictor), paths["torchscript"])
    if "onnx" in names:
        if onnx_available():
            files["onnx"] = to_onnx(predictor, paths["onnx"])
        else:
            skipped["onnx"] = f"onnx/onnxscript are not installed; {ONNX_INSTALL} enables it"
    return Exported(files, skipped, state["output"])
