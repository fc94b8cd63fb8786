"""Hugging Face sources from local parquet files and image folders (offline)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from pico.data.hf import load_hf
from pico.data.sources import load_data

datasets = pytest.importorskip("datasets")

CLASSES = ["ant", "bee", "cow"]
HF_YAML = Path(__file__).resolve().parents[1] / "configs" / "data" / "hf.yaml"


@pytest.fixture(autouse=True)
def offline_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_parquet(path: Path, n: int, seed: int, gray: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    shape = (5, 4) if gray else (5, 4, 3)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    labels = rng.integers(0, len(CLASSES), n).tolist()
    cands = [sorted({y, int(rng.integers(0, len(CLASSES)))}) for y in labels]
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "label": datasets.ClassLabel(names=CLASSES),
            "cands": datasets.Sequence(datasets.Value("int64")),
        }
    )
    table = {
        "img": [{"bytes": png(a), "path": None} for a in arrays],
        "label": labels,
        "cands": cands,
    }
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))
    images = np.stack([a[None] if gray else a.transpose(2, 0, 1) for a in arrays])
    return {"images": images, "labels": labels, "cands": cands}


def test_parquet_images_labels_and_candidates(tmp_path):
    train = write_parquet(tmp_path / "train.parquet", 12, seed=0)
    test = write_parquet(tmp_path / "test.parquet", 5, seed=1)
    files = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    data = load_hf(
        "parquet",
        image_column="img",
        data_files=files,
        candidates_column="cands",
        cache_dir=str(tmp_path / "cache"),
    )
    assert data.class_names == CLASSES and data.kind == "image"
    assert data.train.inputs.dtype == torch.uint8 and data.train.inputs.shape == (12, 3, 5, 4)
    np.testing.assert_array_equal(data.train.inputs.numpy(), train["images"])
    np.testing.assert_array_equal(data.test.inputs.numpy(), test["images"])
    np.testing.assert_array_equal(data.train.targets.numpy(), train["labels"])
    expected = np.zeros((12, 3), dtype=bool)
    for row, cands in enumerate(train["cands"]):
        expected[row, cands] = True
    np.testing.assert_array_equal(data.train.candidates.numpy(), expected)
    assert data.test.candidates is None
    ref = train["images"].astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, ref.mean(axis=(0, 2, 3)))


def test_grayscale_detected_and_resize(tmp_path):
    write_parquet(tmp_path / "train.parquet", 4, seed=2, gray=True)
    write_parquet(tmp_path / "test.parquet", 2, seed=3, gray=True)
    files = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    data = load_hf("parquet", image_column="img", data_files=files, cache_dir=str(tmp_path / "c"))
    assert data.train.inputs.shape == (4, 1, 5, 4)
    resized = load_hf(
        "parquet", image_column="img", data_files=files, image_size=3, cache_dir=str(tmp_path / "c")
    )
    assert resized.train.inputs.shape == (4, 1, 3, 3)


def test_imagefolder_builder(tmp_path):
    rng = np.random.default_rng(4)
    written = {}
    for split in ("train", "test"):
        for name in ("b_class", "a_class"):
            array = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            (tmp_path / "imgs" / split / name / "0.png").write_bytes(png(array))
            written[split, name] = array.transpose(2, 0, 1)
    data = load_hf("imagefolder", data_dir=str(tmp_path / "imgs"), cache_dir=str(tmp_path / "c"))
    assert data.class_names == ["a_class", "b_class"]
    for split, part in (("train", data.train), ("test", data.test)):
        for image, target in zip(part.inputs, part.targets, strict=True):
            name = data.class_names[int(target)]
            np.testing.assert_array_equal(image.numpy(), written[split, name])


def test_hf_errors(tmp_path):
    write_parquet(tmp_path / "train.parquet", 3, seed=5)
    only_train = {"train": str(tmp_path / "train.parquet")}
    cache = str(tmp_path / "c")
    with pytest.raises(ValueError, match=r"splits \['train'\], not \['test'\]"):
        load_hf("parquet", image_column="img", data_files=only_train, cache_dir=cache)
    both = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "train.parquet")}
    with pytest.raises(ValueError, match="column 'image' is not in split"):
        load_hf("parquet", data_files=both, cache_dir=cache)
    with pytest.raises(ValueError, match="not an Image feature"):
        load_hf("parquet", image_column="label", data_files=both, cache_dir=cache)
    with pytest.raises(ValueError, match=r"could not be loaded.*data_files"):
        load_hf("parquet", data_files={"train": str(tmp_path / "missing.parquet")}, cache_dir=cache)
    with pytest.raises(ValueError, match=r"'someone/absent'.*local cache"):
        load_hf("someone/absent", cache_dir=cache)


def test_hf_yaml_with_candidate_column_through_load_data(tmp_path):
    train = write_parquet(tmp_path / "train.parquet", 30, seed=6)
    write_parquet(tmp_path / "test.parquet", 4, seed=7)
    root = OmegaConf.merge({"seed": 0}, OmegaConf.load(HF_YAML))
    files = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    root.data.update(
        {
            "path": "parquet",
            "data_files": files,
            "image_column": "img",
            "candidates_column": "cands",
        }
    )
    with pytest.raises(ValueError, match=r"data\.candidates=null"):
        load_data(root.data)
    root.data.candidates = None
    bundle = load_data(root.data)
    assert len(bundle.train) + len(bundle.val) == 30 and len(bundle.test) == 4
    rows = {
        bytes(img.numpy().tobytes()): i for i, img in enumerate(torch.from_numpy(train["images"]))
    }
    for split in (bundle.train, bundle.val):
        for image, cand in zip(split.inputs, split.candidates, strict=True):
            source_row = rows[bytes(image.numpy().tobytes())]
            assert sorted(torch.nonzero(cand).flatten().tolist()) == train["cands"][source_row]
