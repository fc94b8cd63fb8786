"""PLCIFAR10 (Wang et al., PLENCH, ICLR 2025): CIFAR-10's training images with candidate
sets from about ten human annotators each, some of which miss the true label.

The distributed file is a pickle of ``{train index: [[labels of annotator 1], ...]}``.
It is read with an unpickler that refuses every class and function, so only dicts,
lists, ints (and other plain built-in values, rejected afterwards) can come out of it and
no code in the file runs. Two standard variants turn the annotators' sets into one:
``aggregate`` (their union) and ``vaguest`` (the largest single set, the first on ties).
"""

from __future__ import annotations

import logging
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pico.data.bundle import Split
from pico.data.folder import list_image_folder, load_image_folder
from pico.data.sources import SourceData, missing_path_error
from pico.data.vision import load_torchvision
from pico.pll.validation import CandidateError, describe_rows

log = logging.getLogger(__name__)

VARIANTS = ("aggregate", "vaguest")
IMAGE_SOURCES = ("torchvision", "folder")
NUM_CLASSES = 10
#: CIFAR-10's classes in label order (alphabetical, so image folders sort the same way)
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
Annotations = dict[int, list[list[int]]]


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a class or function (``module.name``), which is never resolved."""


class _NoCodeUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global name: nothing in the file can be called."""

    def find_class(self, module: str, name: str) -> Any:
        raise _RefusedGlobal(f"{module}.{name}")


def check_variant(variant: str) -> None:
    """Refuse a variant other than ``aggregate`` and ``vaguest``."""
    if variant not in VARIANTS:
        raise ValueError(
            f"data.variant={variant!r} is not a PLCIFAR10 variant; choose one of {VARIANTS}"
        )


def read_annotations(path: str | Path) -> Annotations:
    """The per-annotator candidate lists of a PLCIFAR10 pickle, without running its code.

    Raises :class:`~pico.pll.validation.CandidateError` naming the file when it refers to
    any class or function (refused before anything runs), is not a readable pickle, or is
    not a dict from non-negative ints to lists of lists of class ids in [0, 10).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise missing_path_error(
            path,
            "PLCIFAR10 candidate file",
            "the distributed plcifar10.pkl: {CIFAR-10 train index: [[labels], ...]}",
            "pass data.candidates_file=FILE pointing at it",
        )
    try:
        with path.open("rb") as handle:
            data = _NoCodeUnpickler(handle).load()
    except _RefusedGlobal as err:
        raise CandidateError(
            f"refused to load {path}: it refers to {err}, but a PLCIFAR10 file holds only "
            "dicts, lists and ints; nothing in it was run. Use the distributed plcifar10.pkl, "
            "or rewrite the file with plain Python lists and ints"
        ) from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as err:
        raise CandidateError(
            f"{path} is not a readable pickle ({type(err).__name__}: {err}); "
            "pass the distributed plcifar10.pkl"
        ) from err
    return _checked(data, path)


def _checked(data: Any, path: Path) -> Annotations:
    """``data`` if it is ``{int >= 0: [[class id, ...], ...]}``; else a CandidateError."""
    layout = "a dict {CIFAR-10 train index: [[labels of one annotator], ...]}"
    if type(data) is not dict:
        raise CandidateError(f"{path} holds a {type(data).__name__}, not {layout}")
    for key, sets in data.items():
        where = f"{path}, entry {key!r}"
        if type(key) is not int or key < 0:
            raise CandidateError(f"{where}: keys must be train indices (ints >= 0); {layout}")
        if type(sets) is not list or any(type(one) is not list for one in sets):
            raise CandidateError(f"{where}: must be a list of per-annotator lists; {layout}")
        for one in sets:
            if any(type(y) is not int or not 0 <= y < NUM_CLASSES for y in one):
                raise CandidateError(
                    f"{where}: holds {one!r}; labels must be ints in [0, {NUM_CLASSES})"
                )
    return data


def combine(sets: Sequence[Sequence[int]], variant: str) -> set[int]:
    """One candidate set from the annotators' ``sets``: their union (``aggregate``) or the
    largest one by distinct labels, the first on ties (``vaguest``); empty if none."""
    check_variant(variant)
    if variant == "aggregate":
        return {y for one in sets for y in one}
    return set(max(sets, key=lambda one: len(set(one)), default=()))


def candidate_matrix(
    annotations: Annotations, variant: str, index: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Bool candidates (len(index), 10) for the images with CIFAR-10 train ``index``, and
    the rows (positions in ``index``) without any candidate: absent from the file, or with
    an empty set."""
    cand = torch.zeros(len(index), NUM_CLASSES, dtype=torch.bool)
    for row, image in enumerate(index):
        labels = sorted(combine(annotations.get(int(image), []), variant))
        cand[row, labels] = True
    return cand, torch.nonzero(~cand.any(1)).flatten()


def noise_rate(candidates: Tensor, targets: Tensor) -> float:
    """Share of rows whose true label lies outside its candidate set."""
    inside = candidates[torch.arange(len(targets)), targets]
    return float((~inside).float().mean()) if len(targets) else 0.0


def load_plcifar10(
    candidates_file: str,
    variant: str = "aggregate",
    root: str | None = None,
    images: str = "torchvision",
    download: bool = False,
    drop_empty: bool = False,
    num_threads: int = 0,
) -> SourceData:
    """CIFAR-10 with the PLCIFAR10 candidate sets of ``candidates_file`` on its train split.

    ``images="torchvision"`` reads ``root/cifar-10-batches-py`` (train index = row);
    ``"folder"`` reads ``root/train/<class>/<index>.<ext>`` and ``root/test/<class>/*``,
    each training file named by its CIFAR-10 train index. Every index in the file needs an
    image. Images without a candidate (absent from the file, or an empty set) are an error,
    or are dropped with ``drop_empty``. The noise rate is logged, and a warning
    recommends a noise-robust method when it is above zero.
    """
    check_variant(variant)
    annotations = read_annotations(candidates_file)
    source, index = _cifar10(root, images, download, num_threads)
    unknown = sorted(set(annotations) - set(index.tolist()))
    if unknown:
        raise CandidateError(
            f"{candidates_file} gives candidate sets for {describe_rows(unknown, 'train indices')} "
            f"that have no image among the {len(index)} CIFAR-10 training images read from "
            f"{root}; point data.root at the full CIFAR-10 training set"
        )
    cand, empty = candidate_matrix(annotations, variant, index.tolist())
    train = Split(source.train.inputs, source.train.targets, cand)
    if len(empty):
        where = describe_rows(index[empty], "train indices")
        if not drop_empty:
            raise CandidateError(
                f"{where} have no {variant} candidate label in {candidates_file} (absent from "
                "the file, or every annotator's list is empty); pass data.drop_empty=true to "
                "train without them"
            )
        log.info("PLCIFAR10: dropped %s without a candidate label", where)
        keep = torch.ones(len(train), dtype=torch.bool)
        keep[empty] = False
        train = train.subset(torch.nonzero(keep).flatten())
    _report(train.candidates, train.targets, variant)  # type: ignore[arg-type]
    return SourceData(train, source.test, source.class_names, "image", source.mean, source.std)


def _report(candidates: Tensor, targets: Tensor, variant: str) -> None:
    """Log the candidate statistics and warn when sets miss their true label."""
    rate = noise_rate(candidates, targets)
    size = float(candidates.sum(1).float().mean())
    log.info(
        "PLCIFAR10-%s: %d training images, %.2f candidates on average, noise rate %.2f %% "
        "(true label outside its set)",
        variant,
        len(targets),
        size,
        100 * rate,
    )
    if rate > 0:
        warnings.warn(
            f"PLCIFAR10-{variant}: the true label is outside the candidate set of "
            f"{100 * rate:.2f} % of the training images (noisy partial labels); use a "
            "noise-robust method such as method=pico_plus. Selection stays label-free "
            "(val/approx_acc, val/covering_rate).",
            stacklevel=2,
        )


def _cifar10(
    root: str | None, images: str, download: bool, num_threads: int
) -> tuple[SourceData, Tensor]:
    """CIFAR-10 train/test splits and the CIFAR-10 train index of each training row."""
    if images == "torchvision":
        source = load_torchvision("cifar10", root, download)
        return source, torch.arange(len(source.train))
    if images != "folder":
        raise ValueError(f"data.images={images!r}; choose one of {IMAGE_SOURCES}")
    if root is None:
        raise ValueError("data.images=folder needs data.root=DIR holding train/ and test/")
    source = load_image_folder(root, image_size=32, channels=3, num_threads=num_threads)
    if [name.lower() for name in source.class_names] != CIFAR10_CLASSES:
        raise ValueError(
            f"the class folders of {root}/train are {source.class_names}, not CIFAR-10's "
            f"{CIFAR10_CLASSES}; PLCIFAR10's label ids follow CIFAR-10's classes"
        )
    _, files, _ = list_image_folder(Path(root).expanduser() / "train")  # the loader's order
    return source, _file_indices(files)


def _file_indices(files: Sequence[Path]) -> Tensor:
    """The CIFAR-10 train index each file is named by (``cat/12.png`` is index 12)."""
    stems = [path.stem for path in files]
    bad = [str(path) for path, stem in zip(files, stems, strict=True) if not stem.isdigit()]
    if bad:
        raise ValueError(
            f"PLCIFAR10 needs each training image named by its CIFAR-10 train index "
            f"(e.g. train/cat/12.png), but {len(bad)} are not (first: {bad[0]}); use "
            "data.images=torchvision with CIFAR-10's python files under data.root"
        )
    first: dict[int, Path] = {}
    for path, stem in zip(files, stems, strict=True):
        other = first.setdefault(int(stem), path)
        if other != path:
            raise ValueError(
                f"{other} and {path} carry the same CIFAR-10 train index; keep one file per index"
            )
    return torch.tensor(list(first))
