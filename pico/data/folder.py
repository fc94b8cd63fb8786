"""Image folders (``root/train/<class>/*.jpg``) decoded once into uint8 tensors.

Decoding runs on a thread pool: torchvision's decoders release the GIL, so threads
scale across cores without worker processes. Formats torchvision cannot decode (BMP,
TIFF, PPM) fall back to Pillow.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image

from pico.data.bundle import Split
from pico.data.sources import SourceData, channel_stats, missing_path_error

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
_CHUNK = 512
_MODES = {1: (ImageReadMode.GRAY, "L"), 3: (ImageReadMode.RGB, "RGB")}


def load_image_folder(
    root: str,
    image_size: int | None = None,
    channels: int = 3,
    train_dir: str = "train",
    test_dir: str = "test",
    num_threads: int = 0,
    keep_aspect: bool = False,
) -> SourceData:
    """Decode ``root/<train_dir>/<class>/*`` and ``root/<test_dir>/<class>/*`` into tensors.

    Classes are the sub-folder names, sorted; the test split must have the same ones.
    ``image_size`` resizes every image to a square of that side (needed when sizes
    differ): squashed, or with ``keep_aspect`` the shorter side resized to it and the
    central square kept (see :func:`decode_images`); ``channels`` is 1 (grayscale) or 3
    (RGB); ``num_threads=0`` uses all cores.
    """
    base = Path(root).expanduser()
    layout = f"ROOT/{train_dir}/<class>/*.jpg and ROOT/{test_dir}/<class>/*.jpg"
    fix = "pass data.root=DIR pointing at a folder with that layout"
    if not (base / train_dir).is_dir():
        raise missing_path_error(base / train_dir, "training image folder", layout, fix)
    if not (base / test_dir).is_dir():
        raise missing_path_error(base / test_dir, "test image folder", layout, fix)
    class_names, train_files, train_targets = list_image_folder(base / train_dir)
    test_classes, test_files, test_targets = list_image_folder(base / test_dir, require_all=False)
    if test_classes != class_names:
        only_train = sorted(set(class_names) - set(test_classes))
        only_test = sorted(set(test_classes) - set(class_names))
        raise ValueError(
            f"class folders of '{base / train_dir}' and '{base / test_dir}' differ "
            f"(only in train: {only_train}, only in test: {only_test}); "
            "give both splits the same class sub-folders"
        )
    train_images, test_images = decode_splits(
        train_files, test_files, channels, image_size, num_threads, keep_aspect
    )
    mean, std = channel_stats(train_images)
    return SourceData(
        train=Split(train_images, torch.tensor(train_targets, dtype=torch.int64)),
        test=Split(test_images, torch.tensor(test_targets, dtype=torch.int64)),
        class_names=class_names,
        kind="image",
        mean=mean,
        std=std,
    )


def list_image_folder(
    directory: Path, require_all: bool = True
) -> tuple[list[str], list[Path], list[int]]:
    """Sorted class names, image paths and class indices of ``directory/<class>/*``.

    With ``require_all`` every class folder must hold at least one image.
    """
    classes = sorted(
        p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not classes:
        raise ValueError(
            f"'{directory}' has no class sub-folders; expected {directory}/<class>/<image files>"
        )
    files: list[Path] = []
    targets: list[int] = []
    for index, name in enumerate(classes):
        images = sorted(
            p
            for p in (directory / name).iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if require_all and not images:
            raise ValueError(
                f"class folder '{directory / name}' holds no images with suffixes "
                f"{sorted(IMAGE_SUFFIXES)}; add images or remove the folder"
            )
        files.extend(images)
        targets.extend([index] * len(images))
    return classes, files, targets


def _decode_one(source: Path | bytes, channels: int) -> Tensor:
    """Decode one encoded image (a file path or its bytes) to uint8 (channels, H, W)."""
    mode, pil_mode = _MODES[channels]
    raw = source.read_bytes() if isinstance(source, Path) else source
    if not raw:
        raise ValueError(f"image {_describe(source)} is empty (0 bytes); remove or replace it")
    try:
        image: Tensor | None = decode_image(
            torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=mode
        )
    except RuntimeError:  # a format torchvision cannot decode
        image = None
    if image is not None and image.ndim == 4:  # animated GIF: keep the first frame
        image = image[0]
    if image is None or image.shape[0] != channels:  # GIF/WebP ignore the grayscale mode
        image = _decode_with_pillow(raw, pil_mode, source)
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return image


def _decode_with_pillow(raw: bytes, pil_mode: str, source: Path | bytes) -> Tensor:
    try:
        with Image.open(io.BytesIO(raw)) as pil:
            array = np.asarray(pil.convert(pil_mode))
    except OSError as err:
        raise ValueError(
            f"cannot decode {_describe(source)} as an image ({err}); remove or replace it"
        ) from err
    return torch.from_numpy(array.reshape(*array.shape[:2], -1).copy()).permute(2, 0, 1)


def decode_images(
    sources: Sequence[Path | bytes],
    channels: int,
    image_size: int | None = None,
    num_threads: int = 0,
    keep_aspect: bool = False,
) -> Tensor:
    """Decode many encoded images into one uint8 tensor (N, channels, H, W), in parallel.

    With ``image_size`` every image whose size differs is resized (antialiased) to a
    square of that side; without it all images must share one size. ``keep_aspect``
    resizes the shorter side to ``image_size`` instead and crops the central square,
    torchvision's ``Resize(image_size)`` then ``CenterCrop(image_size)``: the largest
    square of the image, undistorted.
    """
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if keep_aspect and not image_size:
        raise ValueError(
            "keep_aspect resizes images to a square of side image_size, but image_size is "
            "not set; pass data.image_size=N, or keep_aspect=false to keep the images as they are"
        )
    # torchvision >= 0.29 flags its image decoders as deprecated in favour of TorchCodec.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        return _decode_all(sources, channels, image_size, num_threads, keep_aspect)


def decode_splits(
    train: Sequence[Path | bytes],
    test: Sequence[Path | bytes],
    channels: int,
    image_size: int | None = None,
    num_threads: int = 0,
    keep_aspect: bool = False,
) -> tuple[Tensor, Tensor]:
    """Decode the train and test images; both splits must end with one image shape."""
    train_images = decode_images(train, channels, image_size, num_threads, keep_aspect)
    test_images = decode_images(test, channels, image_size, num_threads, keep_aspect)
    if train_images.shape[1:] != test_images.shape[1:]:
        raise ValueError(
            f"train images are {tuple(train_images.shape[1:])} but test images are "
            f"{tuple(test_images.shape[1:])}; pass data.image_size=N to resize both"
        )
    return train_images, test_images


def _decode_all(
    sources: Sequence[Path | bytes],
    channels: int,
    image_size: int | None,
    num_threads: int,
    keep_aspect: bool,
) -> Tensor:
    if not sources:
        size = image_size or 0
        return torch.empty((0, channels, size, size), dtype=torch.uint8)
    first = _decode_one(sources[0], channels)
    height, width = (image_size, image_size) if image_size else tuple(first.shape[1:])
    out = torch.empty((len(sources), channels, height, width), dtype=torch.uint8)
    mismatched: list[tuple[int, tuple[int, ...]]] = []

    def work(start: int) -> None:
        for i in range(start, min(start + _CHUNK, len(sources))):
            image = first if i == 0 else _decode_one(sources[i], channels)
            if tuple(image.shape[1:]) != (height, width):
                if image_size is None:
                    mismatched.append((i, tuple(image.shape[1:])))
                    continue
                image = _to_square(image, height, keep_aspect)
            out[i] = image

    threads = num_threads or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, range(0, len(sources), _CHUNK)))
    if mismatched:
        mismatched.sort()
        seen = [f"#0 {_describe(sources[0])}: {(height, width)}"] + [
            f"#{i} {_describe(sources[i])}: {size}" for i, size in mismatched[:4]
        ]
        raise ValueError(
            f"images differ in size ({len(mismatched)} of {len(sources)} differ from the first; "
            f"{'; '.join(seen)}); pass data.image_size=N to resize every image to N x N"
        )
    return out


def _to_square(image: Tensor, size: int, keep_aspect: bool) -> Tensor:
    """``image`` (C, H, W) as a ``size`` x ``size`` square: squashed, or with ``keep_aspect``
    its shorter side resized to ``size`` and the central square cropped."""
    if not keep_aspect:
        return TF.resize(image, [size, size], antialias=True)
    if min(image.shape[1:]) != size:
        image = TF.resize(image, [size], antialias=True)
    return TF.center_crop(image, [size, size])


def _describe(source: Path | bytes) -> str:
    return f"'{source}'" if isinstance(source, Path) else f"an image of {len(source)} bytes"
