"""Evaluator: which training features the kNN reads, and batched feature collection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from pico.data.bundle import DataBundle, Split
from pico.engine.method import Method
from pico.eval.evaluator import Evaluator
from pico.eval.features import collect, collect_sharded

CLASSES = 3


class _BankMethod(Method):
    """Features = the inputs (class-separated clusters); a random bank in another space."""

    def __init__(self, num_train: int) -> None:
        super().__init__()
        self.backbone = nn.Identity()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("bank", F.normalize(torch.randn(num_train, 5, generator=gen), dim=1))
        self.proj = nn.Linear(4, 5)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(x), dim=1)

    def knn_bank(self) -> Tensor:
        return self.bank


def _split(rows: int, seed: int) -> Split:
    gen = torch.Generator().manual_seed(seed)
    targets = torch.arange(rows) % CLASSES
    centres = 4 * torch.eye(CLASSES, 4)
    return Split(centres[targets] + torch.randn(rows, 4, generator=gen), targets)


K, TEMPERATURE = 5, 0.1


def _naive_knn_top1(train: Tensor, labels: Tensor, query: Tensor, targets: Tensor) -> float:
    """Weighted kNN vote (``K`` neighbours, weight ``exp(sim / TEMPERATURE)``), per query."""
    train = F.normalize(train, dim=1)
    hits = 0
    for q, t in zip(F.normalize(query, dim=1), targets, strict=True):
        sims = train @ q
        votes = torch.zeros(CLASSES)
        for i in sims.topk(K).indices:
            votes[labels[i]] += (sims[i] / TEMPERATURE).exp()
        hits += int(votes.argmax() == t)
    return hits / len(query)


@pytest.fixture
def setup():
    names = ["a", "b", "c"]
    bundle = DataBundle("toy", _split(60, 1), _split(21, 2), _split(30, 3), CLASSES, names)
    knn = {"enabled": True, "k": K, "temperature": TEMPERATURE}
    cfg = OmegaConf.create({"batch_size": 8, "linear_probe": False, "knn": knn})
    method = _BankMethod(len(bundle.train))
    return Evaluator(cfg, bundle, nn.Identity(), torch.device("cpu")), bundle, method


def test_knn_monitor_reads_the_bank_and_final_evaluation_adds_recomputed(setup):
    evaluator, bundle, method = setup
    train, val = bundle.train, bundle.val
    monitor = evaluator(method, final=False)["val/knn_top1"]
    embedded = method.embed(val.inputs)
    assert monitor == pytest.approx(
        _naive_knn_top1(method.bank, train.targets, embedded, val.targets)
    )
    final = evaluator(method, final=True)
    # the monitor keeps reading the bank in the last epoch: selection compares like with like
    assert final["val/knn_top1"] == monitor
    recomputed = final["val/knn_top1_features"]
    assert recomputed == pytest.approx(
        _naive_knn_top1(train.inputs, train.targets, val.inputs, val.targets)
    )
    assert recomputed > 0.9 > monitor  # informative features vs. a random bank
    assert evaluator.evaluate(method, {"knn"})["val/knn_top1"] == recomputed  # pico-eval


class _RowCounter(nn.Module):
    """Identity that counts the rows it has seen."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += len(x)
        return x


def test_final_evaluation_computes_each_splits_features_once(setup):
    evaluator, bundle, method = setup
    evaluator.cfg.linear_probe = True
    method.backbone = _RowCounter()
    final = evaluator(method, final=True)  # bank kNN, fresh kNN and the linear probe
    assert {"test/linear_top1", "val/knn_top1_features"} <= final.keys()
    assert method.backbone.rows == len(bundle.train) + len(bundle.val) + len(bundle.test)
    method.backbone.rows = 0
    evaluator(method, final=True)  # nothing is kept from one evaluation to the next
    assert method.backbone.rows == len(bundle.train) + len(bundle.val) + len(bundle.test)


def test_collect_batches_and_empty_inputs():
    x = torch.randn(11, 4)
    calls = []

    def fn(batch: Tensor) -> Tensor:
        calls.append(len(batch))
        return batch * 2

    torch.testing.assert_close(collect(fn, x, nn.Identity(), torch.device("cpu"), 4), x * 2)
    assert calls == [4, 4, 3]
    empty = collect(fn, x[:0], nn.Identity(), torch.device("cpu"), 4)
    assert empty.shape == (0, 4) and calls[-1] == 0  # fn ran once, on zero rows
    assert collect(lambda b: None, x, nn.Identity(), torch.device("cpu")) is None
    # one process: the shard is everything
    sharded = collect_sharded(fn, x, nn.Identity(), torch.device("cpu"), 4)
    torch.testing.assert_close(sharded, x * 2)
