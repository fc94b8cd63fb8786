"""Entry point that turns a ``data`` config node into a :class:`DataBundle`.

A source function (digits, torchvision, image folder, Hugging Face, ``.mat``) returns
:class:`SourceData`: labelled train and test splits. :func:`load_data` then attaches
candidate label sets (generated or read from a file) and carves a seeded, stratified
validation split out of the training rows; validation rows keep their candidate sets,
so model selection never needs true labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra.utils
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from pico.data.bundle import DataBundle, Split, stratified_split

SOURCES: dict[str, str] = {
    "digits": "pico.data.digits.load_digits",
    "torchvision": "pico.data.vision.load_torchvision",
    "image_folder": "pico.data.folder.load_image_folder",
    "hf": "pico.data.hf.load_hf",
    "mat": "pico.data.tabular.load_pll_mat_source",
}
"""Short names accepted as ``data.source._target_`` in place of the dotted path."""


@dataclass
class SourceData:
    """What a source function returns: labelled train/test splits and their metadata.

    ``kind`` is ``"image"`` or ``"tabular"``; ``mean``/``std`` are per-channel statistics
    on the 0-1 scale for images (empty for tabular features).
    """

    train: Split
    test: Split
    class_names: list[str]
    kind: str = "image"
    mean: tuple[float, ...] = field(default_factory=tuple)
    std: tuple[float, ...] = field(default_factory=tuple)


def channel_stats(
    images: Tensor, chunk_elements: int = 1 << 24
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W) on the 0-1 scale.

    Sums are exact (int64 over chunks of about ``chunk_elements`` values), so large sets
    need no full-size copy.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"expected a non-empty (N, C, H, W) image tensor, got {tuple(images.shape)}"
        )
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.int64)
    total_sq = torch.zeros(channels, dtype=torch.int64)
    chunk = max(1, chunk_elements // images[0].numel())
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].to(torch.int64)
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square_().sum(dim=(0, 2, 3))
    count = images.numel() // channels
    mean = total.double() / (count * 255.0)
    std = (total_sq.double() / (count * 255.0**2) - mean.square()).clamp_min(0.0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def missing_path_error(path: str | Path, what: str, layout: str, fix: str) -> ValueError:
    """A uniform error for a data path that does not exist or lacks the expected files."""
    return ValueError(f"{what} not found at '{path}'. Expected layout: {layout}. Fix: {fix}.")


def _instantiate_source(source_cfg: DictConfig) -> SourceData:
    target = source_cfg.get("_target_")
    if target is None:
        raise ValueError(
            "data.source needs a `_target_` naming a source function, e.g. "
            f"pico.data.digits.load_digits; short names: {sorted(SOURCES)}"
        )
    node: dict[str, Any] = OmegaConf.to_container(source_cfg, resolve=True)  # type: ignore[assignment]
    node["_target_"] = SOURCES.get(target, target)
    data = hydra.utils.instantiate(node, _convert_="all")
    if not isinstance(data, SourceData):
        raise ValueError(
            f"data.source._target_={target} returned {type(data).__name__}, not SourceData; "
            f"point it at a source function such as one of {sorted(SOURCES.values())}"
        )
    return data


def _candidates_for(
    cand_cfg: DictConfig, targets: Tensor, class_names: list[str], seed: int
) -> Tensor:
    """Generated or file-given candidate sets for the training rows."""
    params: dict[str, Any] = OmegaConf.to_container(cand_cfg, resolve=True)  # type: ignore[assignment]
    name = params.pop("name", None)
    if name is None:
        raise ValueError(
            "data.candidates needs a `name` (e.g. {name: uniform, q: 0.3}, or "
            "{name: file, path: FILE.npz}); set data.candidates=null for no candidates"
        )
    num_classes = len(class_names)
    if name == "file":
        return _candidates_from_file(params, num_classes, class_names, len(targets))
    from pico.pll.candidates import generate_candidates

    return generate_candidates(name, targets, num_classes, seed=seed, **params)


def _candidates_from_file(
    params: dict[str, Any], num_classes: int, class_names: list[str], num_rows: int
) -> Tensor:
    from pico.pll import candidate_io

    path = params.get("path")
    if path is None:
        raise ValueError(
            "data.candidates.name=file needs a path: pass data.candidates.path=FILE "
            "(.npz with a multi-hot matrix or .csv with class lists, one row per train example)"
        )
    path = Path(path).expanduser()
    if not path.is_file():
        raise missing_path_error(
            path,
            "candidate file",
            "a .npz or .csv file with one candidate set per training example, in source order",
            "pass data.candidates.path=FILE pointing at an existing file",
        )
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return candidate_io.load_candidates_npz(path, num_classes, num_rows)
    if suffix == ".csv":
        return candidate_io.load_candidates_csv(path, num_classes, class_names, num_rows)
    raise ValueError(
        f"candidate file '{path}' has suffix '{suffix}'; use a .npz or .csv file "
        "(a .mat file carries its own candidates: use data=mat)"
    )


def training_subset(targets: Tensor, size: int, seed: int) -> Tensor:
    """Sorted indices of a seeded, stratified subset of about ``size`` rows (each class
    keeps its share, and at least one row); all rows when ``size`` covers them."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(
            f"data.train_size={size!r} is not a row count; pass a positive integer, or null "
            "to train on every row"
        )
    if size >= len(targets):
        return torch.arange(len(targets))
    subset, _ = stratified_split(targets, 1.0 - size / len(targets), seed)
    return subset


def load_data(cfg: DictConfig) -> DataBundle:
    """Build the :class:`DataBundle` described by the ``data`` config node.

    Instantiates ``cfg.source``, attaches training candidates from ``cfg.candidates``
    (unless the source already carries them) and holds out a stratified
    ``cfg.val_fraction`` of the training rows (seeded by ``cfg.seed``) as validation;
    ``cfg.train_size``, when set, first keeps a subset of the training rows
    (:func:`training_subset`), e.g. for a CPU budget.
    ``cfg.mean``/``cfg.std``, when set, replace the source's normalisation statistics
    (e.g. ImageNet's for pretrained backbones).
    """
    seed = int(cfg.get("seed", 0))
    source = _instantiate_source(cfg.source)
    train = source.train
    cand_cfg = cfg.get("candidates")
    if cand_cfg is not None:
        if train.candidates is not None:
            raise ValueError(
                f"data source '{cfg.get('name', cfg.source._target_)}' already carries candidate "
                "sets, and data.candidates asks for more; pass data.candidates=null to use the "
                "source's own"
            )
        cands = _candidates_for(cand_cfg, train.targets, source.class_names, seed)
        train = Split(train.inputs, train.targets, cands.to(torch.bool))
    train_size = cfg.get("train_size")
    if train_size is not None:
        train = train.subset(training_subset(train.targets, train_size, seed))
    keep, held = stratified_split(train.targets, float(cfg.get("val_fraction", 0.1)), seed)
    return DataBundle(
        name=str(cfg.get("name", "data")),
        train=train.subset(keep),
        val=train.subset(held),
        test=source.test,
        num_classes=len(source.class_names),
        class_names=list(source.class_names),
        kind=source.kind,
        **_normalisation(cfg, source),
    )


def _normalisation(cfg: DictConfig, source: SourceData) -> dict[str, tuple[float, ...]]:
    """``mean`` and ``std``: ``cfg.mean``/``cfg.std`` when set, else the source's own."""
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None and std is None:
        return {"mean": tuple(source.mean), "std": tuple(source.std)}
    width = source.train.inputs.shape[1]  # channels of images, features of tabular rows
    if mean is None or std is None or not len(mean) == len(std) == width or min(std) <= 0:
        raise ValueError(
            f"data.mean={mean} and data.std={std} must both be given, with one value per "
            f"channel ({width} here) and positive stds, e.g. data.mean=[0.485,0.456,0.406] "
            "data.std=[0.229,0.224,0.225] (ImageNet's); set both to null to normalise with "
            "the training data's own statistics"
        )
    return {"mean": tuple(float(m) for m in mean), "std": tuple(float(v) for v in std)}
