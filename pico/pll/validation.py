"""Checks and conversions for user-given candidate label sets.

Every problem raises :class:`CandidateError` naming what is wrong, the first few
offending rows with the total count, and how to fix it. A true label outside its
candidate set is not an error (noisy partial-label data): it is counted and reported
with a warning, and the row is kept as given.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any, SupportsInt, cast

import numpy as np
import torch
from torch import Tensor

_SHOW_ROWS = 5


class CandidateError(ValueError):
    """Candidate label data that cannot be used as given."""


def describe_rows(rows: Sequence[int] | Tensor | np.ndarray, what: str = "rows") -> str:
    """'<count> <what> (first: a, b, ...)' with at most five row numbers shown."""
    rows = [int(r) for r in np.asarray(rows).ravel()]
    shown = ", ".join(str(r) for r in rows[:_SHOW_ROWS])
    more = ", ..." if len(rows) > _SHOW_ROWS else ""
    return f"{len(rows)} {what} (first: {shown}{more})"


def _as_tensor(candidates: Any) -> Tensor:
    """Torch tensor view of a torch / NumPy / scipy-sparse / nested-list matrix."""
    if isinstance(candidates, Tensor):
        return candidates.detach()
    if hasattr(candidates, "toarray"):  # scipy.sparse matrices and arrays
        candidates = candidates.toarray()
    array = np.asarray(candidates)
    if array.dtype == object:
        raise CandidateError(
            "candidates are not a rectangular numeric matrix (ragged rows or objects); "
            "for lists of class indices use candidates_from_index_lists"
        )
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.number)):
        raise CandidateError(
            f"candidates must be numbers or booleans, got dtype {array.dtype}; "
            "pass a 0/1 matrix or use candidates_from_index_lists for class indices"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def validate_candidates(
    candidates: Any,
    num_classes: int,
    num_rows: int | None = None,
    targets: Tensor | None = None,
) -> Tensor:
    """Check a candidate matrix and return it as a bool tensor (N, ``num_classes``).

    Accepts torch tensors, NumPy arrays and scipy sparse matrices of 0/1 values (bool,
    integer or float). Raises :class:`CandidateError` for a shape that is not 2-D, a
    row count other than ``num_rows``, a column count other than ``num_classes``, NaN,
    values other than 0 and 1, or rows without any candidate. With ``targets`` (true
    labels, -1 where unknown), rows whose true label is not a candidate are counted
    and reported with ``warnings.warn``; they are kept unchanged.
    """
    cand = _as_tensor(candidates)
    if cand.is_complex():
        raise CandidateError("candidates must be real 0/1 values, got a complex matrix")
    if cand.ndim != 2:
        raise CandidateError(
            f"candidates must be a 2-D matrix (rows x classes), got shape {tuple(cand.shape)}; "
            "give one multi-hot row per example"
        )
    n, c = cand.shape
    if num_rows is not None and n != num_rows:
        raise CandidateError(
            f"candidates have {n} rows but the data has {num_rows} examples; "
            "give exactly one candidate row per example, in the data's order"
        )
    if c != num_classes:
        raise CandidateError(
            f"candidates have {c} columns but there are {num_classes} classes; "
            "give one column per class (column j is class j)"
        )
    if cand.dtype != torch.bool:
        if cand.is_floating_point():
            nan_rows = torch.nonzero(cand.isnan().any(1)).flatten()
            if len(nan_rows):
                raise CandidateError(
                    f"candidates contain NaN in {describe_rows(nan_rows)}; "
                    "replace missing entries with 0 (not a candidate) or 1 (candidate)"
                )
        bad_rows = torch.nonzero(((cand != 0) & (cand != 1)).any(1)).flatten()
        if len(bad_rows):
            example = cand[bad_rows[0]][(cand[bad_rows[0]] != 0) & (cand[bad_rows[0]] != 1)]
            raise CandidateError(
                f"candidates must be 0/1 but {describe_rows(bad_rows)} hold other values "
                f"(e.g. {example[0].item()} in row {bad_rows[0].item()}); "
                "threshold scores into a 0/1 matrix, or use candidates_from_index_lists "
                "for lists of class indices"
            )
        cand = cand != 0
    empty = torch.nonzero(~cand.any(1)).flatten()
    if len(empty):
        raise CandidateError(
            f"every example needs at least one candidate label, but {describe_rows(empty)} "
            "are empty; add the known label(s) to those rows or drop the examples"
        )
    if targets is not None:
        _report_missing_true_labels(cand, targets)
    return cand


def _report_missing_true_labels(cand: Tensor, targets: Tensor) -> None:
    n, c = cand.shape
    targets = torch.as_tensor(targets).detach().to(cand.device).long()
    if targets.shape != (n,):
        raise CandidateError(
            f"targets must have shape ({n},) to match the candidate rows, got "
            f"{tuple(targets.shape)}"
        )
    bad = torch.nonzero((targets < -1) | (targets >= c)).flatten()
    if len(bad):
        raise CandidateError(
            f"true labels must be class ids in [0, {c}) or -1 for unknown, but "
            f"{describe_rows(bad)} are out of range; fix the labels or set them to -1"
        )
    rows = torch.nonzero(targets >= 0).flatten()
    missing = rows[~cand[rows, targets[rows]]]
    if len(missing):
        warnings.warn(
            f"the true label is outside the candidate set in {describe_rows(missing)} of "
            f"{len(rows)} labelled rows (noisy partial labels); they are kept as given. "
            "Use a noise-robust method (e.g. PiCO+) if this is expected.",
            stacklevel=3,
        )


def candidates_from_csr(indices: Any, offsets: Any, num_classes: int) -> Tensor:
    """Multi-hot matrix from flat class ``indices`` and row ``offsets`` (CSR layout).

    Row i holds ``indices[offsets[i]:offsets[i+1]]``; ``offsets`` has N+1
    non-decreasing entries from 0 to ``len(indices)``. Duplicates are allowed. The
    result is validated (indices in range, no empty row).
    """
    idx = np.asarray(indices).ravel()
    off = np.asarray(offsets).ravel()
    for name, arr in (("indices", idx), ("offsets", off)):
        whole = np.issubdtype(arr.dtype, np.integer) or (
            np.issubdtype(arr.dtype, np.floating) and bool(np.all(arr == np.round(arr)))
        )
        if arr.size and not whole:
            raise CandidateError(
                f"candidate {name} must be whole numbers, got dtype {arr.dtype}; "
                "store class ids as integers"
            )
    idx = idx.astype(np.int64)
    off = off.astype(np.int64)
    if off.size == 0 or off[0] != 0 or off[-1] != idx.size or np.any(np.diff(off) < 0):
        raise CandidateError(
            f"candidate offsets must start at 0, never decrease and end at the number of "
            f"indices ({idx.size}); got {off.size} offsets"
            + (f" from {off[0]} to {off[-1]}" if off.size else "")
            + ". Row i holds indices[offsets[i]:offsets[i+1]]"
        )
    n = off.size - 1
    row_of = np.repeat(np.arange(n), np.diff(off))
    bad = (idx < 0) | (idx >= num_classes)
    if bad.any():
        rows = np.unique(row_of[bad])
        raise CandidateError(
            f"class indices must lie in [0, {num_classes}), but {describe_rows(rows)} hold "
            f"others (e.g. {idx[bad][0]}); use 0-based class ids below num_classes"
        )
    cand = torch.zeros(n, num_classes, dtype=torch.bool)
    cand[torch.from_numpy(row_of), torch.from_numpy(idx)] = True
    return validate_candidates(cand, num_classes)


def candidates_from_index_lists(lists: Sequence[Sequence[int]], num_classes: int) -> Tensor:
    """Multi-hot bool matrix (N, ``num_classes``) from one list of class indices per row.

    Negative or out-of-range indices and empty lists raise :class:`CandidateError`
    naming the rows.
    """
    rows = [_index_row(entry, i) for i, entry in enumerate(lists)]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return candidates_from_csr(flat, np.concatenate([[0], np.cumsum(lengths)]), num_classes)


def _index_row(entry: Any, row: int) -> list[int]:
    """One row of class indices as Python ints (NumPy / torch rows accepted)."""
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Iterable):
        raise CandidateError(
            f"row {row} holds {entry!r} instead of a list of class indices; "
            "give every row as a list (a single label l becomes [l])"
        )
    values = entry.tolist() if hasattr(entry, "tolist") else list(entry)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not float(v).is_integer():
            raise CandidateError(
                f"row {row} holds {v!r}, which is not a class index; use integer class ids"
            )
        # typeshed types numbers.Real.__trunc__ loosely; int() converts every Real
        out.append(int(cast(SupportsInt, v)))
    return out
