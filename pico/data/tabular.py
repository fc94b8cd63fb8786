"""Real-world partial-label data sets stored as MATLAB ``.mat`` files (Lost, MSRCv2, ...)."""

from __future__ import annotations

from pathlib import Path

import torch

from pico.data.bundle import Split, stratified_split
from pico.data.sources import SourceData, missing_path_error


def load_pll_mat_source(
    path: str, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True
) -> SourceData:
    """Features, true labels and candidate sets from a ``.mat`` file, split train/test.

    The split is stratified by true label and seeded; with ``standardize`` features are
    z-scored with training statistics (constant features are only centred). Both splits
    keep their candidate sets.
    """
    from pico.pll.candidate_io import load_pll_mat

    file = Path(path).expanduser()
    if not file.is_file():
        raise missing_path_error(
            file,
            "partial-label .mat file",
            "a MATLAB file with keys data (N x D), target and partial_target (C x N)",
            "pass data.path=FILE.mat pointing at an existing file",
        )
    features, targets, candidates = load_pll_mat(file)
    train_idx, test_idx = stratified_split(targets, test_fraction, seed)
    if standardize:
        train_feats = features[train_idx].double()
        mean = train_feats.mean(dim=0)
        std = train_feats.std(dim=0, correction=0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        features = ((features.double() - mean) / std).to(torch.float32)
    return SourceData(
        train=Split(features[train_idx], targets[train_idx], candidates[train_idx]),
        test=Split(features[test_idx], targets[test_idx], candidates[test_idx]),
        class_names=[str(c) for c in range(candidates.shape[1])],
        kind="tabular",
    )
