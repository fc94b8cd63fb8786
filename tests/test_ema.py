from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from pico.core.ema import cosine_momentum, ema_update_, momentum_copy, run_momentum
from pico.engine.method import Method


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    )


def _naive_ema(online: nn.Module, target: nn.Module, m: float) -> None:
    with torch.no_grad():
        src = dict(online.named_parameters()) | dict(online.named_buffers())
        for name, t in list(target.named_parameters()) + list(target.named_buffers()):
            s = src[name]
            if t.is_floating_point():
                t.copy_(m * t + (1 - m) * s)
            else:
                t.copy_(s)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _train_bn(module: nn.Module, seed: int) -> None:
    """Run forward passes in train mode so BatchNorm running stats and counters move."""
    gen = torch.Generator().manual_seed(seed)
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(8, 3, 6, 6, generator=gen) * 2 + 1)


@pytest.mark.parametrize("m", [0.0, 0.3, 0.99, 1.0])
def test_ema_matches_naive_loop_including_bn_stats(m: float) -> None:
    online = _net(0)
    target = _net(1)
    _train_bn(online, 2)
    _train_bn(online, 3)
    _train_bn(target, 4)
    reference = _net(5)
    reference.load_state_dict(target.state_dict())
    assert online[1].num_batches_tracked.item() != target[1].num_batches_tracked.item()

    ema_update_([(online, target)], m)
    _naive_ema(online, reference, m)

    got, want = _state(target), _state(reference)
    assert got.keys() == want.keys()
    for name in got:
        assert got[name].dtype == want[name].dtype
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=name)
    assert target[1].num_batches_tracked.item() == online[1].num_batches_tracked.item()
    if 0 < m < 1:
        # The running stats really moved towards the online ones.
        assert not torch.equal(target[1].running_mean, _net(1)[1].running_mean)


def test_ema_several_pairs_at_once_equals_one_by_one() -> None:
    pairs_a = [(_net(i), _net(10 + i)) for i in range(3)]
    pairs_b = [(_net(i), _net(10 + i)) for i in range(3)]
    ema_update_(pairs_a, 0.9)
    for pair in pairs_b:
        ema_update_([pair], 0.9)
    for (_, ta), (_, tb) in zip(pairs_a, pairs_b, strict=True):
        for (name, a), (_, b) in zip(ta.state_dict().items(), tb.state_dict().items(), strict=True):
            assert torch.equal(a, b), name


def test_ema_repeated_converges_to_online_and_leaves_online_untouched() -> None:
    online, target = _net(0), _net(1)
    before = _state(online)
    for _ in range(200):
        ema_update_([(online, target)], 0.9)
    for name, value in online.state_dict().items():
        assert torch.equal(value, before[name])
    for (name, p), q in zip(target.named_parameters(), online.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=name)


def test_ema_does_not_build_graph() -> None:
    online, target = _net(0), _net(1)
    for p in target.parameters():
        p.requires_grad_(True)
    ema_update_([(online, target)], 0.5)
    assert all(p.grad_fn is None for p in target.parameters())


def test_ema_rejects_mismatched_modules_and_bad_momentum() -> None:
    online = _net(0)
    with pytest.raises(ValueError, match="names"):
        ema_update_([(online, nn.Linear(3, 4))], 0.9)
    other = _net(1)
    other[4] = nn.Linear(4 * 4 * 4, 6)
    with pytest.raises(ValueError, match=r"target is \(6, 64\)"):
        ema_update_([(online, other)], 0.9)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="momentum"):
            ema_update_([(online, _net(1))], bad)


def test_momentum_copy_is_frozen_deep_copy() -> None:
    online = _net(0)
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    for (name, a), (_, b) in zip(
        online.state_dict().items(), target.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr(), name
    with torch.no_grad():
        next(online.parameters()).add_(1.0)
    assert not torch.equal(next(online.parameters()), next(target.parameters()))


def test_cosine_momentum_endpoints_formula_and_monotone() -> None:
    total = 50
    values = [cosine_momentum(0.99, s, total) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.99)
    assert values[-1] == pytest.approx(1.0)
    assert values[total // 2] == pytest.approx(0.995)
    assert all(b > a for a, b in itertools.pairwise(values))
    s = 13
    want = 1.0 - (1.0 - 0.99) * (math.cos(math.pi * s / total) + 1) / 2
    assert cosine_momentum(0.99, s, total) == pytest.approx(want, abs=1e-15)
    # Clipped outside [0, total_steps], custom final.
    assert cosine_momentum(0.99, 10 * total, total) == pytest.approx(1.0)
    assert cosine_momentum(0.99, -5, total) == pytest.approx(0.99)
    assert cosine_momentum(0.9, total, total, final=0.95) == pytest.approx(0.95)


def test_cosine_momentum_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        cosine_momentum(0.99, 0, 0)
    with pytest.raises(ValueError, match="base"):
        cosine_momentum(1.5, 0, 10)


def test_method_momentum_update_keeps_its_lists_until_moved_or_switched():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = momentum_copy(online)
    method = Method()
    method.online, method.target = online, target
    for param in target.parameters():
        param.data.zero_()
    method.momentum_update_([(online, target)], 0.5)
    want = online[0].weight / 2
    torch.testing.assert_close(target[0].weight, want)
    method.momentum_update_([(online, target)], 0.5)  # the kept lists move the same tensors
    torch.testing.assert_close(target[0].weight, want * 1.5)
    method.double()  # new buffer tensors: the lists are made again
    target[1].running_mean.zero_()
    online[1].running_mean.fill_(2.0)
    method.momentum_update_([(online, target)], 0.5)
    torch.testing.assert_close(target[1].running_mean, torch.ones(4, dtype=torch.float64))
    assert target[1].running_mean is method.target[1].running_mean


def test_run_momentum_caps_the_lag_at_a_share_of_the_run():
    assert run_momentum(0.999, 200_000, 0.2) == 0.999  # long runs keep the paper's value
    assert run_momentum(0.999, 220, None) == 0.999
    short = run_momentum(0.999, 220, 0.2)
    assert short == pytest.approx(1 - 1 / 44)
    assert run_momentum(0.999, 2, 0.2) == 0.0  # never negative
    # the property the cap is for: after lag_share of the run, an EMA has followed a step
    # change of its online weight by 1 - 1/e or more (0.999 would have moved 4 % of it)
    target = 0.0
    for _ in range(44):
        target = short * target + (1 - short) * 1.0
    assert target >= 1 - 1 / math.e
    assert 1 - 0.999**44 < 0.05
