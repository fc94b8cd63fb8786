"""Image folders decoded into uint8 tensors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from pico.data.folder import decode_images, load_image_folder
from pico.data.sources import channel_stats


def save(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def make_folder(root: Path, classes=("dog", "cat"), per_class=3, size=(6, 5), gray=False, seed=0):
    """PNG image folder; returns {split: (images NCHW uint8, targets)} in loader order."""
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "test"):
        images, targets = [], []
        for index, name in enumerate(sorted(classes)):
            for i in range(per_class):
                shape = size if gray else (*size, 3)
                array = rng.integers(0, 256, shape, dtype=np.uint8)
                save(root / split / name / f"{i:03d}.png", array)
                images.append(array[None] if gray else array.transpose(2, 0, 1))
                targets.append(index)
        out[split] = (np.stack(images), np.array(targets))
    return out


def test_rgb_folder_exact_pixels_sorted_classes(tmp_path):
    expected = make_folder(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    data = load_image_folder(str(tmp_path), num_threads=2)
    assert data.class_names == ["cat", "dog"] and data.kind == "image"
    for split, name in ((data.train, "train"), (data.test, "test")):
        images, targets = expected[name]
        assert split.inputs.dtype == torch.uint8 and split.inputs.shape == (6, 3, 6, 5)
        np.testing.assert_array_equal(split.inputs.numpy(), images)
        np.testing.assert_array_equal(split.targets.numpy(), targets)
    assert (data.mean, data.std) == channel_stats(data.train.inputs)


def test_grayscale_folder(tmp_path):
    expected = make_folder(tmp_path, gray=True)
    data = load_image_folder(str(tmp_path), channels=1)
    np.testing.assert_array_equal(data.train.inputs.numpy(), expected["train"][0])
    assert len(data.mean) == 1


def test_thread_count_does_not_change_result(tmp_path):
    make_folder(tmp_path, per_class=40, size=(4, 4))
    one = load_image_folder(str(tmp_path), num_threads=1)
    two = load_image_folder(str(tmp_path), num_threads=2)
    assert torch.equal(one.train.inputs, two.train.inputs)


def test_mixed_sizes_need_image_size(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    save(tmp_path / "train" / "a" / "0.png", small)
    save(tmp_path / "train" / "a" / "1.png", big)
    save(tmp_path / "test" / "a" / "0.png", small)
    with pytest.raises(
        ValueError, match=r"differ in size.*\(6, 5\).*#1 '.*1\.png': \(12, 10\).*image_size"
    ):
        load_image_folder(str(tmp_path))
    data = load_image_folder(str(tmp_path), image_size=6)
    assert data.train.inputs.shape == (2, 3, 6, 6)
    resized = TF.resize(torch.from_numpy(big).permute(2, 0, 1), [6, 6], antialias=True)
    assert torch.equal(data.train.inputs[1], resized)
    resized_small = TF.resize(torch.from_numpy(small).permute(2, 0, 1), [6, 6], antialias=True)
    assert torch.equal(data.train.inputs[0], resized_small)


def test_keep_aspect_resizes_the_shorter_side_and_keeps_the_central_square(tmp_path):
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((9, 14, 3), (13, 6, 3))]
    square = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)  # already the size: kept as is
    files = []
    for i, array in enumerate([*arrays, square]):
        save(tmp_path / f"{i}.png", array)
        files.append(tmp_path / f"{i}.png")
    decoded = decode_images(files, channels=3, image_size=6, keep_aspect=True)
    assert decoded.shape == (3, 3, 6, 6)
    for image, array in zip(decoded, arrays, strict=False):
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        expected = TF.center_crop(TF.resize(tensor, [6], antialias=True), [6, 6])
        assert torch.equal(image, expected)  # torchvision's Resize(6) + CenterCrop(6)
    assert torch.equal(decoded[2], torch.from_numpy(square).permute(2, 0, 1))
    with pytest.raises(ValueError, match=r"keep_aspect.*data\.image_size=N"):
        decode_images(files, channels=3, keep_aspect=True)


def test_jpeg_and_pillow_only_formats(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    save(tmp_path / "x.bmp", array)
    save(tmp_path / "x.jpg", array, quality=95)
    decoded = decode_images([tmp_path / "x.bmp", tmp_path / "x.jpg"], channels=3)
    np.testing.assert_array_equal(decoded[0].numpy(), array.transpose(2, 0, 1))
    with Image.open(tmp_path / "x.jpg") as pil:
        reference = np.asarray(pil.convert("RGB")).transpose(2, 0, 1).astype(int)
    assert np.abs(decoded[1].numpy().astype(int) - reference).max() <= 3
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    from_bytes = decode_images([buffer.getvalue()], channels=3)
    np.testing.assert_array_equal(from_bytes[0].numpy(), array.transpose(2, 0, 1))


def test_grayscale_from_formats_that_ignore_the_mode(tmp_path):
    rng = np.random.default_rng(2)
    array = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    save(tmp_path / "g.webp", array, lossless=True)
    save(tmp_path / "g.gif", array)
    decoded = decode_images([tmp_path / "g.webp", tmp_path / "g.gif"], channels=1)
    assert decoded.shape == (2, 1, 5, 7)
    for path, image in zip(("g.webp", "g.gif"), decoded, strict=True):
        with Image.open(tmp_path / path) as pil:
            np.testing.assert_array_equal(image[0].numpy(), np.asarray(pil.convert("L")))


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"cannot decode '.*bad\.png'"):
        decode_images([tmp_path / "bad.png"], channels=3)


def test_sixteen_bit_png_scaled_to_uint8(tmp_path):
    array = np.array([[0, 65535], [257 * 128, 257 * 7]], dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "deep.png")
    decoded = decode_images([tmp_path / "deep.png"], channels=1)
    assert decoded.dtype == torch.uint8
    np.testing.assert_array_equal(decoded[0, 0].numpy(), [[0, 255], [128, 7]])


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere.*ROOT/train/<class>.*data\.root"):
        load_image_folder(str(tmp_path / "nowhere"))
    make_folder(tmp_path / "a")
    (tmp_path / "a" / "test" / "cat").rename(tmp_path / "a" / "test" / "kitten")
    with pytest.raises(ValueError, match=r"only in train: \['cat'\], only in test: \['kitten'\]"):
        load_image_folder(str(tmp_path / "a"))
    (tmp_path / "b" / "train" / "empty").mkdir(parents=True)
    (tmp_path / "b" / "test").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(str(tmp_path / "b"))
    with pytest.raises(ValueError, match="channels must be 1"):
        decode_images([tmp_path / "x.png"], channels=4)
