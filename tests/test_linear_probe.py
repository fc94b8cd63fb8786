from __future__ import annotations

import pytest
import torch

import pico.eval.linear as linear
from pico.eval.linear import linear_probe


def _blobs(
    per_class: int, classes: int, dim: int, spread: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 3
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    perm = torch.randperm(len(labels), generator=gen)
    return x[perm], labels[perm]


def _split(seed: int, spread: float):
    x, y = _blobs(60, 4, 6, spread, seed)
    return x[:160], y[:160], x[160:], y[160:]


@pytest.mark.parametrize("method", ["sklearn", "torch"])
def test_separable_data_is_classified_perfectly(method: str) -> None:
    result = linear_probe(*_split(0, spread=0.3), method=method)
    assert set(result) == {"linear_top1"}
    assert result["linear_top1"] == 1.0


@pytest.mark.parametrize("seed", [0, 2])
def test_torch_route_agrees_with_sklearn_on_overlapping_data(seed: int) -> None:
    data = _split(seed, spread=4.0)
    sk = linear_probe(*data, method="sklearn", C=0.5)["linear_top1"]
    th = linear_probe(*data, method="torch", C=0.5)["linear_top1"]
    assert 0.4 < sk < 0.9  # the problem is genuinely hard, so agreement means something
    assert abs(sk - th) <= 0.025


@pytest.mark.parametrize("method", ["sklearn", "torch"])
def test_features_are_standardised(method: str) -> None:
    # The only informative feature is shrunk 1000x; under strong L2 (small C) a probe on
    # raw features could not afford the weight it needs, a standardised one can.
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (200,), generator=gen)
    x = torch.randn(200, 5, generator=gen)
    x[:, 0] = (2 * y - 1) + 0.3 * x[:, 0]
    x[:, 0] *= 1e-3
    x[:, 1] += 100.0
    result = linear_probe(x[:150], y[:150], x[150:], y[150:], method=method, C=0.01)
    assert result["linear_top1"] == 1.0


def test_auto_switches_to_torch_for_large_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_torch, real_sklearn = linear._torch_predict, linear._sklearn_predict

    def spy_torch(*args, **kwargs):
        calls.append("torch")
        return real_torch(*args, **kwargs)

    def spy_sklearn(*args, **kwargs):
        calls.append("sklearn")
        return real_sklearn(*args, **kwargs)

    monkeypatch.setattr(linear, "_torch_predict", spy_torch)
    monkeypatch.setattr(linear, "_sklearn_predict", spy_sklearn)
    data = _split(3, spread=0.3)
    linear_probe(*data)
    monkeypatch.setattr(linear, "SKLEARN_MAX_VALUES", 100)
    linear_probe(*data)
    assert calls == ["sklearn", "torch"]


def test_bad_inputs_raise_value_error() -> None:
    x_tr, y_tr, x_te, y_te = _split(4, spread=1.0)
    with pytest.raises(ValueError, match="method"):
        linear_probe(x_tr, y_tr, x_te, y_te, method="svm")
    with pytest.raises(ValueError, match="width"):
        linear_probe(x_tr, y_tr, x_te[:, :3], y_te)
    with pytest.raises(ValueError, match="train_labels"):
        linear_probe(x_tr, y_tr[:5], x_te, y_te)
    with pytest.raises(ValueError, match="unknown labels"):
        linear_probe(x_tr, torch.full_like(y_tr, -1), x_te, y_te)
    with pytest.raises(ValueError, match="C must"):
        linear_probe(x_tr, y_tr, x_te, y_te, C=0)
