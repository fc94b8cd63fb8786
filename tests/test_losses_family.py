"""Triplet, margin contrastive and JSD losses against naive float64 loops."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import pico
from pico.core.losses import (
    jsd_mi_loss,
    margin_contrastive_loss,
    triplet_loss,
    triplet_loss_from_labels,
)

DT = torch.float64
A, M, D = 6, 10, 3


def _points(*shape: int, seed: int, scale: float = 1.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen, dtype=DT)).requires_grad_(True)


def _masks(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """A random positive mask, an exclude mask (the diagonal) and a validity mask."""
    gen = torch.Generator().manual_seed(seed)
    positive = torch.rand(A, M, generator=gen) < 0.35
    exclude = torch.eye(A, M, dtype=torch.bool)
    valid = torch.ones(M, dtype=torch.bool)
    valid[[3, 7]] = False
    return positive, exclude, valid


def _allowed(i: int, j: int, exclude: Tensor | None, valid: Tensor | None) -> bool:
    return (valid is None or bool(valid[j])) and (exclude is None or not bool(exclude[i, j]))


def _split(positive, exclude, valid, i):
    """Indices of the positives and negatives of anchor ``i``."""
    allowed = [j for j in range(positive.shape[1]) if _allowed(i, j, exclude, valid)]
    return [j for j in allowed if positive[i, j]], [j for j in allowed if not positive[i, j]]


# ---------------------------------------------------------------- naive references


def _value(t: Tensor) -> float:
    return t.detach().item()


def _naive_triplet(a, c, positive, margin, mining, squared=False, exclude=None, valid=None):
    def dist(i, j):
        d = (a[i] - c[j]).norm()
        return d * d if squared else d

    total, count, fallbacks = 0.0, 0, 0
    for i in range(a.shape[0]):
        pos, neg = _split(positive, exclude, valid, i)
        if not neg:
            continue
        if mining == "batch_hard":
            if not pos:
                continue
            d_ap = max((dist(i, p) for p in pos), key=_value)
            d_an = min((dist(i, n) for n in neg), key=_value)
            total = total + torch.clamp(d_ap - d_an + margin, min=0)
            count += 1
            continue
        for p in pos:
            d_ap = dist(i, p)
            farther = [dist(i, n) for n in neg if _value(dist(i, n)) > _value(d_ap)]
            if farther:
                d_an = min(farther, key=_value)
            else:
                d_an = max((dist(i, n) for n in neg), key=_value)
                fallbacks += 1
            total = total + torch.clamp(d_ap - d_an + margin, min=0)
            count += 1
    return total / max(count, 1), count, fallbacks


def _naive_margin(a, c, positive, margin, exclude=None, valid=None):
    total, count = 0.0, 0
    for i in range(a.shape[0]):
        for j in range(c.shape[0]):
            if not _allowed(i, j, exclude, valid):
                continue
            d = (a[i] - c[j]).norm()
            y = 0 if positive[i, j] else 1
            total = total + (1 - y) * 0.5 * d**2 + y * 0.5 * torch.clamp(margin - d, min=0) ** 2
            count += 1
    return total / count


def _naive_jsd(a, c, positive, exclude=None, valid=None):
    pos_terms, neg_terms = [], []
    for i in range(a.shape[0]):
        for j in range(c.shape[0]):
            if not _allowed(i, j, exclude, valid):
                continue
            t = (a[i] * c[j]).sum()
            if positive[i, j]:
                pos_terms.append(torch.log1p(torch.exp(-t)))  # -(-softplus(-T))
            else:
                neg_terms.append(torch.log1p(torch.exp(t)))
    return sum(pos_terms) / len(pos_terms) + sum(neg_terms) / len(neg_terms)


def _assert_same_value_and_grads(got: Tensor, want: Tensor, inputs: list[Tensor]) -> None:
    torch.testing.assert_close(got, want)
    got_grads = torch.autograd.grad(got, inputs)
    want_grads = torch.autograd.grad(want, inputs)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------- triplet


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_triplet_matches_naive_loop(mining: str, squared: bool, masked: bool) -> None:
    a, c = _points(A, D, seed=1), _points(M, D, seed=2)
    positive, exclude, valid = _masks()
    if not masked:
        exclude, valid = None, None
    got = triplet_loss(
        a, c, positive, 0.5, mining, squared, exclude_mask=exclude, contrast_valid=valid
    )
    want, count, fallbacks = _naive_triplet(a, c, positive, 0.5, mining, squared, exclude, valid)
    assert count > 0 and got > 0
    if mining == "semi_hard":  # both branches of the negative choice are exercised
        assert 0 < fallbacks < count
    _assert_same_value_and_grads(got, want, [a, c])


@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_triplet_from_labels_is_triplet_with_label_masks(mining: str) -> None:
    z = _points(12, D, seed=3)
    labels = torch.tensor([0, 1, 2] * 4)
    got = triplet_loss_from_labels(z, labels, z, labels, 0.3, mining)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(12, dtype=torch.bool)
    want, _, _ = _naive_triplet(z, z, same, 0.3, mining, exclude=eye)
    _assert_same_value_and_grads(got, want, [z])
    # another labelling is another loss: the masks are what the value depends on
    other = torch.tensor([0, 1, 2, 3] * 3)
    assert not torch.allclose(got, triplet_loss_from_labels(z, other, z, other, 0.3, mining))


def test_triplet_wrong_mask_changes_the_value() -> None:
    a, c = _points(A, D, seed=1), _points(M, D, seed=2)
    positive, exclude, valid = _masks()
    right = triplet_loss(a, c, positive, 0.5, exclude_mask=exclude, contrast_valid=valid)
    wrong = positive.clone()
    wrong[0] = ~wrong[0]
    moved = triplet_loss(a, c, wrong, 0.5, exclude_mask=exclude, contrast_valid=valid)
    assert not torch.allclose(right, moved)
    # invalid contrast rows do not matter, even when they hold NaN
    c_bad = c.detach().clone()
    c_bad[~valid] = float("nan")
    same = triplet_loss(a, c_bad, positive, 0.5, exclude_mask=exclude, contrast_valid=valid)
    torch.testing.assert_close(same, right)


def test_triplet_gradient_is_finite_where_points_coincide() -> None:
    z = _points(8, D, seed=4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    twin = torch.cat([z, z.detach()[:2]])  # rows 8, 9 coincide with anchors 0, 1
    loss = triplet_loss_from_labels(z, labels, twin, torch.cat([labels, labels[:2]]))
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(grad).all()


def test_triplet_without_triplets_is_a_zero_with_a_gradient_path() -> None:
    a, c = _points(3, D, seed=5), _points(4, D, seed=6)
    no_positives = torch.zeros(3, 4, dtype=torch.bool)
    for mining in ("batch_hard", "semi_hard"):
        loss = triplet_loss(a, c, no_positives, mining=mining)
        assert loss == 0 and loss.requires_grad


# ---------------------------------------------------------------- margin contrastive


@pytest.mark.parametrize("masked", [False, True])
def test_margin_contrastive_matches_naive_loop(masked: bool) -> None:
    a, c = _points(A, D, seed=7, scale=0.6), _points(M, D, seed=8, scale=0.6)
    positive, exclude, valid = _masks(1)
    if not masked:
        exclude, valid = None, None
    got = margin_contrastive_loss(a, c, positive, 1.5, exclude_mask=exclude, contrast_valid=valid)
    want = _naive_margin(a, c, positive, 1.5, exclude, valid)
    # both sides of the hinge occur among the dissimilar pairs
    d = torch.cdist(a, c).detach()
    assert (d[~positive] < 1.5).any() and (d[~positive] > 1.5).any()
    _assert_same_value_and_grads(got, want, [a, c])


def test_margin_contrastive_pair_labels_follow_hadsell() -> None:
    """One pair at distance 0.5: similar (Y=0) gives d^2 / 2, dissimilar (Y=1)
    max(0, m - d)^2 / 2."""
    a = torch.tensor([[0.0, 0.0]], dtype=DT)
    c = torch.tensor([[0.3, 0.4]], dtype=DT)
    similar = margin_contrastive_loss(a, c, torch.tensor([[True]]), margin=2.0)
    dissimilar = margin_contrastive_loss(a, c, torch.tensor([[False]]), margin=2.0)
    assert similar.item() == pytest.approx(0.125)
    assert dissimilar.item() == pytest.approx(0.5 * 1.5**2)
    assert margin_contrastive_loss(a, c, torch.tensor([[False]]), margin=0.4) == 0


def test_margin_contrastive_wrong_mask_changes_the_value() -> None:
    a, c = _points(A, D, seed=7), _points(M, D, seed=8)
    positive, exclude, valid = _masks(1)
    right = margin_contrastive_loss(a, c, positive, exclude_mask=exclude, contrast_valid=valid)
    wrong = margin_contrastive_loss(a, c, ~positive, exclude_mask=exclude, contrast_valid=valid)
    assert not torch.allclose(right, wrong)


# ---------------------------------------------------------------- JSD


@pytest.mark.parametrize("masked", [False, True])
def test_jsd_matches_naive_loop(masked: bool) -> None:
    a, c = _points(A, D, seed=9), _points(M, D, seed=10)
    positive, exclude, valid = _masks(2)
    if not masked:
        exclude, valid = None, None
    got = jsd_mi_loss(a, c, positive, exclude_mask=exclude, contrast_valid=valid)
    want = _naive_jsd(a, c, positive, exclude, valid)
    _assert_same_value_and_grads(got, want, [a, c])


def test_jsd_is_the_negative_estimate_and_falls_as_critics_separate() -> None:
    """E_P[-sp(-T)] - E_N[sp(T)] <= 0, and its negative shrinks when positives score high
    and negatives low."""
    x = torch.eye(4, dtype=DT)  # positives score |x|^2, negatives 0
    eye = torch.eye(4, dtype=torch.bool)
    weak, strong = jsd_mi_loss(x, x, eye), jsd_mi_loss(5 * x, 5 * x, eye)
    assert weak > 0 and strong < weak
    wrong = jsd_mi_loss(x, x, eye.roll(1, dims=1))  # positives on the wrong pairs
    assert wrong > weak


# ---------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error() -> None:
    a, c = _points(3, D, seed=12), _points(4, D, seed=13)
    positive = torch.zeros(3, 4, dtype=torch.bool)
    positive[0, 0] = True
    losses = (triplet_loss, margin_contrastive_loss, jsd_mi_loss)
    for loss in losses:
        with pytest.raises(ValueError, match=r"positive_mask must be .* shape \(3, 4\)"):
            loss(a, c, positive[:, :3])
        with pytest.raises(ValueError, match="positive_mask must be a bool tensor"):
            loss(a, c, positive.float())
        with pytest.raises(ValueError, match="contrast must have width 3"):
            loss(a, c[:, :2], positive)
        with pytest.raises(ValueError, match=r"exclude_mask must be a bool tensor"):
            loss(a, c, positive, exclude_mask=torch.zeros(4, 3, dtype=torch.bool))
        with pytest.raises(ValueError, match=r"contrast_valid must be .* shape \(4,\)"):
            loss(a, c, positive, contrast_valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mining must be"):
        triplet_loss(a, c, positive, mining="hardest")
    with pytest.raises(ValueError, match="margin must be >= 0"):
        triplet_loss(a, c, positive, margin=-0.1)
    with pytest.raises(ValueError, match="margin must be > 0"):
        margin_contrastive_loss(a, c, positive, margin=0.0)
    with pytest.raises(ValueError, match="at least one allowed positive"):
        jsd_mi_loss(a, c, torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one allowed negative"):
        jsd_mi_loss(a, c, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one allowed positive"):  # excluded away
        jsd_mi_loss(a, c, positive, contrast_valid=torch.tensor([False, True, True, True]))
    with pytest.raises(ValueError, match=r"anchor_labels must have shape \(3,\)"):
        triplet_loss_from_labels(a, torch.zeros(2), c, torch.zeros(4))
    with pytest.raises(ValueError, match="anchors_in_contrast needs the 3 anchors"):
        triplet_loss_from_labels(a, torch.zeros(3), c[:2], torch.zeros(2))


def test_low_precision_inputs_give_float32_losses() -> None:
    a = _points(A, D, seed=14).detach().bfloat16()
    c = _points(M, D, seed=15).detach().bfloat16()
    positive, exclude, valid = _masks()
    for loss in (triplet_loss, margin_contrastive_loss, jsd_mi_loss):
        value = loss(a, c, positive, exclude_mask=exclude, contrast_valid=valid)
        assert value.dtype == torch.float32 and torch.isfinite(value)


def test_losses_are_exported() -> None:
    from pico import core

    for name in ("triplet_loss", "triplet_loss_from_labels", "margin_contrastive_loss"):
        assert getattr(pico, name) is getattr(core, name)
    assert pico.jsd_mi_loss is jsd_mi_loss and pico.invaspread_loss is core.invaspread_loss
