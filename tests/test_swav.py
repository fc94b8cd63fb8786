"""SwAV: Sinkhorn-Knopp codes, the swapped-prediction loss, prototypes, queue, resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    assert_exact_resume,
    build_method,
    method_config,
    noisy_views,
    tiny_backbone,
    tiny_task,
)

from pico.baselines.swav import SwAV, sinkhorn_knopp, swapped_prediction_loss
from pico.engine.method import Batch, StepInfo


def _scores(rows: int, prototypes: int, seed: int = 0, dim: int = 16) -> torch.Tensor:
    """Cosines of random unit vectors and random unit prototypes, float64."""
    gen = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(rows, dim, generator=gen, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(prototypes, dim, generator=gen, dtype=torch.float64), dim=1)
    return z @ c.T


def _naive_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The paper's algorithm entry by entry in float64: Q = exp(scores / eps)^T (K x B)."""
    rows, protos = scores.shape
    q = [[math.exp(float(scores[b, k]) / epsilon) for b in range(rows)] for k in range(protos)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / sum(row) / protos for v in row] for row in q]  # each prototype: 1 / K
        cols = [sum(q[k][b] for k in range(protos)) for b in range(rows)]
        q = [[q[k][b] / cols[b] / rows for b in range(rows)] for k in range(protos)]
    return torch.tensor(
        [[q[k][b] * rows for k in range(protos)] for b in range(rows)], dtype=torch.float64
    )


def test_sinkhorn_matches_naive_loop():
    scores = _scores(7, 5)
    for iterations in (1, 3):
        want = _naive_sinkhorn(scores, 0.05, iterations)
        torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, iterations), want)
    got = sinkhorn_knopp(scores.float(), 0.05, 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _naive_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-6)


def test_sinkhorn_marginals():
    """The per-row marginal is normalised last, so it is exact; the prototype marginal
    approaches uniform with the iterations: after SwAV's 3 it lies within 1e-3 of 1/K
    (absolutely, as a distribution over K prototypes) at the paper's K=3000, B=256
    (there 3.4e-5, about 10 % of 1/K), and within 0.1 % of 1/K after 50."""
    rows, protos = 256, 3000
    scores = _scores(rows, protos)
    codes = sinkhorn_knopp(scores, 0.05, 3)
    torch.testing.assert_close(
        codes.sum(1), torch.ones(rows, dtype=torch.float64), rtol=0, atol=1e-12
    )
    assert (codes.sum(0) / rows - 1 / protos).abs().max() < 1e-3
    deviation = []
    for iterations in (1, 3, 10, 50):
        marginal = sinkhorn_knopp(scores, 0.05, iterations).sum(0) / rows
        deviation.append(float((marginal * protos - 1).abs().max()))
    assert deviation == sorted(deviation, reverse=True)
    assert deviation[-1] < 1e-3
    small = sinkhorn_knopp(_scores(64, 10), 0.05, 50)
    torch.testing.assert_close(
        small.sum(0), torch.full((10,), 6.4, dtype=torch.float64), rtol=1e-3, atol=0
    )


def test_shared_rows_count_once_and_masked_rows_not_at_all():
    scores, shared = _scores(6, 4, seed=1), _scores(5, 4, seed=2)
    joint = sinkhorn_knopp(torch.cat([shared, scores]), 0.05, 3)[5:]
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, 3, shared), joint)
    mask = torch.tensor([True, False, True, False, False])
    partial = sinkhorn_knopp(torch.cat([shared[mask], scores]), 0.05, 3)[2:]
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, 3, shared, mask), partial)
    none = sinkhorn_knopp(scores, 0.05, 3, shared, torch.zeros(5, dtype=torch.bool))
    torch.testing.assert_close(none, sinkhorn_knopp(scores, 0.05, 3))


def test_swapped_prediction_loss_matches_naive_loop_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    scores = [torch.randn(4, 5, generator=gen, dtype=torch.float64) for _ in range(4)]
    codes = [
        torch.softmax(torch.randn(4, 5, generator=gen, dtype=torch.float64), 1) for _ in (0, 1)
    ]
    leaves = [s.clone().requires_grad_() for s in scores]
    got = swapped_prediction_loss(leaves, codes, temperature=0.1)
    got.backward()
    naive = [s.clone().requires_grad_() for s in scores]
    total = 0.0
    for i in (0, 1):
        sub = 0.0
        for v in range(4):
            if v == i:
                continue
            for b in range(4):
                logits = naive[v][b] / 0.1
                log_z = torch.log(sum(torch.exp(logits[k]) for k in range(5)))
                sub = sub - sum(codes[i][b, k] * (logits[k] - log_z) for k in range(5)) / 4
        total = total + sub / 3
    want = total / 2
    want.backward()
    torch.testing.assert_close(got.double(), want.detach())
    for a, b in zip(leaves, naive, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def _method(num_local_crops: int = 2, **kwargs) -> SwAV:
    torch.manual_seed(0)
    args = {"proj_hidden": 16, "proj_dim": 8, "num_prototypes": 6, "queue_size": 12}
    return SwAV(
        tiny_backbone(), tiny_task(24), num_local_crops=num_local_crops, **{**args, **kwargs}
    )


def _batch(rows: int = 8, seed: int = 1, views: int = 4) -> Batch:
    return Batch(torch.arange(rows), noisy_views(rows, seed, views))


def _info(epoch: int = 0, step: int = 0) -> StepInfo:
    return StepInfo(epoch=epoch, step=step, epochs=4, steps_per_epoch=3)


def test_views_are_two_global_and_the_local_crops():
    assert _method(3).views == ("contrastive", "contrastive", "local", "local", "local")
    assert _method(0).views == ("contrastive", "contrastive")


def test_training_loss_predicts_global_codes_from_every_other_crop():
    method = _method().train()
    batch = _batch()
    loss = method.training_step(batch, _info())["loss"]
    with torch.no_grad():  # views of one size: encoded in one pass (one set of BN statistics)
        both = method.projector(method.backbone(torch.cat(batch.views)))
        z = F.normalize(both, dim=1).chunk(4)
        scores = [v @ method.prototypes.weight.T for v in z]
        codes = [sinkhorn_knopp(s, 0.05, 3) for s in scores[:2]]
    torch.testing.assert_close(loss, swapped_prediction_loss(scores, codes, 0.1))
    # codes are computed for the two global crops only, from their own scores
    calls = []
    codes_of = method.codes
    method.codes = lambda s, crop, use_queue: (
        calls.append((s, crop)) or codes_of(s, crop, use_queue)
    )
    method.training_step(batch, _info())
    assert [crop for _, crop in calls] == [0, 1]
    for (got, _), want in zip(calls, scores[:2], strict=True):
        torch.testing.assert_close(got, want)


def _step(method: SwAV, optimizer: torch.optim.Optimizer, info: StepInfo, seed: int = 1) -> None:
    loss = method.training_step(_batch(seed=seed), info)["loss"]
    optimizer.zero_grad()
    loss.backward()
    method.before_optimizer_step(info)
    optimizer.step()
    method.after_optimizer_step(info)


def test_prototypes_stay_unit_and_frozen_during_the_first_epoch():
    method = _method().train()
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(6))
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    before = method.prototypes.weight.clone()
    backbone = [p.clone() for p in method.backbone.parameters()]
    _step(method, optimizer, _info(epoch=0))
    assert method.prototypes.weight.grad is None  # dropped: no step, no decay, no momentum
    torch.testing.assert_close(method.prototypes.weight, before, rtol=0, atol=1e-7)  # renormed
    assert not all(
        torch.equal(a, b) for a, b in zip(backbone, method.backbone.parameters(), strict=True)
    )
    _step(method, optimizer, _info(epoch=1, step=3))
    assert not torch.allclose(method.prototypes.weight, before)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(6))


def test_queue_starts_at_its_epoch_and_joins_the_sinkhorn_rows():
    method = _method(queue_start_epoch=1).train()
    method.training_step(_batch(), _info(epoch=0))
    assert all(q.num_filled() == 0 for q in method.queues)
    method.training_step(_batch(seed=2), _info(epoch=1))
    assert [q.num_filled() for q in method.queues] == [8, 8]
    with torch.no_grad():
        scores = method.prototypes(method.project(_batch(seed=3).views[0]))
        with_queue = method.codes(scores, 0, use_queue=True)
        queued = method.queues[0].features[:8] @ method.prototypes.weight.T
        want = sinkhorn_knopp(torch.cat([queued, scores]), 0.05, 3)[8:]
    torch.testing.assert_close(with_queue, want)
    assert not torch.allclose(with_queue, method.codes(scores, 0, use_queue=False))
    assert len(_method(queue_size=0).queues) == 0


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="temperature > 0"):
        _method(temperature=0.0)
    with pytest.raises(ValueError, match="num_prototypes >= 2"):
        _method(num_prototypes=1)
    with pytest.raises(ValueError, match="iterations >= 1"):
        sinkhorn_knopp(torch.zeros(2, 2), 0.05, 0)


def test_method_config_builds_with_paper_values():
    cfg = method_config("swav")
    assert cfg.eval.select_metric == "val/knn_top1"
    method = build_method(cfg.method, num_train=8)
    assert isinstance(method, SwAV) and len(method.views) == 8
    assert method.prototypes.weight.shape == (3000, 128) and method.queues[0].size == 8


@pytest.mark.slow
def test_resume_mid_run_matches_uninterrupted_run(make_config, tmp_path):
    """Across the prototype freeze (epoch 1) and the queue start (epoch 2)."""
    common = [
        "method=swav",
        "method.proj_hidden=32", "method.num_prototypes=20", "method.num_local_crops=2",
        "method.queue_size=128", "method.queue_start_epoch=1", "eval.linear_probe=false",
    ]  # fmt: skip
    final = assert_exact_resume(make_config, tmp_path, *common)
    assert final["method"]["queues.0.filled"] == 128
