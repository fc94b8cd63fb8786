"""Real-world partial-label data sets stored as MATLAB ``.mat`` files (Lost, MSRCv2, ...)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor

from pico.data.bundle import Split, stratified_split
from pico.data.sources import SourceData, missing_path_error

log = logging.getLogger(__name__)


def class_counts_report(targets: Tensor, num_classes: int, min_count: int) -> str:
    """One line naming the classes with no rows and those with fewer than ``min_count``."""
    counts = torch.bincount(targets, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    rare = torch.nonzero((counts > 0) & (counts < min_count)).flatten().tolist()
    parts = [f"{num_classes} classes, {len(targets)} rows"]
    if empty:
        parts.append(f"{len(empty)} classes have no rows ({_short(empty)})")
    if rare:
        parts.append(f"{len(rare)} have fewer than {min_count} rows ({_short(rare)})")
    return "; ".join(parts)


def _short(items: list[int], limit: int = 12) -> str:
    head = ", ".join(map(str, items[:limit]))
    return head + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def drop_rare_classes(
    features: Tensor, targets: Tensor, candidates: Tensor, min_count: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Drop the classes with fewer than ``min_count`` rows: their rows, and their column
    from every candidate set; labels are renumbered in order. Returns the kept data and
    the original indices of the kept classes.

    A kept row keeps its true label, so no candidate set becomes empty (noisy rows whose
    set held only dropped classes are removed with an error naming the count).
    """
    counts = torch.bincount(targets, minlength=candidates.shape[1])
    kept = torch.nonzero(counts >= min_count).flatten()
    if len(kept) < 2:
        raise ValueError(
            f"data.min_class_count={min_count} leaves {len(kept)} class(es); lower it "
            f"(the largest class has {int(counts.max())} rows)"
        )
    rows = torch.isin(targets, kept)
    new_label = torch.full((candidates.shape[1],), -1, dtype=torch.long)
    new_label[kept] = torch.arange(len(kept))
    kept_candidates = candidates[rows][:, kept]
    if not kept_candidates.any(dim=1).all():
        empty = int((~kept_candidates.any(dim=1)).sum())
        raise ValueError(
            f"data.min_class_count={min_count} empties the candidate sets of {empty} rows; lower it"
        )
    return features[rows], new_label[targets[rows]], kept_candidates, kept


def standardize_features(features: Tensor, train_rows: Tensor, mode: bool | str) -> Tensor:
    """Z-score features with the statistics of ``train_rows``, as float32.

    ``mode``: ``True`` z-scores every column, ``False`` none, and ``"auto"`` every column
    except the binary ones (only the values 0 and 1), which stay as they are: z-scoring an
    indicator that is on in a few rows turns it into a value near 100 in those rows,
    which a network then memorises (bench/RESULTS.md, "Binary features"). Constant columns
    are only centred.
    """
    if mode not in (True, False, "auto"):
        raise ValueError(
            f"data.source.standardize={mode!r} is not a scaling mode; use auto, true or false"
        )
    if mode is False:
        return features.to(torch.float32)
    shift, scale = standardization_stats(features, train_rows, mode)
    return ((features.double() - shift) / scale).to(torch.float32)


def standardization_stats(
    features: Tensor, train_rows: Tensor, mode: bool | str
) -> tuple[Tensor, Tensor]:
    """The float64 ``(shift, scale)`` per column with which :func:`standardize_features`
    computes ``(features - shift) / scale``: (0, 1) for the columns it keeps as they are."""
    if mode not in (True, False, "auto"):
        raise ValueError(
            f"data.source.standardize={mode!r} is not a scaling mode; use auto, true or false"
        )
    width = features.shape[1]
    if mode is False:
        return torch.zeros(width, dtype=torch.float64), torch.ones(width, dtype=torch.float64)
    train = features[train_rows].double()
    mean = train.mean(dim=0)
    std = train.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    if mode == "auto":
        binary = ((features == 0) | (features == 1)).all(dim=0)
        mean = torch.where(binary, torch.zeros_like(mean), mean)
        std = torch.where(binary, torch.ones_like(std), std)
    return mean, std


def _refuse_transposed_data(file: Path) -> None:
    """Name a ``data`` matrix stored D x N (one column per example), which the loader would
    report as ``partial_target`` not matching the row count of ``data``."""
    import scipy.io

    try:
        shapes = {name: shape for name, shape, _ in scipy.io.whosmat(file)}
    except (NotImplementedError, ValueError, OSError):
        return  # unreadable files are reported by the loader
    data, partial = shapes.get("data"), shapes.get("partial_target")
    if data is None or partial is None or len(data) != 2 or len(partial) != 2:
        return
    if data[0] not in partial and data[1] in partial:
        raise ValueError(
            f"{file}: 'data' has shape {data}, one column per example, while "
            f"'partial_target' {partial} holds {data[1]} examples; store 'data' as N x D, one "
            "row per example (data = data' in MATLAB, data.T in numpy)"
        )


def load_pll_mat_source(
    path: str,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool | str = "auto",
    min_class_count: int = 0,
) -> SourceData:
    """Features, true labels and candidate sets from a ``.mat`` file, split train/test.

    The split is stratified by true label and seeded; features are scaled by
    :func:`standardize_features` (``standardize``: ``"auto"``, ``True`` or ``False``). Both splits
    keep their candidate sets. Classes with no rows, or fewer than ``min_class_count``,
    are reported; with ``min_class_count`` > 0 those below it are dropped (see
    :func:`drop_rare_classes`), as some of the literature does: say so with results.
    """
    features, targets, candidates, class_ids, train_idx, test_idx = _split_pll_mat(
        path, test_fraction, seed, min_class_count
    )
    features = standardize_features(features, train_idx, standardize)
    return SourceData(
        train=Split(features[train_idx], targets[train_idx], candidates[train_idx]),
        test=Split(features[test_idx], targets[test_idx], candidates[test_idx]),
        class_names=[str(c) for c in class_ids.tolist()],
        kind="tabular",
    )


def pll_mat_scaling(
    path: str,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool | str = "auto",
    min_class_count: int = 0,
) -> tuple[Tensor, Tensor]:
    """The ``(shift, scale)`` :func:`load_pll_mat_source` (same arguments) scales the raw
    features of ``path`` with: a raw row ``x`` becomes ``(x - shift) / scale``."""
    features, *_, train_idx, _ = _split_pll_mat(path, test_fraction, seed, min_class_count)
    return standardization_stats(features, train_idx, standardize)


def _split_pll_mat(
    path: str, test_fraction: float, seed: int, min_class_count: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Raw features, labels, candidates and kept class ids of ``path``, and the train and
    test row indices."""
    from pico.pll.candidate_io import load_pll_mat

    file = Path(path).expanduser()
    if not file.is_file():
        raise missing_path_error(
            file,
            "partial-label .mat file",
            "a MATLAB file with keys data (N x D), target and partial_target (C x N)",
            "pass data.path=FILE.mat pointing at an existing file",
        )
    _refuse_transposed_data(file)
    features, targets, candidates = load_pll_mat(file)
    report_below = min_class_count or 5  # fewer than 5: not in both the test and val split
    report = class_counts_report(targets, candidates.shape[1], report_below)
    log.info("%s: %s", file.name, report)
    class_ids = torch.arange(candidates.shape[1])
    if min_class_count > 0:
        features, targets, candidates, class_ids = drop_rare_classes(
            features, targets, candidates, min_class_count
        )
        log.info(
            "data.min_class_count=%d: kept %d classes, %d rows",
            min_class_count,
            len(class_ids),
            len(targets),
        )
    train_idx, test_idx = stratified_split(targets, test_fraction, seed)
    return features, targets, candidates, class_ids, train_idx, test_idx
