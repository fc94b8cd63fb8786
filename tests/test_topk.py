"""Top-k is reported only where k is smaller than the number of classes."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from pico.data.bundle import DataBundle, Split
from pico.engine.method import Method
from pico.eval.evaluator import TOP_K, Evaluator
from pico.eval.metrics import topk_accuracy


class _Linear(Method):
    """A fixed linear classifier on 4 input features."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.backbone = nn.Identity()
        self.head = nn.Linear(4, classes)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        return self.head(x)


def _metrics(classes: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(classes)

    def split(rows: int) -> Split:
        return Split(torch.randn(rows, 4, generator=gen), torch.arange(rows) % classes)

    names = [str(c) for c in range(classes)]
    bundle = DataBundle("toy", split(20), split(20), split(40), classes, names)
    cfg = OmegaConf.create({"batch_size": 8, "linear_probe": False, "knn": {"enabled": False}})
    evaluator = Evaluator(cfg, bundle, nn.Identity(), torch.device("cpu"))
    torch.manual_seed(0)
    return evaluator.evaluate(_Linear(classes), {"classifier"})


@pytest.mark.parametrize("classes", [2, TOP_K])
def test_no_top5_for_five_classes_or_fewer(classes):
    metrics = _metrics(classes)
    assert "test/top1" in metrics and "val/top1" in metrics
    assert not any(key.endswith(f"/top{TOP_K}") for key in metrics), sorted(metrics)


def test_top5_for_more_than_five_classes():
    metrics = _metrics(TOP_K + 1)
    assert 0.0 <= metrics["test/top1"] <= metrics[f"test/top{TOP_K}"] <= 1.0
    assert f"val/top{TOP_K}" in metrics


def test_topk_accuracy_clamps_k_to_the_classes():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert topk_accuracy(logits, torch.tensor([0, 0]), 5) == 1.0
