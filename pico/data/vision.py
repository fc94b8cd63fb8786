"""Standard labelled image sets through ``torchvision.datasets``, held as uint8 tensors.

Fashion-MNIST can also come from the Debian package ``dataset-fashion-mnist``, which
installs the original idx files under ``/usr/share/datasets/fashion-mnist/``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd
from torch import Tensor

from pico.data.bundle import Split
from pico.data.sources import SourceData, missing_path_error

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

# Published per-channel statistics of each training set on the 0-1 scale.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
}

LAYOUTS: dict[str, str] = {
    "cifar10": "ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}",
    "cifar100": "ROOT/cifar-100-python/{train, test, meta}",
    "mnist": "ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fashion_mnist": "ROOT/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "svhn": "ROOT/{train,test}_32x32.mat",
    "stl10": "ROOT/stl10_binary/{train,test}_{X,y}.bin",
}

STL10_CLASSES = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
]  # fmt: skip

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_torchvision(
    name: str,
    root: str | None,
    download: bool = False,
    debian_dir: str = DEBIAN_FASHION_MNIST,
) -> SourceData:
    """Load the labelled train/test splits of a torchvision data set as uint8 NCHW tensors.

    ``name`` is one of cifar10, cifar100, mnist, fashion_mnist, svhn, stl10. For
    fashion_mnist, ``root=None`` (or a root without torchvision's files) reads the idx
    files in ``debian_dir``.
    """
    if name not in STATS:
        raise ValueError(f"unknown torchvision data set '{name}'; choose one of {sorted(STATS)}")
    mean, std = STATS[name]
    if name == "fashion_mnist":
        idx_dir = _fashion_idx_dir(root, download, debian_dir)
        if idx_dir is not None:
            return SourceData(
                train=_idx_split(idx_dir, "train"),
                test=_idx_split(idx_dir, "test"),
                class_names=list(tvd.FashionMNIST.classes),
                kind="image",
                mean=mean,
                std=std,
            )
    if root is None:
        raise ValueError(
            f"data set '{name}' needs a directory: pass data.root=DIR "
            f"(layout {LAYOUTS[name]}), adding data.download=true to fetch it there"
        )
    root_path = Path(root).expanduser()
    try:
        train, classes = _torchvision_split(name, root_path, True, download)
        test, _ = _torchvision_split(name, root_path, False, download)
    except RuntimeError as err:
        raise missing_path_error(
            root_path,
            f"torchvision data set '{name}' ({err})",
            LAYOUTS[name],
            "pass data.root=DIR pointing at that layout, or data.download=true to download it",
        ) from err
    return SourceData(train=train, test=test, class_names=classes, kind="image", mean=mean, std=std)


def _torchvision_split(
    name: str, root: Path, train: bool, download: bool
) -> tuple[Split, list[str]]:
    split = "train" if train else "test"
    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        ds = cls(str(root), train=train, download=download)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
        return _split(images, ds.targets), list(ds.classes)
    if name in ("mnist", "fashion_mnist"):
        cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
        ds = cls(str(root), train=train, download=download)
        return _split(ds.data.unsqueeze(1), ds.targets), list(ds.classes)
    if name == "svhn":
        ds = tvd.SVHN(str(root), split=split, download=download)
        return _split(torch.from_numpy(ds.data), ds.labels), [str(d) for d in range(10)]
    ds = tvd.STL10(str(root), split=split, download=download)
    classes = list(getattr(ds, "classes", STL10_CLASSES))
    return _split(torch.from_numpy(ds.data), ds.labels), classes


def _split(images: Tensor, targets: object) -> Split:
    labels = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    return Split(images.to(torch.uint8).contiguous(), labels)


def _fashion_idx_dir(root: str | None, download: bool, debian_dir: str) -> Path | None:
    """Directory holding Fashion-MNIST idx files, or None to go through torchvision."""
    debian = Path(debian_dir)
    if root is None:
        if _has_idx_files(debian):
            return debian
        raise missing_path_error(
            debian,
            "Fashion-MNIST idx files",
            "DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz",
            "install the Debian package dataset-fashion-mnist, or pass data.root=DIR "
            "(with data.download=true to download through torchvision)",
        )
    root_path = Path(root).expanduser()
    if download or _has_idx_files(root_path / "FashionMNIST" / "raw"):
        return None
    if _has_idx_files(root_path):
        return root_path
    if _has_idx_files(debian):
        return debian
    return None


def _idx_path(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _has_idx_files(directory: Path) -> bool:
    stems = [stem for pair in _IDX_FILES.values() for stem in pair]
    return all(_idx_path(directory, stem) is not None for stem in stems)


def _idx_split(directory: Path, split: str) -> Split:
    image_stem, label_stem = _IDX_FILES[split]
    images = read_idx(_idx_path(directory, image_stem))  # type: ignore[arg-type]
    labels = read_idx(_idx_path(directory, label_stem))  # type: ignore[arg-type]
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(
            f"idx files in '{directory}' have shapes {images.shape} and {labels.shape}; "
            "expected images (N, H, W) and labels (N,)"
        )
    return Split(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
    )


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) of unsigned bytes into an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(
            f"'{path}' is not an idx file of unsigned bytes (bad magic number {raw[:4].hex()}); "
            "use the original Fashion-MNIST/MNIST idx files"
        )
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise ValueError(
            f"'{path}' holds {len(raw) - offset} bytes of data but its header says {dims}; "
            "the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)
