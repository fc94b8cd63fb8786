from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pico.core.nce import bank_logits, estimate_log_z, nce_loss


def _naive_nce(pos: torch.Tensor, noise: torch.Tensor, log_z: float, n: int) -> torch.Tensor:
    """Per-example loop over the paper's formula with probabilities (not log space)."""
    z = math.exp(log_z)
    k = noise.shape[1]
    total = pos.new_zeros(())
    for b in range(len(pos)):
        p = torch.exp(pos[b]) / z
        term = -torch.log(p / (p + k / n))
        for j in range(k):
            pn = torch.exp(noise[b, j]) / z
            term = term - torch.log(1 - pn / (pn + k / n))
        total = total + term
    return total / len(pos)


@pytest.mark.parametrize(("batch", "k", "n"), [(1, 1, 1), (4, 3, 50), (5, 8, 8)])
def test_nce_loss_matches_naive_loop_values_and_gradients(batch: int, k: int, n: int) -> None:
    gen = torch.Generator().manual_seed(batch * 10 + k)
    pos = (torch.randn(batch, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    noise = (torch.randn(batch, k, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    log_z = 1.7

    got = nce_loss(pos, noise, torch.tensor(log_z, dtype=torch.float64), n)
    want = _naive_nce(pos, noise, log_z, n)
    torch.testing.assert_close(got, want)
    got_grads = torch.autograd.grad(got, (pos, noise))
    want_grads = torch.autograd.grad(want, (pos, noise))
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


def test_nce_loss_is_finite_for_extreme_logits_and_ignores_log_z_gradient() -> None:
    pos = torch.tensor([300.0, -300.0], requires_grad=True)
    noise = torch.tensor([[300.0, -300.0], [0.0, 250.0]], requires_grad=True)
    log_z = torch.tensor(2.0, requires_grad=True)
    loss = nce_loss(pos, noise, log_z, 10)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pos.grad).all() and torch.isfinite(noise.grad).all()
    assert log_z.grad is None


def test_nce_loss_prefers_high_positive_and_low_noise_logits() -> None:
    low = nce_loss(torch.tensor([5.0]), torch.tensor([[-5.0, -5.0]]), 0.0, 100)
    high = nce_loss(torch.tensor([-5.0]), torch.tensor([[5.0, 5.0]]), 0.0, 100)
    assert low < high


def test_estimate_log_z_matches_monte_carlo_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(6, 7, generator=gen) * 4
    got = estimate_log_z(noise, 1000)
    want = math.log(1000 * np.exp(noise.double().numpy()).mean())
    assert got.ndim == 0
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_estimate_log_z_does_not_overflow_and_is_detached() -> None:
    noise = torch.full((2, 3), 1000.0, requires_grad=True)
    got = estimate_log_z(noise, 50)
    assert got.item() == pytest.approx(1000 + math.log(50), rel=1e-6)
    assert not got.requires_grad


def _naive_bank_logits(v: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, t: float):
    out = torch.zeros(idx.shape, dtype=v.dtype)
    for b in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            out[b, j] = (v[b] * bank[idx[b, j]]).sum() / t
    return out


@pytest.mark.parametrize(
    ("n", "k", "dim"),
    [(10, 3, 8), (200, 3, 8)],  # N <= K*D: full product; N > K*D: gathered rows
)
def test_bank_logits_both_routes_match_naive_values_and_gradients(n: int, k: int, dim: int) -> None:
    gen = torch.Generator().manual_seed(n)
    v = torch.randn(4, dim, generator=gen, dtype=torch.float64).requires_grad_(True)
    bank = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    idx = torch.randint(0, n, (4, k), generator=gen)
    got = bank_logits(v, bank, idx, 0.1)
    want = _naive_bank_logits(v, bank, idx, 0.1)
    torch.testing.assert_close(got, want)
    weights = torch.randn(4, k, generator=gen, dtype=torch.float64)
    (g,) = torch.autograd.grad((got * weights).sum(), v)
    (w,) = torch.autograd.grad((want * weights).sum(), v)
    torch.testing.assert_close(g, w)


def test_bank_logits_stay_float32_under_autocast() -> None:
    gen = torch.Generator().manual_seed(1)
    v = torch.nn.functional.normalize(torch.randn(3, 16, generator=gen), dim=1)
    bank = torch.nn.functional.normalize(torch.randn(20, 16, generator=gen), dim=1)
    idx = torch.randint(0, 20, (3, 5), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bank_logits(v.bfloat16(), bank, idx, 0.07)
    assert got.dtype == torch.float32
    want = bank_logits(v.bfloat16().float(), bank, idx, 0.07)
    torch.testing.assert_close(got, want)


def test_bad_inputs_raise_value_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        nce_loss(torch.zeros(3), torch.zeros(2, 4), 0.0, 10)
    with pytest.raises(ValueError, match="num_data"):
        nce_loss(torch.zeros(2), torch.zeros(2, 4), 0.0, 0)
    with pytest.raises(ValueError, match="K >= 1"):
        estimate_log_z(torch.zeros(2, 0), 10)
    with pytest.raises(ValueError, match="temperature"):
        bank_logits(torch.zeros(2, 3), torch.zeros(5, 3), torch.zeros(2, 1, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="same width"):
        bank_logits(torch.zeros(2, 3), torch.zeros(5, 4), torch.zeros(2, 1, dtype=torch.long), 1)
