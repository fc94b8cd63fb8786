"""torchvision sources on tiny fake roots, and the Debian Fashion-MNIST idx files."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from pico.data.vision import DEBIAN_FASHION_MNIST, STATS, load_torchvision, read_idx


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(directory: Path, seed: int, gz: bool, n_train: int = 6, n_test: int = 4):
    """Fake (Fashion-)MNIST idx files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[prefix] = (images, labels)
        for stem, array in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", labels),
        ):
            data = idx_bytes(array)
            if gz:
                (directory / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / stem).write_bytes(data)
    return arrays


def assert_matches(data, arrays):
    for split, prefix in ((data.train, "train"), (data.test, "t10k")):
        images, labels = arrays[prefix]
        assert split.inputs.dtype == torch.uint8 and split.inputs.shape == (len(images), 1, 28, 28)
        np.testing.assert_array_equal(split.inputs[:, 0].numpy(), images)
        np.testing.assert_array_equal(split.targets.numpy(), labels.astype(np.int64))
        assert split.targets.dtype == torch.int64


def test_read_idx_roundtrip_and_errors(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(idx_bytes(array)[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_mnist_from_torchvision_root(tmp_path):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", seed=0, gz=False)
    data = load_torchvision("mnist", str(tmp_path))
    assert_matches(data, arrays)
    assert len(data.class_names) == 10 and data.kind == "image"
    assert (data.mean, data.std) == STATS["mnist"]


def test_fashion_mnist_torchvision_root_wins_over_debian(tmp_path):
    arrays = write_idx_set(tmp_path / "root" / "FashionMNIST" / "raw", seed=1, gz=False)
    write_idx_set(tmp_path / "debian", seed=2, gz=True)
    data = load_torchvision(
        "fashion_mnist", str(tmp_path / "root"), debian_dir=str(tmp_path / "debian")
    )
    assert_matches(data, arrays)
    assert data.class_names[0] == "T-shirt/top"


def test_fashion_mnist_debian_layout(tmp_path):
    arrays = write_idx_set(tmp_path / "debian", seed=3, gz=True)
    data = load_torchvision("fashion_mnist", None, debian_dir=str(tmp_path / "debian"))
    assert_matches(data, arrays)
    assert (data.mean, data.std) == STATS["fashion_mnist"]
    # a root without torchvision files falls back to the Debian directory
    (tmp_path / "empty").mkdir()
    again = load_torchvision(
        "fashion_mnist", str(tmp_path / "empty"), debian_dir=str(tmp_path / "debian")
    )
    assert torch.equal(again.train.inputs, data.train.inputs)


def test_fashion_mnist_missing_debian_files(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere.*dataset-fashion-mnist.*data\.root"):
        load_torchvision("fashion_mnist", None, debian_dir=str(tmp_path / "nowhere"))


@pytest.mark.skipif(
    not Path(DEBIAN_FASHION_MNIST, "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_debian_fashion_mnist():
    data = load_torchvision("fashion_mnist", None)
    assert data.train.inputs.shape == (60000, 1, 28, 28)
    assert data.test.inputs.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(np.bincount(data.train.targets.numpy()), np.full(10, 6000))
    mean = data.train.inputs.double().mean().item() / 255.0
    assert abs(mean - STATS["fashion_mnist"][0][0]) < 1e-3


def write_cifar10(root: Path, per_batch: int = 2, n_test: int = 3):
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    written = {}
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        written[name] = (data, labels)
        with open(base / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names}, fh)
    return written, names


def test_cifar10_pickles_become_nchw(tmp_path, monkeypatch):
    written, names = write_cifar10(tmp_path)
    # the fake batches cannot match torchvision's md5 sums
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *args, **kwargs: True)
    data = load_torchvision("cifar10", str(tmp_path))
    train_rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = [y for i in range(1, 6) for y in written[f"data_batch_{i}"][1]]
    # each pickled row is the R plane, then G, then B, each 32x32 row-major
    np.testing.assert_array_equal(data.train.inputs.numpy(), train_rows.reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(data.train.targets.numpy(), train_labels)
    np.testing.assert_array_equal(
        data.test.inputs.numpy(), written["test_batch"][0].reshape(-1, 3, 32, 32)
    )
    assert data.train.inputs.is_contiguous() and data.class_names == names
    assert (data.mean, data.std) == STATS["cifar10"]


def test_missing_root_names_path_layout_and_fix(tmp_path):
    with pytest.raises(ValueError, match=r"void.*cifar-10-batches-py.*data\.download=true"):
        load_torchvision("cifar10", str(tmp_path / "void"))
    with pytest.raises(ValueError, match=r"data\.root=DIR"):
        load_torchvision("svhn", None)
    with pytest.raises(ValueError, match="choose one of"):
        load_torchvision("imagenet", str(tmp_path))
