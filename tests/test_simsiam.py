"""SimSiam: the negative-cosine loss, the stop-gradient, the heads, the fixed predictor
learning rate (the trainer's ``fixed_lr`` parameter groups) and exact resume."""

from __future__ import annotations

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
from omegaconf import OmegaConf
from torch import nn

from pico.baselines.simsiam import SimSiam, negative_cosine
from pico.engine.method import FIXED_LR
from pico.engine.optim import build_optimizer, warmup_cosine

SGD = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.1, "momentum": 0.9})
SMALL = ["method=simsiam", "method.proj_hidden=32", "method.proj_dim=32"]


def _method(seed: int = 0, **kwargs) -> SimSiam:
    torch.manual_seed(seed)
    return SimSiam(tiny_backbone(), tiny_task(), proj_hidden=24, proj_dim=16, **kwargs)


def _naive_negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-mean_i cos(p_i, z_i)`` row by row, in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(p)):
        dot = sum(p[i, d] * z[i, d] for d in range(p.shape[1]))
        total = total - dot / (torch.sqrt((p[i] ** 2).sum()) * torch.sqrt((z[i] ** 2).sum()))
    return total / len(p)


def test_negative_cosine_matches_naive_float64_loop_in_value_and_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(6, 5, generator=gen, requires_grad=True)
    z = torch.randn(6, 5, generator=gen, requires_grad=True)
    got = negative_cosine(p, z)
    got.backward()
    p64 = p.detach().double().requires_grad_()
    want = _naive_negative_cosine(p64, z.detach().double())
    want.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(p.grad.double(), p64.grad, rtol=1e-5, atol=1e-7)
    assert z.grad is None  # the stop-gradient: nothing flows into the target
    assert negative_cosine(p, 2 * p).item() == pytest.approx(-1.0)
    assert -1.0 - 1e-6 <= got.item() <= 1.0 + 1e-6


def test_training_loss_is_the_symmetrised_negative_cosine() -> None:
    method = _method()
    batch = tiny_batch()
    loss = method.training_step(batch, step_info())["loss"]
    a, b = batch.views
    with torch.no_grad():
        z = [method.projector(method.backbone(v)) for v in (a, b)]
        p = [method.predictor(v) for v in z]
    want = (negative_cosine(p[0], z[1]) + negative_cosine(p[1], z[0])) / 2
    torch.testing.assert_close(loss, want)


def test_no_gradient_reaches_the_target_branch() -> None:
    """The step's gradient equals that of the loss with both projections, as targets,
    replaced by constants: the target branch contributes nothing."""
    method = _method()
    batch = tiny_batch()
    method.training_step(batch, step_info())["loss"].backward()
    got = {name: p.grad.clone() for name, p in method.named_parameters()}
    method.zero_grad()
    a, b = batch.views
    z_a, z_b = method.projector(method.backbone(a)), method.projector(method.backbone(b))
    targets = (z_a.detach().clone(), z_b.detach().clone())
    p_a, p_b = method.predictor(z_a), method.predictor(z_b)
    want_loss = (
        -torch.cosine_similarity(p_a, targets[1]).mean()
        - torch.cosine_similarity(p_b, targets[0]).mean()
    ) / 2
    want_loss.backward()
    for name, p in method.named_parameters():
        torch.testing.assert_close(got[name], p.grad, msg=name)
    assert all(g.abs().sum() > 0 for g in got.values())


def test_heads_follow_the_paper() -> None:
    method = _method()
    types = [type(m) for m in method.projector]
    assert types == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear, nn.BatchNorm1d]
    assert not method.projector[-1].affine  # the output BN (the paper's CIFAR variant)
    assert [type(m) for m in method.predictor] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert method.predictor[0].out_features == 16 // 4  # the bottleneck: proj_dim / 4
    assert _method(pred_hidden=7).predictor[0].out_features == 7
    with pytest.raises(ValueError, match="head sizes must be positive"):
        SimSiam(tiny_backbone(), tiny_task(), proj_dim=2)


def test_optimizer_groups_cover_every_parameter_once_with_a_fixed_predictor_group() -> None:
    method = _method()
    groups = method.optim_parameters()
    assert [g.get(FIXED_LR, False) for g in groups] == [False, True]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in method.predictor.parameters()}
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in method.parameters())
    assert not _method(fixed_predictor_lr=False).optim_parameters()[1][FIXED_LR]


def test_warmup_cosine_leaves_fixed_lr_groups_at_their_base_rate() -> None:
    method = _method()
    optimizer = build_optimizer(method.optim_parameters(), SGD)
    scheduler = warmup_cosine(optimizer, warmup_steps=3, total_steps=10)
    seen = []
    for step in range(10):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
        if step == 4:  # the fixed group survives a checkpoint round trip
            state = (optimizer.state_dict(), scheduler.state_dict())
            optimizer = build_optimizer(method.optim_parameters(), SGD)
            scheduler = warmup_cosine(optimizer, warmup_steps=3, total_steps=10)
            optimizer.load_state_dict(state[0])
            scheduler.load_state_dict(state[1])
    scheduled, fixed = zip(*seen, strict=True)
    assert fixed == (0.1,) * 10
    assert scheduled[0] == pytest.approx(0.1 / 3) and scheduled[2] == pytest.approx(0.1)
    assert scheduled[6] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 7)))
    assert optimizer.param_groups[1][FIXED_LR] and not optimizer.param_groups[0].get(FIXED_LR)
    # without the flag both groups follow the schedule
    plain = build_optimizer(_method(fixed_predictor_lr=False).optim_parameters(), SGD)
    warmup_cosine(plain, warmup_steps=3, total_steps=10)
    assert [g["lr"] for g in plain.param_groups] == pytest.approx([0.1 / 3, 0.1 / 3])


def test_plain_parameter_lists_still_build_one_scheduled_group() -> None:
    optimizer = build_optimizer(tiny_backbone().parameters(), SGD)
    warmup_cosine(optimizer, warmup_steps=2, total_steps=4)
    assert len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_loss_decreases_on_fixed_batch() -> None:
    method = _method()
    batch = tiny_batch(16)
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(30):
        loss = method.training_step(batch, step_info(step, 30))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2


def test_method_config_builds_and_runs_on_tiny_data() -> None:
    cfg = method_config("simsiam")
    assert cfg.eval.select_metric == "val/knn_top1" and cfg.eval.knn.enabled
    method = build_method(cfg.method)
    assert isinstance(method, SimSiam) and method.fixed_predictor_lr
    assert method.projector[-2].out_features == 2048
    assert method.predictor[0].out_features == 512
    assert torch.isfinite(method.training_step(tiny_batch(), step_info())["loss"])


def test_trainer_keeps_the_predictor_lr_and_resumes_exactly(make_config, tmp_path) -> None:
    common = [*SMALL]
    a = assert_exact_resume(make_config, tmp_path, *common, "eval.linear_probe=false")
    scheduled, fixed = a["optimizer"]["param_groups"]
    assert scheduled["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine decayed to zero
    base = make_config(*SMALL).trainer.optimizer.lr
    assert fixed["lr"] == fixed["initial_lr"] == pytest.approx(base) and fixed[FIXED_LR]


def test_digits_runs_use_the_tuned_head_widths() -> None:
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=["data=digits", "method=simsiam"])
    assert (cfg.method.proj_hidden, cfg.method.proj_dim) == (512, 512)
    assert cfg.method.pred_hidden is None and cfg.method.fixed_predictor_lr
    assert (cfg.trainer.optimizer.lr, cfg.trainer.optimizer.weight_decay) == (0.1, 0.003)
