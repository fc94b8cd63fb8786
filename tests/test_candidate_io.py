from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch

from pico.pll import (
    CandidateError,
    candidates_from_column,
    load_candidates_csv,
    load_candidates_npz,
    load_pll_mat,
)

CAND = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1], [0, 1, 1, 0]], dtype=bool)
LISTS = [list(np.nonzero(row)[0]) for row in CAND]
NAMES = ["cat", "dog", "bird", "fish"]


def _expected() -> torch.Tensor:
    return torch.from_numpy(CAND)


# ----------------------------------------------------------------------------- npz


@pytest.mark.parametrize("dtype", [bool, np.int64, np.float32])
def test_npz_dense(tmp_path: Path, dtype: type) -> None:
    path = tmp_path / "cand.npz"
    np.savez(path, candidates=CAND.astype(dtype))
    out = load_candidates_npz(path, num_classes=4, num_rows=5)
    assert out.dtype == torch.bool
    assert torch.equal(out, _expected())


def test_npz_index_lists(tmp_path: Path) -> None:
    path = tmp_path / "cand.npz"
    indices = np.concatenate(LISTS).astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in LISTS])])
    np.savez(path, indices=indices, offsets=offsets)
    assert torch.equal(load_candidates_npz(path, 4), _expected())


def test_npz_scipy_sparse(tmp_path: Path) -> None:
    path = tmp_path / "cand.npz"
    scipy.sparse.save_npz(path, scipy.sparse.csr_matrix(CAND.astype(np.int8)))
    assert torch.equal(load_candidates_npz(path, 4, num_rows=5), _expected())


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "cand.npz"
    np.savez(path, labels=CAND)
    with pytest.raises(CandidateError, match=r"\['labels'\].*'candidates'.*'offsets'"):
        load_candidates_npz(path, 4)
    np.savez(path, candidates=CAND)
    with pytest.raises(CandidateError, match="5 rows but the data has 6"):
        load_candidates_npz(path, 4, num_rows=6)
    with pytest.raises(CandidateError, match="4 columns but there are 3 classes"):
        load_candidates_npz(path, 3)
    np.savez(path, indices=np.array([0, 5]), offsets=np.array([0, 1, 2]))
    with pytest.raises(CandidateError, match=r"1 rows \(first: 1\)"):
        load_candidates_npz(path, 4)
    np.savez(path, indices=np.array([0, 1]), offsets=np.array([0, 1, 2]))
    with pytest.raises(CandidateError, match="2 candidate rows but the data has 3"):
        load_candidates_npz(path, 4, num_rows=3)


# ----------------------------------------------------------------------------- csv


def _write_csv(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_csv_ids_any_order(tmp_path: Path) -> None:
    path = tmp_path / "cand.csv"
    order = [3, 0, 4, 2, 1]
    _write_csv(path, ["index,candidates"] + [f"{i},{';'.join(map(str, LISTS[i]))}" for i in order])
    assert torch.equal(load_candidates_csv(path, 4, num_rows=5), _expected())


def test_csv_names(tmp_path: Path) -> None:
    path = tmp_path / "cand.csv"
    rows = [f"{i}, {' ; '.join(NAMES[j] for j in LISTS[i])}" for i in range(5)]
    _write_csv(path, ["index,candidates", *rows])
    assert torch.equal(load_candidates_csv(path, 4, class_names=NAMES), _expected())


def test_csv_extra_columns_and_mixed_tokens(tmp_path: Path) -> None:
    path = tmp_path / "cand.csv"
    _write_csv(path, ["candidates,index,note", "cat;2,0,a", "1,1,b"])
    out = load_candidates_csv(path, 4, class_names=NAMES)
    assert torch.equal(out, torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.bool))


@pytest.mark.parametrize(
    ("lines", "kwargs", "match"),
    [
        (["id,labels", "0,1"], {}, "header 'index,candidates'"),
        (["index,candidates", "0,1", "0,2"], {}, r"1 indices are repeated \(first: 0\)"),
        (["index,candidates", "0,1", "2,2", "3,1"], {"num_rows": 4}, "indices are missing"),
        (["index,candidates", "0,1", "5,2"], {}, "indices out of range"),
        (["index,candidates", "0,1", "x,2"], {}, "line 3: index 'x'"),
        (["index,candidates", "0,1", "1,cow"], {"class_names": NAMES}, "'cow'.*known names"),
        (["index,candidates", "0,1", "1,"], {}, r"1 rows \(first: 1\) are empty"),
        (["index,candidates", "0,1", "1,4"], {}, r"\[0, 4\)"),
    ],
)
def test_csv_errors(tmp_path: Path, lines: list[str], kwargs: dict, match: str) -> None:
    path = tmp_path / "cand.csv"
    _write_csv(path, lines)
    with pytest.raises(CandidateError, match=match):
        load_candidates_csv(path, 4, **kwargs)


# ----------------------------------------------------------------------------- column


def test_column_of_index_lists() -> None:
    assert torch.equal(candidates_from_column([list(r) for r in LISTS], 4), _expected())
    with pytest.raises(CandidateError, match="instead of a list"):
        candidates_from_column([0, 1], 4)


def test_column_from_hugging_face_dataset() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"candidates": [[int(j) for j in r] for r in LISTS]})
    assert torch.equal(candidates_from_column(ds["candidates"], 4), _expected())


# ----------------------------------------------------------------------------- mat

FEATURES = np.arange(15, dtype=np.float64).reshape(5, 3)
TARGETS = np.array([2, 1, 3, 3, 1])


def _onehot() -> np.ndarray:
    return np.eye(4)[TARGETS]


@pytest.mark.parametrize("sparse", [False, True])
def test_mat_standard_layout(tmp_path: Path, sparse: bool) -> None:
    path = tmp_path / "lost.mat"
    partial = CAND.T.astype(np.float64)
    target = _onehot().T
    if sparse:
        partial, target = scipy.sparse.csc_matrix(partial), scipy.sparse.csc_matrix(target)
    scipy.io.savemat(path, {"data": FEATURES, "target": target, "partial_target": partial})
    x, y, cand = load_pll_mat(path)
    assert x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(FEATURES).float())
    assert y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(TARGETS))
    assert torch.equal(cand, _expected())


def test_mat_n_by_c_and_label_vector(tmp_path: Path) -> None:
    path = tmp_path / "nxc.mat"
    scipy.io.savemat(
        path,
        {
            "data": scipy.sparse.csr_matrix(FEATURES),
            "target": (TARGETS + 1)[None, :],  # 1-based MATLAB labels
            "partial_target": CAND.astype(np.uint8),  # N x C
        },
    )
    x, y, cand = load_pll_mat(path)
    assert torch.equal(x, torch.from_numpy(FEATURES).float())
    assert torch.equal(y, torch.from_numpy(TARGETS))
    assert torch.equal(cand, _expected())


def test_mat_zero_based_label_vector(tmp_path: Path) -> None:
    path = tmp_path / "zero.mat"
    labels = np.array([0, 1, 2, 3, 1])
    cand = CAND.copy()
    cand[np.arange(5), labels] = True
    scipy.io.savemat(path, {"data": FEATURES, "target": labels, "partial_target": cand.T * 1.0})
    _, y, _ = load_pll_mat(path)
    assert torch.equal(y, torch.from_numpy(labels))


def test_mat_noisy_true_label_warns(tmp_path: Path) -> None:
    path = tmp_path / "noisy.mat"
    target = np.eye(4)[[1, 1, 3, 3, 1]].T  # row 0's true label 1 is not a candidate
    scipy.io.savemat(path, {"data": FEATURES, "target": target, "partial_target": CAND.T * 1.0})
    with pytest.warns(UserWarning, match=r"1 rows \(first: 0\)"):
        _, y, cand = load_pll_mat(path)
    assert y[0] == 1
    assert torch.equal(cand, _expected())


def test_mat_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.mat"
    scipy.io.savemat(path, {"data": FEATURES, "partial_target": CAND.T * 1.0})
    with pytest.raises(CandidateError, match=r"\['target'\].*found \['data', 'partial_target'\]"):
        load_pll_mat(path)
    scipy.io.savemat(
        path, {"data": FEATURES, "target": _onehot().T, "partial_target": np.ones((4, 6))}
    )
    with pytest.raises(CandidateError, match=r"'partial_target' has shape \(4, 6\).*5 rows"):
        load_pll_mat(path)
    scipy.io.savemat(
        path, {"data": FEATURES, "target": np.ones((4, 5)), "partial_target": CAND.T * 1.0}
    )
    with pytest.raises(CandidateError, match="one-hot"):
        load_pll_mat(path)
    scipy.io.savemat(
        path, {"data": FEATURES, "target": TARGETS + 7, "partial_target": CAND.T * 1.0}
    )
    with pytest.raises(CandidateError, match="neither 0-based nor 1-based"):
        load_pll_mat(path)
    empty = CAND.T * 1.0
    empty[:, 2] = 0
    scipy.io.savemat(path, {"data": FEATURES, "target": _onehot().T, "partial_target": empty})
    with pytest.raises(CandidateError, match="empty"):
        load_pll_mat(path)


def test_mat_label_vector_base_chosen_by_candidates(tmp_path: Path) -> None:
    path = tmp_path / "ambiguous.mat"
    labels = np.array([0, 1, 2, 2, 1])
    cand = np.eye(4, dtype=bool)[labels]
    cand[:, 3] = True
    stored = labels + 1  # 1..3: valid both as 0-based and as 1-based ids of 4 classes
    scipy.io.savemat(path, {"data": FEATURES, "target": stored, "partial_target": cand.T * 1.0})
    _, y, _ = load_pll_mat(path)
    assert torch.equal(y, torch.from_numpy(labels))


def test_mat_source_reports_and_drops_rare_classes(tmp_path: Path, caplog) -> None:
    import logging

    from pico.data.tabular import load_pll_mat_source

    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [1] * 30 + [3] * 2 + [4] * 30)  # class 2 empty, 3 rare
    n, c = len(labels), 5
    target = np.zeros((c, n))
    target[labels, np.arange(n)] = 1
    partial = (rng.random((c, n)) < 0.3).astype(float)
    partial[labels, np.arange(n)] = 1
    path = tmp_path / "rare.mat"
    scipy.io.savemat(path, {"data": rng.normal(size=(n, 4)), "target": target,
                            "partial_target": partial})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="pico.data.tabular"):
        kept = load_pll_mat_source(str(path), seed=0)
    report = caplog.records[0].getMessage()
    assert "1 classes have no rows (2)" in report and "1 have fewer than 5 rows (3)" in report
    assert kept.train.candidates.shape[1] == 5
    dropped = load_pll_mat_source(str(path), seed=0, min_class_count=3)
    assert dropped.class_names == ["0", "1", "4"]
    assert len(dropped.train) + len(dropped.test) == 90
    assert dropped.train.candidates.shape[1] == 3
    for split in (dropped.train, dropped.test):
        rows = torch.arange(len(split.targets))
        assert split.candidates[rows, split.targets].all()  # true labels renumbered with them
    with pytest.raises(ValueError, match=r"data\.min_class_count=31 leaves 0 class"):
        load_pll_mat_source(str(path), seed=0, min_class_count=31)
