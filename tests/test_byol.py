from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import build_method, method_config, step_info, tiny_backbone, tiny_batch, tiny_task
from torch import nn

from pico.baselines.byol import BYOL, byol_loss


def _method(seed: int = 0, base_momentum: float = 0.9) -> BYOL:
    torch.manual_seed(seed)
    return BYOL(
        tiny_backbone(),
        tiny_task(),
        proj_hidden=24,
        proj_dim=8,
        pred_hidden=24,
        base_momentum=base_momentum,
    )


def test_byol_loss_matches_naive_cosine_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    want = 0.0
    for i in range(5):
        cos = float(p[i] @ z[i]) / (math.sqrt(float(p[i] @ p[i])) * math.sqrt(float(z[i] @ z[i])))
        want += 2 - 2 * cos
    assert byol_loss(p, z).item() == pytest.approx(want / 5, rel=1e-5)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-6)


def test_training_loss_is_symmetrised_mean_over_view_orders() -> None:
    method = _method()
    batch = tiny_batch()
    loss = method.training_step(batch, step_info(0, 10))["loss"]
    a, b = batch.views
    with torch.no_grad():
        online = [method.predictor(method.projector(method.backbone(v))) for v in (a, b)]
        target = [method.target_projector(method.target_backbone(v)) for v in (a, b)]
    want = (byol_loss(online[0], target[1]) + byol_loss(online[1], target[0])) / 2
    torch.testing.assert_close(loss, want)


def test_heads_have_batch_norm_and_target_is_excluded_from_optimizer() -> None:
    method = _method()
    assert [type(m) for m in method.projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert [type(m) for m in method.predictor] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    params = {id(p) for p in method.optim_parameters()}
    online = [method.backbone, method.projector, method.predictor]
    assert params == {id(p) for m in online for p in m.parameters()}
    target = [method.target_backbone, method.target_projector]
    assert not params & {id(p) for m in target for p in m.parameters()}
    assert all(not p.requires_grad for m in target for p in m.parameters())


def test_target_changes_only_by_ema() -> None:
    method = _method(base_momentum=0.9)
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.1)
    pairs = [(method.backbone, method.target_backbone), (method.projector, method.target_projector)]
    for step in range(3):
        info = step_info(step, steps_per_epoch=3)
        before = [[p.clone() for p in t.parameters()] for _, t in pairs]
        loss = method.training_step(tiny_batch(seed=step), info)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for (_, target), old in zip(pairs, before, strict=True):
            assert all(p.grad is None for p in target.parameters())
            for p, o in zip(target.parameters(), old, strict=True):
                assert torch.equal(p, o)  # the optimizer step did not touch the target
        method.after_optimizer_step(info)
        m = method.momentum(info)
        for (online, target), old in zip(pairs, before, strict=True):
            for p_on, p_t, o in zip(online.parameters(), target.parameters(), old, strict=True):
                torch.testing.assert_close(p_t, m * o + (1 - m) * p_on)


def test_momentum_schedule_goes_from_base_to_one() -> None:
    method = _method(base_momentum=0.99)
    values = [method.momentum(step_info(s, steps_per_epoch=50)) for s in range(50)]
    assert values[0] == pytest.approx(0.99)
    assert values[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[25] == pytest.approx(1 - 0.01 * (math.cos(math.pi * 25 / 49) + 1) / 2)


def test_loss_decreases_on_fixed_batch() -> None:
    method = _method(base_momentum=0.99)
    batch = tiny_batch(16)
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(25):
        info = step_info(step, steps_per_epoch=25)
        loss = method.training_step(batch, info)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(info)
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_bad_momentum_raises_value_error() -> None:
    with pytest.raises(ValueError, match="base_momentum"):
        _method(base_momentum=1.2)


def test_method_config_builds_and_runs_on_tiny_data() -> None:
    cfg = method_config("byol")
    assert cfg.eval.select_metric == "val/knn_top1" and cfg.eval.knn.enabled
    method = build_method(cfg.method)
    assert isinstance(method, BYOL) and method.base_momentum == 0.99
    assert torch.isfinite(method.training_step(tiny_batch(), step_info(0, 10))["loss"])
