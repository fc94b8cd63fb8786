"""DINO: the loss, the teacher (no gradient, EMA), centring, schedules, resume."""

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
from torch import nn

from pico.baselines.dino import DINO, DINOHead, dino_loss
from pico.engine.method import Batch, StepInfo


def _method(**kwargs) -> DINO:
    torch.manual_seed(0)
    args = {"out_dim": 12, "hidden_dim": 16, "bottleneck_dim": 6, "num_local_crops": 2}
    return DINO(tiny_backbone(), tiny_task(), **{**args, **kwargs})


def _batch(seed: int = 1) -> Batch:
    return Batch(torch.arange(8), noisy_views(8, seed, 4))


def _info(epoch: int = 0, step: int = 0, epochs: int = 4, steps: int = 3) -> StepInfo:
    return StepInfo(epoch=epoch, step=step, epochs=epochs, steps_per_epoch=steps)


def test_dino_loss_matches_naive_loop_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(4)]
    teacher = [torch.randn(3, 5, generator=gen, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(1, 5, generator=gen, dtype=torch.float64)
    leaves = [s.clone().requires_grad_() for s in student]
    got = dino_loss(leaves, teacher, center, 0.1, 0.04)
    got.backward()
    naive = [s.clone().requires_grad_() for s in student]
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        for v, s in enumerate(naive):
            if v == i:  # a crop is never its own target
                continue
            for b in range(3):
                e_t = [math.exp((float(t[b, k]) - float(center[0, k])) / 0.04) for k in range(5)]
                p_t = [e / sum(e_t) for e in e_t]
                log_z = torch.log(sum(torch.exp(s[b, k] / 0.1) for k in range(5)))
                total = total - sum(p_t[k] * (s[b, k] / 0.1 - log_z) for k in range(5)) / 3
            pairs += 1
    assert pairs == 6
    want = total / pairs
    want.backward()
    torch.testing.assert_close(got.double(), want.detach())
    for a, b in zip(leaves, naive, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_head_is_a_3_layer_mlp_with_a_unit_norm_last_layer():
    head = DINOHead(4, 10, hidden_dim=8, bottleneck_dim=3)
    assert [type(m) for m in head.mlp] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    x = torch.randn(5, 4)
    code = F.normalize(head.mlp(x), dim=1)
    with torch.no_grad():
        head.last_layer.weight.mul_(7.0)  # the scale of a row does not matter
    want = code @ F.normalize(head.last_layer.weight, dim=1).T
    torch.testing.assert_close(head(x), want)
    assert head(x).abs().max() <= 1.0 + 1e-6  # cosines
    bn = DINOHead(4, 10, hidden_dim=8, bottleneck_dim=3, batch_norm=True).mlp
    assert [type(m) for m in bn][:3] == [nn.Linear, nn.BatchNorm1d, nn.GELU]
    assert len(bn) == 7


def test_no_gradient_reaches_the_teacher_and_the_optimizer_skips_it():
    method = _method().train()
    teacher = [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()]
    assert all(not p.requires_grad for p in teacher)
    method.training_step(_batch(), _info())["loss"].backward()
    assert all(p.grad is None for p in teacher)
    assert all(p.grad is not None for p in method.backbone.parameters())
    params = {id(p) for p in method.optim_parameters()}
    student = [p for m in (method.backbone, method.head) for p in m.parameters()]
    assert params == {id(p) for p in student if p.requires_grad}
    assert not method.head.last_layer_scale.requires_grad  # norm_last_layer: rows at norm 1
    assert _method(norm_last_layer=False).head.last_layer_scale.requires_grad


def test_training_step_compares_the_teacher_globals_with_every_other_student_crop():
    method = _method().train()
    batch = _batch()
    center = torch.randn(1, 12)
    method.center.copy_(center)
    info = _info(epoch=1)
    loss = method.training_step(batch, info)["loss"]
    with torch.no_grad():  # views of one size: each network encodes its crops in one pass
        student = method.head(method.backbone(torch.cat(batch.views))).chunk(4)
        teacher = method.teacher_head(method.teacher_backbone(torch.cat(batch.views[:2])))
        want = dino_loss(student, teacher.chunk(2), center, 0.1, method.teacher_temperature(info))
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(method.center, 0.9 * center + 0.1 * teacher.mean(0, keepdim=True))


def test_center_update_is_an_ema_of_the_batch_mean():
    method = _method(center_momentum=0.75)
    outputs = torch.randn(10, 12)
    method.center.fill_(2.0)
    method.update_center_(outputs)
    want = [
        0.75 * 2.0 + 0.25 * sum(float(outputs[r, k]) for r in range(10)) / 10 for k in range(12)
    ]
    torch.testing.assert_close(method.center, torch.tensor([want]))


def test_teacher_temperature_warms_up_then_holds():
    method = _method(teacher_temp_warmup_epochs=30)
    temps = [method.teacher_temperature(_info(epoch=e, epochs=100)) for e in range(40)]
    assert temps[0] == pytest.approx(0.04) and temps[29] == pytest.approx(0.07)
    assert temps[15] == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert temps[30:] == [0.07] * 10
    # a 10-epoch run warms up over its first 3 epochs (30 %)
    short = [method.teacher_temperature(_info(epoch=e, epochs=10)) for e in range(4)]
    assert short == pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_momentum_and_weight_decay_follow_cosines():
    method = _method(base_momentum=0.996, weight_decay_end_ratio=10.0)
    total = 12
    momenta = [method.momentum(_info(step=s)) for s in range(total)]
    factors = [method.weight_decay_factor(_info(step=s)) for s in range(total)]
    assert momenta[0] == pytest.approx(0.996) and momenta[-1] == pytest.approx(1.0)
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(10.0)
    half = (math.cos(math.pi * 5 / 11) + 1) / 2
    assert factors[5] == pytest.approx(10 - 9 * half)
    assert factors == sorted(factors) and momenta == sorted(momenta)


def _step(method: DINO, optimizer: torch.optim.Optimizer, info: StepInfo) -> None:
    loss = method.training_step(_batch(seed=info.step), info)["loss"]
    optimizer.zero_grad()
    loss.backward()
    method.before_optimizer_step(info)
    optimizer.step()
    method.after_optimizer_step(info)


def test_last_layer_frozen_in_the_first_epoch_and_teacher_moves_by_ema():
    method = _method().train()
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    last = method.head.last_layer.weight.clone()
    teacher = [p.clone() for p in method.teacher_head.parameters()]
    info = _info(epoch=0)
    _step(method, optimizer, info)
    assert torch.equal(method.head.last_layer.weight, last)
    m = method.momentum(info)
    for p_t, old, p_s in zip(
        method.teacher_head.parameters(), teacher, method.head.parameters(), strict=True
    ):
        torch.testing.assert_close(p_t, m * old + (1 - m) * p_s)
    _step(method, optimizer, _info(epoch=1, step=3))
    assert not torch.allclose(method.head.last_layer.weight, last)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        _method(student_temp=0.0)
    with pytest.raises(ValueError, match="center_momentum must lie in"):
        _method(center_momentum=1.5)


def test_method_config_builds_with_paper_values():
    cfg = method_config("dino")
    assert cfg.eval.select_metric == "val/knn_top1"
    method = build_method(cfg.method)
    assert isinstance(method, DINO) and len(method.views) == 10
    assert method.center.shape == (1, 65536)


@pytest.mark.slow
def test_resume_mid_run_matches_uninterrupted_run(make_config, tmp_path):
    """Across the last layer's freeze (epoch 1) and the teacher temperature warm-up."""
    common = [
        "method=dino",
        "method.out_dim=64", "method.hidden_dim=32", "method.bottleneck_dim=16",
        "method.num_local_crops=2", "eval.linear_probe=false",
    ]  # fmt: skip
    assert_exact_resume(make_config, tmp_path, *common)
