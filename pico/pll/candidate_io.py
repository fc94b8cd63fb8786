"""Loading candidate label sets from files: NumPy ``.npz``, CSV, Hugging Face columns,
and the classic real-world partial-label ``.mat`` files."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pico.pll.validation import (
    CandidateError,
    candidates_from_csr,
    candidates_from_index_lists,
    describe_rows,
    validate_candidates,
)


def _check_rows(cand: Tensor, num_rows: int | None, source: str) -> Tensor:
    if num_rows is not None and len(cand) != num_rows:
        raise CandidateError(
            f"{source} holds {len(cand)} candidate rows but the data has {num_rows} examples; "
            "give exactly one candidate set per example"
        )
    return cand


def load_candidates_npz(path: str | Path, num_classes: int, num_rows: int | None = None) -> Tensor:
    """Candidate sets from a NumPy ``.npz`` file, as a validated bool matrix (N, C).

    Accepted layouts:

    * key ``candidates``: a dense (N, C) matrix of 0/1 (bool, int or float);
    * keys ``indices`` and ``offsets`` (CSR index lists): row i holds the class ids
      ``indices[offsets[i]:offsets[i+1]]``; ``offsets`` has N+1 entries from 0 to
      ``len(indices)``, e.g. rows [[0, 2], [1]] are ``indices=[0, 2, 1]``,
      ``offsets=[0, 2, 3]``;
    * a file written by ``scipy.sparse.save_npz`` (keys ``indptr``, ``indices``, ...).
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as npz:
        keys = set(npz.files)
        if "candidates" in keys:
            cand = validate_candidates(npz["candidates"], num_classes, num_rows)
        elif {"indptr", "indices", "format", "shape"} <= keys:
            import scipy.sparse

            cand = validate_candidates(scipy.sparse.load_npz(path), num_classes, num_rows)
        elif {"indices", "offsets"} <= keys:
            cand = candidates_from_csr(npz["indices"], npz["offsets"], num_classes)
        else:
            raise CandidateError(
                f"{path} has keys {sorted(keys)}, but candidate files need either "
                "'candidates' (dense N x C 0/1 matrix) or 'indices' + 'offsets' "
                "(row i = indices[offsets[i]:offsets[i+1]])"
            )
    return _check_rows(cand, num_rows, str(path))


def load_candidates_csv(
    path: str | Path,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    num_rows: int | None = None,
) -> Tensor:
    """Candidate sets from a CSV file with the header ``index,candidates``.

    Each line gives an example index and its candidates separated by ``;``, as class
    ids (``0;3;7``) or, with ``class_names``, as names (``cat;dog``; a token that is not
    a name is read as an id). Lines may come in any order, but every index
    0..N-1 must appear exactly once (N = ``num_rows``, else the number of lines).
    Returns a validated bool matrix (N, C) in index order.
    """
    path = Path(path)
    lookup = {name: i for i, name in enumerate(class_names or ())}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not {"index", "candidates"} <= set(header):
            raise CandidateError(
                f"{path} must have the header 'index,candidates', found {header}; "
                "write one line per example as  <index>,<class>;<class>;..."
            )
        indices: list[int] = []
        sets: list[list[int]] = []
        for line, record in enumerate(reader, start=2):
            record = {k.strip(): (v or "").strip() for k, v in record.items() if k is not None}
            try:
                indices.append(int(record["index"]))
            except ValueError:
                raise CandidateError(
                    f"{path} line {line}: index {record['index']!r} is not a whole number"
                ) from None
            tokens = [t.strip() for t in record["candidates"].split(";") if t.strip()]
            sets.append([_class_id(t, lookup, f"{path} line {line}") for t in tokens])
    n = len(sets) if num_rows is None else num_rows
    _check_index_column(np.asarray(indices, dtype=np.int64), n, path)
    ordered: list[list[int]] = [[] for _ in range(n)]
    for i, s in zip(indices, sets, strict=True):
        ordered[i] = s
    return candidates_from_index_lists(ordered, num_classes)


def _class_id(token: str, lookup: dict[str, int], where: str) -> int:
    if token in lookup:
        return lookup[token]
    try:
        return int(token)
    except ValueError:
        known = f"; known names: {', '.join(list(lookup)[:10])}" if lookup else ""
        raise CandidateError(
            f"{where}: candidate {token!r} is neither a class id nor a class name{known}. "
            "Pass class_names= to read names"
        ) from None


def _check_index_column(indices: np.ndarray, n: int, path: Path) -> None:
    out_of_range = np.unique(indices[(indices < 0) | (indices >= n)])
    if out_of_range.size:
        raise CandidateError(
            f"{path}: the index column must hold 0..{n - 1}, but has "
            f"{describe_rows(out_of_range, 'indices out of range')}"
        )
    counts = np.bincount(indices, minlength=n)
    for problem, rows in (
        ("repeated", np.nonzero(counts > 1)[0]),
        ("missing", np.nonzero(counts == 0)[0]),
    ):
        if rows.size:
            raise CandidateError(
                f"{path}: every index 0..{n - 1} must appear exactly once, but "
                f"{describe_rows(rows, 'indices are ' + problem)}"
            )


def candidates_from_column(values: Sequence[Sequence[int]], num_classes: int) -> Tensor:
    """Validated bool matrix (N, C) from a column of class-index lists (e.g. a Hugging
    Face ``datasets`` column of ``Sequence(ClassLabel)``, or ``dataset["candidates"]``)."""
    return candidates_from_index_lists(list(values), num_classes)


_MAT_META = {"__header__", "__version__", "__globals__"}


def _dense(value: Any, key: str, path: Path) -> np.ndarray:
    array = value.toarray() if hasattr(value, "toarray") else np.asarray(value)
    if array.dtype == object or not (
        array.dtype == np.bool_ or np.issubdtype(array.dtype, np.number)
    ):
        raise CandidateError(f"{path}: '{key}' must be a numeric matrix, got dtype {array.dtype}")
    return array


def _orient(array: np.ndarray, n: int, key: str, path: Path) -> np.ndarray:
    """(C x N) or (N x C) label matrix -> (N x C); C x N wins when both fit."""
    if array.ndim != 2 or n not in array.shape:
        raise CandidateError(
            f"{path}: '{key}' has shape {array.shape} but 'data' has {n} rows; "
            f"'{key}' must be C x N (or N x C)"
        )
    return array.T if array.shape[1] == n else array


def _targets_from(array: np.ndarray, n: int, cand: np.ndarray, path: Path) -> Tensor:
    """True labels from a one-hot matrix or a label vector (0- or 1-based); ``cand`` is
    the (N, C) candidate mask."""
    c = cand.shape[1]
    if array.ndim == 2 and min(array.shape) > 1:
        onehot = _orient(array, n, "target", path)
        if onehot.shape[1] != c:
            raise CandidateError(
                f"{path}: 'target' has {onehot.shape[1]} classes but 'partial_target' has {c}"
            )
        bad = np.nonzero((onehot != 0).sum(1) != 1)[0]
        if bad.size:
            raise CandidateError(
                f"{path}: 'target' must be one-hot, but {describe_rows(bad)} do not hold "
                "exactly one label"
            )
        return torch.from_numpy(np.argmax(onehot != 0, axis=1).astype(np.int64))
    labels = array.ravel()
    if labels.size != n or not np.all(labels == np.round(labels)):
        raise CandidateError(
            f"{path}: 'target' must be a C x N one-hot matrix or N whole-number labels, got "
            f"shape {array.shape} for {n} examples"
        )
    labels = labels.astype(np.int64)
    fits = [base for base in (0, 1) if labels.min() >= base and labels.max() < c + base]
    if not fits:
        raise CandidateError(
            f"{path}: 'target' labels run from {labels.min()} to {labels.max()}, which fits "
            f"neither 0-based nor 1-based ids of {c} classes"
        )
    # both bases fit: take the one that puts more true labels inside their candidate sets
    rows = np.arange(n)
    base = max(fits, key=lambda b: (int(cand[rows, labels - b].sum()), -b))
    return torch.from_numpy(labels - base)


def load_pll_mat(path: str | Path) -> tuple[Tensor, Tensor, Tensor]:
    """Real-world partial-label data (Lost, MSRCv2, BirdSong, ...) from a MATLAB ``.mat``.

    Keys: ``data`` (N x D features), ``partial_target`` (C x N candidate matrix, 0/1,
    dense or scipy-sparse) and ``target`` (C x N one-hot, dense or sparse, or a vector
    of N labels, 0- or 1-based). N comes from ``data``; a label matrix is read as C x N
    when its second dimension is N, otherwise as N x C when its first is (C x N wins
    when C == N). A label vector is taken as 0-based or 1-based, whichever fits the class
    range (if both do, whichever puts more true labels inside their sets). Returns
    float32 features (N, D), int64 targets (N,) and validated bool candidates (N, C);
    true labels outside their sets are reported with a warning.
    """
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path)
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5
        raise CandidateError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it "
            "in MATLAB with save(..., '-v7')"
        ) from err
    missing = [k for k in ("data", "target", "partial_target") if k not in mat]
    if missing:
        found = sorted(set(mat) - _MAT_META)
        raise CandidateError(
            f"{path} lacks the key(s) {missing} (found {found}); partial-label .mat files "
            "need 'data' (N x D), 'target' and 'partial_target' (C x N)"
        )
    data = _dense(mat["data"], "data", path)
    if data.ndim != 2:
        raise CandidateError(f"{path}: 'data' must be an N x D matrix, got shape {data.shape}")
    n = data.shape[0]
    partial = _orient(
        _dense(mat["partial_target"], "partial_target", path), n, "partial_target", path
    )
    targets = _targets_from(_dense(mat["target"], "target", path), n, partial != 0, path)
    cand = validate_candidates(partial, partial.shape[1], num_rows=n, targets=targets)
    features = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    return features, targets, cand
