"""Hugging Face ``datasets`` image sets (hub names or local parquet/arrow/imagefolder)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from pico.data.bundle import Split
from pico.data.folder import decode_splits
from pico.data.sources import SourceData, channel_stats

_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


@contextlib.contextmanager
def _quiet_progress(datasets: ModuleType) -> Iterator[None]:
    """No ``datasets`` progress bars in the block (local files load in moments, and the
    bars would only crowd the run's console); the setting is restored after it."""
    if datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def load_hf(
    path: str,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    data_files: str | Sequence[str] | dict[str, Any] | None = None,
    data_dir: str | None = None,
    image_size: int | None = None,
    candidates_column: str | None = None,
    channels: int | None = None,
    cache_dir: str | None = None,
    num_threads: int = 0,
) -> SourceData:
    """Load an image classification set with ``datasets.load_dataset`` into uint8 tensors.

    ``path`` is a hub name or a builder ("parquet", "arrow", "imagefolder") used with
    ``data_files``/``data_dir``. Class names come from a ``ClassLabel`` feature when there
    is one (else sorted label values). ``candidates_column`` (lists of class indices)
    gives the training candidate sets. ``channels=None`` picks 1 when the first training
    image is grayscale, else 3; ``image_size`` resizes to a square of that side. Local
    files (``data_files``, ``data_dir``, a path) load without progress bars.
    """
    import datasets

    local = data_files is not None or data_dir is not None or Path(path).expanduser().exists()
    try:
        with _quiet_progress(datasets) if local else contextlib.nullcontext():
            dsets = datasets.load_dataset(
                path, data_files=data_files, data_dir=data_dir, cache_dir=cache_dir
            )
    except (FileNotFoundError, ConnectionError) as err:
        raise ValueError(
            f"Hugging Face data set '{path}' (data_files={data_files}, data_dir={data_dir}) "
            f"could not be loaded: {err}. Fix: pass data.path=HUB_NAME of a data set in the "
            "local cache (no download is possible offline), or data.path=parquet|arrow|"
            "imagefolder with data.data_files / data.data_dir pointing at existing files"
        ) from err
    missing = [s for s in (train_split, test_split) if s not in dsets]
    if missing:
        raise ValueError(
            f"Hugging Face data set '{path}' has splits {sorted(dsets)}, not {missing}; pass "
            "data.train_split=... / data.test_split=..., or data_files={train: ..., test: ...}"
        )
    train_ds, test_ds = dsets[train_split], dsets[test_split]
    for column in (image_column, label_column, candidates_column):
        if column is not None and column not in train_ds.column_names:
            raise ValueError(
                f"column '{column}' is not in split '{train_split}' of '{path}' (columns: "
                f"{train_ds.column_names}); set data.image_column / data.label_column / "
                "data.candidates_column to existing columns"
            )
    class_names, train_targets, test_targets = _labels(train_ds, test_ds, label_column, f"'{path}'")
    train_encoded = _encoded_images(train_ds, image_column, path)
    test_encoded = _encoded_images(test_ds, image_column, path)
    if channels is None:
        channels = _guess_channels(train_encoded[0]) if train_encoded else 3
    train_images, test_images = decode_splits(
        train_encoded, test_encoded, channels, image_size, num_threads
    )
    candidates = None
    if candidates_column is not None:
        from pico.pll.candidate_io import candidates_from_column

        candidate_lists = [list(v) for v in train_ds[candidates_column]]
        candidates = candidates_from_column(candidate_lists, len(class_names))
    mean, std = channel_stats(train_images)
    return SourceData(
        train=Split(train_images, train_targets, candidates),
        test=Split(test_images, test_targets),
        class_names=class_names,
        kind="image",
        mean=mean,
        std=std,
    )


def _labels(
    train_ds: Any, test_ds: Any, column: str, where: str
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Class names plus int64 train/test targets from a label column."""
    import datasets

    feature = train_ds.features[column]
    train_values = np.asarray(train_ds.with_format("numpy")[column])
    test_values = np.asarray(test_ds.with_format("numpy")[column])
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        train_t, test_t = train_values.astype(np.int64), test_values.astype(np.int64)
    elif np.issubdtype(train_values.dtype, np.integer):
        top = int(max(train_values.max(initial=0), test_values.max(initial=0)))
        names = [str(i) for i in range(top + 1)]
        train_t, test_t = train_values.astype(np.int64), test_values.astype(np.int64)
    else:
        names = sorted({str(v) for v in train_values})
        lookup = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(v) for v in test_values} - set(names))
        if unknown:
            raise ValueError(
                f"test labels {unknown[:5]} of {where} never occur in training; "
                "every test class must appear in the training split"
            )
        train_t = np.array([lookup[str(v)] for v in train_values], dtype=np.int64)
        test_t = np.array([lookup[str(v)] for v in test_values], dtype=np.int64)
    return names, torch.from_numpy(train_t), torch.from_numpy(test_t)


def _encoded_images(ds: Any, column: str, where: str) -> list[Path | bytes]:
    """Encoded bytes (or file paths) of an ``Image`` column, without decoding via PIL."""
    import datasets

    if not isinstance(ds.features[column], datasets.Image):
        raise ValueError(
            f"column '{column}' of '{where}' is {ds.features[column]}, not an Image feature; "
            "point data.image_column at the image column"
        )
    raw = ds.cast_column(column, datasets.Image(decode=False))[column]
    return [item["bytes"] if item.get("bytes") is not None else Path(item["path"]) for item in raw]


def _guess_channels(first: Path | bytes) -> int:
    data = first.read_bytes() if isinstance(first, Path) else first
    with Image.open(io.BytesIO(data)) as image:
        return 1 if image.mode in _GRAY_MODES else 3
