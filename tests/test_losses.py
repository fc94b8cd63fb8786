from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pico.core.losses import info_nce, nt_xent, sup_con, sup_con_from_labels

DT = torch.float64


def _unit(*shape: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen, dtype=DT), dim=-1).requires_grad_(True)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum()


# ---------------------------------------------------------------- naive references


def _naive_info_nce(q, k, queue, valid, t):
    total = 0.0
    for i in range(q.shape[0]):
        pos = torch.exp(_dot(q[i], k[i]) / t)
        if queue is None:
            denom = sum(torch.exp(_dot(q[i], k[j]) / t) for j in range(k.shape[0]))
        else:
            denom = pos + sum(
                torch.exp(_dot(q[i], queue[j]) / t) for j in range(queue.shape[0]) if valid[j]
            )
        total = total - torch.log(pos / denom)
    return total / q.shape[0]


def _naive_nt_xent(z1, z2, t):
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        partner = (i + n) % n2
        denom = sum(torch.exp(_dot(z[i], z[j]) / t) for j in range(n2) if j != i)
        total = total - torch.log(torch.exp(_dot(z[i], z[partner]) / t) / denom)
    return total / n2


def _naive_sup_con(a, c, weights, t, exclude=None, valid=None):
    total, count = 0.0, 0
    for i in range(a.shape[0]):
        allowed = [
            j
            for j in range(c.shape[0])
            if (valid is None or valid[j]) and (exclude is None or not exclude[i][j])
        ]
        positives = [j for j in allowed if float(weights[i][j]) > 0]
        if not positives:
            continue
        denom = sum(torch.exp(_dot(a[i], c[j]) / t) for j in allowed)
        num = sum(
            float(weights[i][p]) * torch.log(torch.exp(_dot(a[i], c[p]) / t) / denom)
            for p in positives
        )
        total = total - num / sum(float(weights[i][p]) for p in positives)
        count += 1
    return total / count


def _assert_same_value_and_grad(got: Tensor, want: Tensor, inputs: list[Tensor]) -> None:
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g_got = torch.autograd.grad(got, inputs, retain_graph=True)
    g_want = torch.autograd.grad(want, inputs, retain_graph=True)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- info_nce


@pytest.mark.parametrize("t", [0.2, 0.07])
def test_info_nce_with_queue_matches_naive(t: float) -> None:
    q, k, queue = _unit(5, 4, seed=0), _unit(5, 4, seed=1), _unit(7, 4, seed=2)
    valid = torch.tensor([True, False, True, True, False, True, False])
    got = info_nce(q, k, queue, valid, temperature=t)
    want = _naive_info_nce(q, k, queue, valid, t)
    _assert_same_value_and_grad(got, want, [q, k, queue])
    # All-valid mask equals no mask.
    all_valid = torch.ones(7, dtype=torch.bool)
    torch.testing.assert_close(info_nce(q, k, queue, all_valid, t), info_nce(q, k, queue, None, t))


def test_info_nce_without_queue_uses_batch_keys() -> None:
    q, k = _unit(6, 3, seed=3), _unit(6, 3, seed=4)
    got = info_nce(q, k, temperature=0.3)
    _assert_same_value_and_grad(got, _naive_info_nce(q, k, None, None, 0.3), [q, k])


def test_info_nce_ignores_garbage_in_invalid_slots() -> None:
    q, k, queue = _unit(4, 3, seed=5), _unit(4, 3, seed=6), _unit(6, 3, seed=7)
    valid = torch.tensor([True, True, False, True, False, False])
    clean = queue.detach().clone().masked_fill(~valid[:, None], 0.0).requires_grad_(True)
    dirty = queue.detach().clone()
    dirty[2] = 1e300
    dirty[4] = float("inf")
    dirty[5] = float("nan")
    dirty.requires_grad_(True)
    a = info_nce(q, k, clean, valid)
    b = info_nce(q, k, dirty, valid)
    assert torch.isfinite(b)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    ga = torch.autograd.grad(a, [q, k, clean])
    gb = torch.autograd.grad(b, [q, k, dirty])
    for x, y in zip(ga, gb, strict=True):
        assert torch.isfinite(y).all()
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert (gb[2][~valid] == 0).all()


def test_info_nce_with_empty_valid_queue_is_zero_loss() -> None:
    q, k, queue = _unit(3, 4, seed=8), _unit(3, 4, seed=9), _unit(5, 4, seed=10)
    loss = info_nce(q, k, queue, torch.zeros(5, dtype=torch.bool))
    torch.testing.assert_close(loss, torch.zeros((), dtype=DT))
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, [q, k]))


# ---------------------------------------------------------------- nt_xent


@pytest.mark.parametrize("t", [0.5, 0.2])
def test_nt_xent_matches_naive(t: float) -> None:
    z1, z2 = _unit(4, 5, seed=11), _unit(4, 5, seed=12)
    _assert_same_value_and_grad(nt_xent(z1, z2, t), _naive_nt_xent(z1, z2, t), [z1, z2])


# ---------------------------------------------------------------- sup_con


def test_sup_con_bool_mask_with_exclusions_validity_and_positiveless_anchor() -> None:
    a, c = _unit(4, 3, seed=13), _unit(9, 3, seed=14)
    gen = torch.Generator().manual_seed(15)
    pos = torch.rand(4, 9, generator=gen) < 0.4
    pos[2] = False  # anchor 2 has no positive: left out of the mean
    pos[3, 5] = True  # a positive on an invalid slot does not count
    exclude = torch.rand(4, 9, generator=gen) < 0.2
    exclude[0, 1] = True
    pos[0, 1] = True  # an excluded positive does not count either
    valid = torch.ones(9, dtype=torch.bool)
    valid[5] = False
    got = sup_con(a, c, pos, 0.1, exclude_mask=exclude, contrast_valid=valid)
    want = _naive_sup_con(a, c, pos, 0.1, exclude, valid)
    _assert_same_value_and_grad(got, want, [a, c])


def test_sup_con_float_weights_matches_naive_and_bool_special_case() -> None:
    a, c = _unit(5, 4, seed=16), _unit(8, 4, seed=17)
    gen = torch.Generator().manual_seed(18)
    weights = torch.rand(5, 8, generator=gen, dtype=DT)
    weights[weights < 0.5] = 0
    weights[1] = 0
    got = sup_con(a, c, weights, 0.2)
    _assert_same_value_and_grad(got, _naive_sup_con(a, c, weights, 0.2), [a, c])
    bool_mask = weights > 0
    torch.testing.assert_close(
        sup_con(a, c, bool_mask, 0.2), sup_con(a, c, bool_mask.to(DT), 0.2), rtol=0, atol=0
    )


def test_sup_con_identity_on_keys_is_instance_discrimination() -> None:
    n, kq = 4, 6
    q, k, queue = _unit(n, 3, seed=19), _unit(n, 3, seed=20), _unit(kq, 3, seed=21)
    contrast = torch.cat([k, queue])
    pos = torch.cat([torch.eye(n, dtype=torch.bool), torch.zeros(n, kq, dtype=torch.bool)], 1)
    # Other keys excluded: exactly MoCo's InfoNCE.
    other_keys = torch.cat(
        [~torch.eye(n, dtype=torch.bool), torch.zeros(n, kq, dtype=torch.bool)], 1
    )
    got = sup_con(q, contrast, pos, 0.2, exclude_mask=other_keys)
    _assert_same_value_and_grad(got, info_nce(q, k, queue, None, 0.2), [q, k, queue])
    _assert_same_value_and_grad(got, _naive_info_nce(q, k, queue, [True] * kq, 0.2), [q, k, queue])
    # Contrast = keys only: InfoNCE with in-batch negatives.
    got = sup_con(q, k, torch.eye(n, dtype=torch.bool), 0.3)
    _assert_same_value_and_grad(got, _naive_info_nce(q, k, None, None, 0.3), [q, k])


def test_sup_con_without_any_positive_is_zero_with_grad_path() -> None:
    a, c = _unit(3, 4, seed=22), _unit(5, 4, seed=23)
    loss = sup_con(a, c, torch.zeros(3, 5, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert a.grad is not None and (a.grad == 0).all()


def test_sup_con_fully_masked_rows_and_garbage_contrast_stay_finite() -> None:
    a, c = _unit(3, 4, seed=24), _unit(6, 4, seed=25)
    dirty = c.detach().clone()
    dirty[4] = float("nan")
    dirty[5] = 1e300
    dirty.requires_grad_(True)
    valid = torch.tensor([True, True, True, True, False, False])
    exclude = torch.zeros(3, 6, dtype=torch.bool)
    exclude[1] = True  # anchor 1: nothing allowed at all
    pos = torch.ones(3, 6, dtype=torch.bool)
    loss = sup_con(a, dirty, pos, 0.07, exclude_mask=exclude, contrast_valid=valid)
    want = _naive_sup_con(a, c, pos, 0.07, exclude, valid)
    torch.testing.assert_close(loss, want)
    grads = torch.autograd.grad(loss, [a, dirty])
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][1] == 0).all() and (grads[1][4:] == 0).all()


def test_sup_con_from_labels_pico_layout_matches_naive() -> None:
    n, kq = 4, 5
    q, k, queue = _unit(n, 3, seed=26), _unit(n, 3, seed=27), _unit(kq, 3, seed=28)
    yhat = torch.tensor([0, 1, 0, 2])
    queue_labels = torch.tensor([1, 0, -1, 2, 1])
    valid = torch.tensor([True, True, False, True, True])
    contrast = torch.cat([q, k, queue])
    labels = torch.cat([yhat, yhat, queue_labels])
    got = sup_con_from_labels(
        q,
        yhat,
        contrast,
        labels,
        0.07,
        contrast_valid=torch.cat([torch.ones(2 * n, dtype=torch.bool), valid]),
    )
    m = contrast.shape[0]
    pos = [[bool(yhat[i] == labels[j]) for j in range(m)] for i in range(n)]
    exclude = [[i == j for j in range(m)] for i in range(n)]
    cvalid = [True] * (2 * n) + valid.tolist()
    want = _naive_sup_con(q, contrast, pos, 0.07, exclude, cvalid)
    _assert_same_value_and_grad(got, want, [q, k, queue])
    # Without the layout assumption self is a positive: a different value.
    other = sup_con_from_labels(q, yhat, contrast, labels, 0.07, anchors_in_contrast=False)
    assert not torch.allclose(other, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_temperature_identical_vectors_are_finite(dtype: torch.dtype) -> None:
    v = F.normalize(torch.ones(6, 8, dtype=dtype), dim=1).requires_grad_(True)
    w = F.normalize(torch.ones(6, 8, dtype=dtype), dim=1).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    losses = {
        "info_nce_queue": info_nce(v, w, w, torch.ones(6, dtype=torch.bool), 0.01),
        "info_nce": info_nce(v, w, temperature=0.01),
        "nt_xent": nt_xent(v, w, 0.01),
        "sup_con": sup_con_from_labels(v, labels, torch.cat([v, w]), labels.repeat(2), 0.01),
    }
    for name, loss in losses.items():
        assert torch.isfinite(loss), name
        for g in torch.autograd.grad(loss, [v, w], allow_unused=True, materialize_grads=True):
            assert torch.isfinite(g).all(), name
    # All similarities equal: InfoNCE is log(number of candidates).
    torch.testing.assert_close(
        losses["info_nce_queue"], torch.log(torch.tensor(7.0, dtype=dtype)), rtol=1e-5, atol=1e-5
    )


def test_low_precision_inputs_give_float32_loss() -> None:
    q = F.normalize(torch.randn(4, 8), dim=1).bfloat16().requires_grad_(True)
    k = F.normalize(torch.randn(4, 8), dim=1).bfloat16()
    loss = info_nce(q, k, temperature=0.05)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref = info_nce(q.detach().float(), k.float(), temperature=0.05)
    torch.testing.assert_close(loss, ref, rtol=0.05, atol=0.05)
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad.float()).all()


def test_losses_reject_bad_inputs() -> None:
    q, k = _unit(3, 4, seed=29), _unit(3, 4, seed=30)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, k, temperature=0.0)
    with pytest.raises(ValueError, match="one row per query"):
        info_nce(q, k[:2])
    with pytest.raises(ValueError, match="queue_valid"):
        info_nce(q, k, k, torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="same rows"):
        nt_xent(q, k[:2])
    with pytest.raises(ValueError, match="positive_mask"):
        sup_con(q, k, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive_mask"):
        sup_con(q, k, torch.ones(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="exclude_mask"):
        sup_con(q, k, torch.eye(3, dtype=torch.bool), exclude_mask=torch.eye(3))
    with pytest.raises(ValueError, match="first rows"):
        sup_con_from_labels(q, torch.zeros(3), k[:2], torch.zeros(2))
