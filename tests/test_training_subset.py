"""data.train_size: a seeded, stratified subset of the training rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pico.data.sources import load_data, training_subset

DIGITS_YAML = Path(__file__).resolve().parents[1] / "configs" / "data" / "digits.yaml"


def test_subset_keeps_each_class_share_and_is_seeded():
    targets = torch.cat([torch.zeros(600), torch.ones(300), torch.full((100,), 2)]).long()
    subset = training_subset(targets, 100, seed=4)
    assert torch.equal(subset, subset.sort().values) and len(subset.unique()) == len(subset)
    assert torch.bincount(targets[subset]).tolist() == [60, 30, 10]
    assert torch.equal(subset, training_subset(targets, 100, seed=4))
    assert not torch.equal(subset, training_subset(targets, 100, seed=5))
    assert torch.equal(training_subset(targets, 5000, seed=0), torch.arange(1000))


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "100"])
def test_bad_size_names_the_key(size):
    with pytest.raises(ValueError, match=r"data\.train_size=.*positive integer"):
        training_subset(torch.zeros(10, dtype=torch.long), size, seed=0)


def test_load_data_trains_on_the_subset_and_keeps_the_test_split():
    root = OmegaConf.merge({"seed": 0}, OmegaConf.load(DIGITS_YAML))
    full = load_data(root.data)
    root.data.train_size = 400
    small = load_data(root.data)
    assert len(small.train) + len(small.val) == 400
    assert len(small.test) == len(full.test)
