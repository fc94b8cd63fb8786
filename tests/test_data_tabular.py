"""Real-world partial-label .mat files as a tabular source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from omegaconf import OmegaConf

from pico.data.bundle import stratified_split
from pico.data.sources import load_data
from pico.data.tabular import load_pll_mat_source

MAT_YAML = Path(__file__).resolve().parents[1] / "configs" / "data" / "mat.yaml"


def write_mat(path: Path, n: int = 60, d: int = 4, c: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    data = rng.normal(3.0, 2.0, (n, d))
    data[:, -1] = 5.0  # a constant feature
    labels = np.arange(n) % c
    partial = rng.random((c, n)) < 0.3
    partial[labels, np.arange(n)] = True
    target = np.zeros((c, n))
    target[labels, np.arange(n)] = 1
    scipy.io.savemat(
        path, {"data": data, "target": target, "partial_target": partial.astype(float)}
    )
    return {"data": data, "labels": labels, "partial": partial.T}


def test_split_standardise_and_candidates(tmp_path):
    raw = write_mat(tmp_path / "x.mat")
    data = load_pll_mat_source(str(tmp_path / "x.mat"), test_fraction=0.2, seed=3)
    train_idx, test_idx = stratified_split(torch.from_numpy(raw["labels"]), 0.2, 3)
    train_idx, test_idx = train_idx.numpy(), test_idx.numpy()
    mean = raw["data"][train_idx].mean(axis=0)
    std = raw["data"][train_idx].std(axis=0)
    std[std == 0] = 1.0
    assert data.kind == "tabular" and data.class_names == ["0", "1", "2"]
    assert data.train.inputs.dtype == torch.float32 and data.train.inputs.shape == (48, 4)
    np.testing.assert_allclose(
        data.train.inputs.numpy(), (raw["data"][train_idx] - mean) / std, atol=1e-5
    )
    np.testing.assert_allclose(
        data.test.inputs.numpy(), (raw["data"][test_idx] - mean) / std, atol=1e-5
    )
    np.testing.assert_array_equal(data.train.targets.numpy(), raw["labels"][train_idx])
    np.testing.assert_array_equal(data.train.candidates.numpy(), raw["partial"][train_idx])
    np.testing.assert_array_equal(data.test.candidates.numpy(), raw["partial"][test_idx])
    assert np.all(data.train.inputs[:, -1].numpy() == 0)


def test_without_standardising(tmp_path):
    raw = write_mat(tmp_path / "x.mat")
    data = load_pll_mat_source(str(tmp_path / "x.mat"), standardize=False, seed=0)
    train_idx, _ = stratified_split(torch.from_numpy(raw["labels"]), 0.2, 0)
    np.testing.assert_allclose(data.train.inputs.numpy(), raw["data"][train_idx.numpy()], rtol=1e-6)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.mat.*data\.path=FILE\.mat"):
        load_pll_mat_source(str(tmp_path / "nope.mat"))


def test_mat_yaml_through_load_data(tmp_path):
    raw = write_mat(tmp_path / "x.mat", n=90)
    root = OmegaConf.merge({"seed": 1}, OmegaConf.load(MAT_YAML))
    root.data.path = str(tmp_path / "x.mat")
    bundle = load_data(root.data)
    assert bundle.kind == "tabular" and bundle.num_classes == 3 and bundle.input_shape == (4,)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 90
    assert bundle.val.candidates is not None and bundle.test.candidates is not None
    np.testing.assert_array_equal(np.bincount(bundle.val.targets.numpy()), [2, 2, 2])
    assert int(raw["partial"].sum()) == int(
        sum(s.candidates.sum() for s in (bundle.train, bundle.val, bundle.test))
    )


def test_auto_scaling_keeps_binary_columns(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    data = np.column_stack(
        [rng.normal(3.0, 2.0, n), (rng.random(n) < 0.05).astype(float), np.full(n, 1.0)]
    )
    labels = np.arange(n) % 3
    partial = np.zeros((3, n))
    partial[labels, np.arange(n)] = 1
    scipy.io.savemat(
        tmp_path / "b.mat", {"data": data, "target": partial, "partial_target": partial}
    )
    auto = load_pll_mat_source(str(tmp_path / "b.mat"), seed=0)
    every = load_pll_mat_source(str(tmp_path / "b.mat"), standardize=True, seed=0)
    train_idx, _ = stratified_split(torch.from_numpy(labels), 0.2, 0)
    raw = data[train_idx.numpy()]
    # the continuous column is z-scored either way, the 0/1 columns only with standardize=True
    np.testing.assert_allclose(auto.train.inputs[:, 0].numpy(), every.train.inputs[:, 0].numpy())
    np.testing.assert_array_equal(auto.train.inputs[:, 1:].numpy(), raw[:, 1:])
    rare = raw[:, 1]
    expected = (rare - rare.mean()) / rare.std()
    np.testing.assert_allclose(every.train.inputs[:, 1].numpy(), expected, rtol=1e-5)
    assert every.train.inputs[:, 1].max() > 3  # the blown-up indicator auto avoids


def test_unknown_scaling_mode_names_the_key(tmp_path):
    write_mat(tmp_path / "x.mat")
    with pytest.raises(ValueError, match=r"data\.source\.standardize='yes'.*auto, true or false"):
        load_pll_mat_source(str(tmp_path / "x.mat"), standardize="yes")
