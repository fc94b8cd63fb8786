"""scikit-learn's 8x8 handwritten digits: the embedded default data set (no download)."""

from __future__ import annotations

import torch

from pico.data.bundle import Split, stratified_split
from pico.data.sources import SourceData, channel_stats


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> SourceData:
    """1,797 grayscale 8x8 digits as uint8 (N, 1, 8, 8), split train/test stratified by class.

    Pixel values 0..16 are scaled to 0..255; ``mean``/``std`` come from the train split.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # slow import, only needed here

    raw = sklearn_digits()
    pixels = torch.from_numpy(raw.images).to(torch.float64)
    images = (pixels * (255.0 / 16.0)).round_().to(torch.uint8).unsqueeze(1)
    targets = torch.from_numpy(raw.target).to(torch.int64)
    train_idx, test_idx = stratified_split(targets, test_fraction, seed)
    train = Split(images[train_idx], targets[train_idx])
    test = Split(images[test_idx], targets[test_idx])
    mean, std = channel_stats(train.inputs)
    return SourceData(
        train=train,
        test=test,
        class_names=[str(d) for d in range(10)],
        kind="image",
        mean=mean,
        std=std,
    )
