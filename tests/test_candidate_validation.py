from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pico.pll import (
    CandidateError,
    candidates_from_csr,
    candidates_from_index_lists,
    validate_candidates,
)
from pico.pll.validation import describe_rows

DTYPES = [np.bool_, np.int8, np.int64, np.float32, np.float64]
CONTAINERS = ["torch", "numpy", "sparse"]


@st.composite
def valid_matrices(draw: st.DrawFn) -> np.ndarray:
    n = draw(st.integers(1, 25))
    c = draw(st.integers(1, 8))
    bits = draw(st.lists(st.booleans(), min_size=n * c, max_size=n * c))
    matrix = np.array(bits, dtype=bool).reshape(n, c)
    keep = draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    matrix[np.arange(n), keep] = True  # every row non-empty
    return matrix


def _wrap(matrix: np.ndarray, dtype: type, container: str) -> object:
    array = matrix.astype(dtype)
    if container == "torch":
        return torch.from_numpy(array)
    if container == "sparse":
        return scipy.sparse.csr_matrix(array)
    return array


@settings(max_examples=60, deadline=None)
@given(valid_matrices(), st.sampled_from(DTYPES), st.sampled_from(CONTAINERS))
def test_valid_matrices_pass_unchanged(matrix: np.ndarray, dtype: type, container: str) -> None:
    out = validate_candidates(_wrap(matrix, dtype, container), matrix.shape[1], len(matrix))
    assert out.dtype == torch.bool
    assert np.array_equal(out.numpy(), matrix)


@settings(max_examples=60, deadline=None)
@given(valid_matrices(), st.data(), st.sampled_from(DTYPES), st.sampled_from(CONTAINERS))
def test_empty_rows_are_rejected(
    matrix: np.ndarray, data: st.DataObject, dtype: type, container: str
) -> None:
    rows = data.draw(st.sets(st.integers(0, len(matrix) - 1), min_size=1))
    matrix[sorted(rows)] = False
    with pytest.raises(CandidateError, match="empty") as err:
        validate_candidates(_wrap(matrix, dtype, container), matrix.shape[1])
    assert f"{len(rows)} rows (first: {min(rows)}" in str(err.value)


@settings(max_examples=60, deadline=None)
@given(
    valid_matrices(),
    st.data(),
    st.sampled_from([2.0, -1.0, 0.5, 1e-3, np.inf, 7.0]),
)
def test_bad_values_are_rejected(matrix: np.ndarray, data: st.DataObject, value: float) -> None:
    array = matrix.astype(np.float64)
    row = data.draw(st.integers(0, len(array) - 1))
    col = data.draw(st.integers(0, array.shape[1] - 1))
    array[row, col] = value
    with pytest.raises(CandidateError, match="must be 0/1") as err:
        validate_candidates(array, array.shape[1])
    assert f"1 rows (first: {row})" in str(err.value)
    if value.is_integer():
        with pytest.raises(CandidateError, match="must be 0/1"):
            validate_candidates(torch.from_numpy(array).long(), array.shape[1])


def test_describe_rows() -> None:
    assert describe_rows([3, 1]) == "2 rows (first: 3, 1)"
    assert describe_rows(torch.arange(10, 17)) == "7 rows (first: 10, 11, 12, 13, 14, ...)"


def test_message_not_2d() -> None:
    with pytest.raises(CandidateError, match=r"2-D matrix.*shape \(4,\)"):
        validate_candidates(torch.ones(4), 4)


def test_message_row_count() -> None:
    with pytest.raises(CandidateError, match="3 rows but the data has 4 examples"):
        validate_candidates(torch.ones(3, 2), 2, num_rows=4)


def test_message_column_count() -> None:
    with pytest.raises(CandidateError, match="3 columns but there are 5 classes"):
        validate_candidates(np.ones((2, 3)), 5)


def test_message_nan() -> None:
    m = np.ones((8, 3))
    m[[1, 6], 0] = np.nan
    with pytest.raises(CandidateError, match=r"NaN in 2 rows \(first: 1, 6\).*replace"):
        validate_candidates(m, 3)


def test_message_values() -> None:
    m = np.ones((8, 3), dtype=np.int64)
    m[2:8, 1] = 2
    with pytest.raises(CandidateError) as err:
        validate_candidates(m, 3)
    text = str(err.value)
    assert "6 rows (first: 2, 3, 4, 5, 6, ...)" in text
    assert "e.g. 2 in row 2" in text
    assert "candidates_from_index_lists" in text


def test_message_empty() -> None:
    m = torch.zeros(12, 3, dtype=torch.bool)
    m[::2, 1] = True
    with pytest.raises(CandidateError) as err:
        validate_candidates(m, 3)
    assert "6 rows (first: 1, 3, 5, 7, 9, ...) are empty" in str(err.value)
    assert "add the known label" in str(err.value)


def test_message_types() -> None:
    with pytest.raises(CandidateError, match="numbers or booleans"):
        validate_candidates(np.array([["a", "b"]]), 2)
    with pytest.raises(CandidateError, match="ragged"):
        validate_candidates(np.array([[0, 1], [1]], dtype=object), 2)
    with pytest.raises(CandidateError, match="complex"):
        validate_candidates(torch.ones(2, 2, dtype=torch.complex64), 2)


def test_candidate_error_is_value_error() -> None:
    assert issubclass(CandidateError, ValueError)


def test_true_label_outside_set_warns_and_keeps_rows() -> None:
    m = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    targets = torch.tensor([0, 0, -1, 1])
    with pytest.warns(UserWarning, match=r"2 rows \(first: 1, 3\) of 3 labelled rows"):
        out = validate_candidates(m, 3, targets=targets)
    assert torch.equal(out, m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_candidates(m, 3, targets=torch.tensor([0, 1, -1, 2]))


def test_bad_targets() -> None:
    m = torch.ones(3, 2, dtype=torch.bool)
    with pytest.raises(CandidateError, match="out of range"):
        validate_candidates(m, 2, targets=torch.tensor([0, 2, 1]))
    with pytest.raises(CandidateError, match=r"shape \(3,\)"):
        validate_candidates(m, 2, targets=torch.tensor([0, 1]))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda c: st.tuples(
            st.just(c),
            st.lists(st.lists(st.integers(0, c - 1), min_size=1, max_size=6), max_size=20),
        )
    )
)
def test_index_lists_match_loop_reference(case: tuple[int, list[list[int]]]) -> None:
    c, lists = case
    expected = torch.zeros(len(lists), c, dtype=torch.bool)
    for i, row in enumerate(lists):
        for j in row:
            expected[i, j] = True
    assert torch.equal(candidates_from_index_lists(lists, c), expected)


def test_index_lists_accept_arrays_and_tensors() -> None:
    lists = [np.array([0, 2]), torch.tensor([1]), (2,), [1.0, 0.0]]
    expected = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    assert torch.equal(candidates_from_index_lists(lists, 3), expected)


def test_index_lists_errors_name_rows() -> None:
    with pytest.raises(CandidateError, match=r"\[0, 3\).*2 rows \(first: 1, 3\)"):
        candidates_from_index_lists([[0], [3], [1], [-1, 0]], 3)
    with pytest.raises(CandidateError, match=r"1 rows \(first: 1\) are empty"):
        candidates_from_index_lists([[0], []], 3)
    with pytest.raises(CandidateError, match=r"row 0 holds 1\.5"):
        candidates_from_index_lists([[1.5]], 3)
    with pytest.raises(CandidateError, match="row 1 holds 'ab'"):
        candidates_from_index_lists([[0], "ab"], 3)
    with pytest.raises(CandidateError, match="row 0 holds 2 instead of a list"):
        candidates_from_index_lists([2], 3)
    with pytest.raises(CandidateError, match="not a class index"):
        candidates_from_index_lists([[True]], 3)


def test_csr_layout_and_errors() -> None:
    out = candidates_from_csr(np.array([0, 2, 1]), np.array([0, 2, 3]), 3)
    assert torch.equal(out, torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool))
    with pytest.raises(CandidateError, match="offsets must start at 0"):
        candidates_from_csr(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(CandidateError, match="offsets must start at 0"):
        candidates_from_csr(np.array([0, 1]), np.array([0, 2, 1, 2]), 3)
    with pytest.raises(CandidateError, match="whole numbers"):
        candidates_from_csr(np.array([0.5]), np.array([0, 1]), 3)
