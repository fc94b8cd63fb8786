"""MoCo v3: the scaled in-batch InfoNCE, the heads, the momentum encoder and its
schedule, the frozen patch projection, and exact resume."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import (
    assert_exact_resume,
    build_method,
    method_config,
    step_info,
    tiny_backbone,
    tiny_batch,
    tiny_task,
)
from hydra import compose, initialize_config_module
from torch import nn

from pico.baselines.mocov3 import MoCoV3, mocov3_loss
from pico.models.vit import VisionTransformer

SMALL = ["method=mocov3", "method.proj_hidden=32", "method.pred_hidden=32", "method.proj_dim=16"]


def _method(seed: int = 0, backbone: nn.Module | None = None, **kwargs) -> MoCoV3:
    torch.manual_seed(seed)
    backbone = tiny_backbone() if backbone is None else backbone
    return MoCoV3(backbone, tiny_task(), proj_hidden=24, proj_dim=8, pred_hidden=24, **kwargs)


def _tiny_vit() -> VisionTransformer:
    return VisionTransformer(1, 4, patch_size=2, width=8, depth=1, heads=2)


def _naive_loss(q: torch.Tensor, k: torch.Tensor, tau: float, offset: int) -> torch.Tensor:
    """``2 tau`` times the mean over queries of ``-log softmax_j(cos(q_i, k_j) / tau)`` at
    ``j = offset + i``, one query and one key at a time, in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(q)):
        sims = [q[i] @ k[j] / (q[i].norm() * k[j].norm()) / tau for j in range(len(k))]
        log_norm = torch.log(sum(torch.exp(s) for s in sims))
        total = total + log_norm - sims[offset + i]
    return 2 * tau * total / len(q)


@pytest.mark.parametrize(("tau", "offset"), [(0.2, 0), (1.0, 0), (0.2, 3)])
def test_loss_matches_naive_float64_loop_in_value_and_gradient(tau: float, offset: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, 5, generator=gen, requires_grad=True)
    k = torch.randn(8, 5, generator=gen)
    got = mocov3_loss(q, k, tau, offset)
    got.backward()
    q64 = q.detach().double().requires_grad_()
    want = _naive_loss(q64, k.double(), tau, offset)
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(q.grad.double(), q64.grad, rtol=1e-4, atol=1e-6)


def test_per_process_losses_average_to_the_global_batch_loss() -> None:
    """Two processes, each with its queries and the gathered keys (offset: rank x rows),
    average to the single-process loss, so DDP's gradient mean is the global gradient."""
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    halves = (mocov3_loss(q[:4], k, 0.2, 0) + mocov3_loss(q[4:], k, 0.2, 4)) / 2
    torch.testing.assert_close(halves, mocov3_loss(q, k, 0.2))


def test_loss_rejects_bad_arguments() -> None:
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        mocov3_loss(q, q, 0.0)
    with pytest.raises(ValueError, match="offset 1 leaves no positive key"):
        mocov3_loss(q, q, 0.2, 1)


def test_training_loss_is_the_sum_over_view_orders_with_momentum_keys() -> None:
    method = _method()
    batch = tiny_batch()
    loss = method.training_step(batch, step_info())["loss"]
    a, b = batch.views
    with torch.no_grad():
        q = [method.predictor(method.projector(method.backbone(v))) for v in (a, b)]
        k = [method.key_projector(method.key_backbone(v)) for v in (a, b)]
    want = mocov3_loss(q[0], k[1], 0.2) + mocov3_loss(q[1], k[0], 0.2)
    torch.testing.assert_close(loss, want)


def test_heads_follow_the_paper_and_keys_are_excluded_from_the_optimizer() -> None:
    method = _method()
    bn = [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert [type(m) for m in method.projector] == bn * 2 + [nn.Linear, nn.BatchNorm1d]
    assert [type(m) for m in method.predictor] == [*bn, nn.Linear, nn.BatchNorm1d]
    params = {id(p) for p in method.optim_parameters()}
    online = (method.backbone, method.projector, method.predictor)
    assert params == {id(p) for m in online for p in m.parameters()}
    keys = (method.key_backbone, method.key_projector)
    assert all(not p.requires_grad for m in keys for p in m.parameters())


def test_no_gradient_reaches_the_momentum_encoder_which_moves_only_by_ema() -> None:
    method = _method()
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.1)
    pairs = [(method.backbone, method.key_backbone), (method.projector, method.key_projector)]
    for step in range(3):
        info = step_info(step, steps_per_epoch=3)
        before = [[p.clone() for p in key.parameters()] for _, key in pairs]
        loss = method.training_step(tiny_batch(seed=step), info)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for (_, key), old in zip(pairs, before, strict=True):
            assert all(p.grad is None for p in key.parameters())
            assert all(torch.equal(p, o) for p, o in zip(key.parameters(), old, strict=True))
        method.after_optimizer_step(info)
        m = method.momentum(info)
        for (online, key), old in zip(pairs, before, strict=True):
            for p_on, p_k, o in zip(online.parameters(), key.parameters(), old, strict=True):
                torch.testing.assert_close(p_k, m * o + (1 - m) * p_on)


def test_momentum_follows_a_cosine_from_base_to_one() -> None:
    method = _method(base_momentum=0.99)
    values = [method.momentum(step_info(s, steps_per_epoch=40)) for s in range(40)]
    assert values[0] == pytest.approx(0.99) and values[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[13] == pytest.approx(1 - 0.01 * (math.cos(math.pi * 13 / 39) + 1) / 2)


def test_frozen_patch_projection_stays_at_its_random_init() -> None:
    method = _method(backbone=_tiny_vit(), freeze_patch_embed=True)
    patch = list(method.backbone.patch_embed.parameters())
    start = [p.clone() for p in patch]
    assert patch and all(not p.requires_grad for p in patch)
    params = {id(p) for p in method.optim_parameters()}
    assert not params & {id(p) for p in patch}
    assert {id(p) for p in method.backbone.encoder.parameters()} <= params
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.5)
    for step in range(2):
        loss = method.training_step(tiny_batch(seed=step), step_info(step, 2))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(step_info(step, 2))
    assert all(torch.equal(p, s) for p, s in zip(patch, start, strict=True))
    key_patch = method.key_backbone.patch_embed.parameters()
    assert all(torch.equal(p, s) for p, s in zip(key_patch, start, strict=True))
    unfrozen = _method(backbone=_tiny_vit())
    assert all(p.requires_grad for p in unfrozen.backbone.patch_embed.parameters())


def test_freezing_a_patch_projection_the_backbone_lacks_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="freeze_patch_embed=true needs a backbone with a patch"):
        _method(freeze_patch_embed=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"temperature": 0.0}, "temperature"), ({"base_momentum": 1.5}, "base_momentum")],
)
def test_bad_hyperparameters_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _method(**kwargs)


def test_loss_decreases_on_fixed_batch() -> None:
    method = _method()
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
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_method_config_builds_and_runs_on_tiny_data() -> None:
    cfg = method_config("mocov3")
    assert cfg.eval.select_metric == "val/knn_top1" and cfg.eval.knn.enabled
    method = build_method(cfg.method)
    assert isinstance(method, MoCoV3)
    assert method.temperature == 0.2 and method.base_momentum == 0.99
    assert not method.freeze_patch_embed
    assert torch.isfinite(method.training_step(tiny_batch(), step_info())["loss"])


def test_resume_from_mid_run_checkpoint_matches_uninterrupted_run(make_config, tmp_path) -> None:
    common = [*SMALL]
    assert_exact_resume(make_config, tmp_path, *common, "eval.linear_probe=false")


def test_digits_runs_use_the_tuned_head_widths() -> None:
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=["data=digits", "method=mocov3"])
    assert (cfg.method.proj_hidden, cfg.method.pred_hidden, cfg.method.proj_dim) == (512, 512, 256)
    assert cfg.method.temperature == 0.2
    assert (cfg.trainer.optimizer.lr, cfg.trainer.optimizer.weight_decay) == (0.1, 0.003)
