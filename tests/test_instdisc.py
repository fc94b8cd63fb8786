from __future__ import annotations

import math

import pytest
import torch
from conftest import build_method, method_config, step_info, tiny_backbone, tiny_batch, tiny_task

from pico.baselines import instdisc
from pico.baselines.instdisc import EXACT_MAX_DATA, InstDisc
from pico.engine.method import Batch

INFO = step_info()


def _method(n: int = 12, seed: int = 0, **kwargs) -> InstDisc:
    torch.manual_seed(seed)
    return InstDisc(tiny_backbone(), tiny_task(n), proj_dim=8, **kwargs)


def _batch(index: list[int], seed: int = 1) -> Batch:
    """One un-noised view of random images for the train rows ``index``."""
    return tiny_batch(index, seed, num_views=1, noise=0.0)


def test_defaults_pick_exact_for_small_data_and_clamp_noise(monkeypatch) -> None:
    assert EXACT_MAX_DATA >= 60_000  # NCE with a once-estimated Z diverges below ~7e5 rows
    assert _method(n=12).exact
    monkeypatch.setattr(instdisc, "EXACT_MAX_DATA", 11)
    assert _method(n=11).exact and not _method(n=12).exact
    small = _method(n=12, exact=False, num_noise=4096)
    assert small.num_noise == 12
    assert InstDisc.views == ("contrastive",)
    bank = small.knn_bank()
    assert bank.shape == (12, 8)
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(12))
    state = small.state_dict()
    assert "memory_bank" in state and "log_z" in state
    assert not state["log_z_known"]


def test_exact_loss_equals_naive_full_softmax() -> None:
    method = _method(n=10, exact=True, temperature=0.1)
    batch = _batch([3, 7, 0, 9])
    loss = method.training_step(batch, INFO)["loss"]
    with torch.no_grad():
        v = method.embed_views(batch.views[0])
    bank = method.memory_bank
    want = 0.0
    for row, i in enumerate(batch.index.tolist()):
        scores = [math.exp(float(v[row] @ bank[j]) / 0.1) for j in range(len(bank))]
        want += -math.log(scores[i] / sum(scores))
    assert loss.item() == pytest.approx(want / 4, rel=1e-5)


def _naive_nce(v, bank, index, noise_idx, z, t, n):
    k = noise_idx.shape[1]
    total = 0.0
    for row, i in enumerate(index.tolist()):
        p = math.exp(float(v[row] @ bank[i]) / t) / z
        total -= math.log(p / (p + k / n))
        for j in noise_idx[row].tolist():
            pn = math.exp(float(v[row] @ bank[j]) / t) / z
            total -= math.log(1 - pn / (pn + k / n))
    return total / len(index)


def test_nce_normaliser_estimated_once_and_loss_matches_naive() -> None:
    n, k, t = 30, 5, 0.5
    method = _method(n=n, exact=False, num_noise=k, temperature=t)
    batch = _batch([1, 4, 28])
    bank0 = method.memory_bank.clone()

    torch.manual_seed(123)
    loss = method.training_step(batch, INFO)["loss"]
    torch.manual_seed(123)
    noise_idx = torch.randint(0, n, (3, k))
    with torch.no_grad():
        v = method.embed_views(batch.views[0])
    sims = [math.exp(float(v[r] @ bank0[j]) / t) for r in range(3) for j in noise_idx[r].tolist()]
    z = n * sum(sims) / len(sims)
    assert method.log_z.item() == pytest.approx(math.log(z), rel=1e-5)
    assert loss.item() == pytest.approx(
        _naive_nce(v, bank0, batch.index, noise_idx, z, t, n), rel=1e-4
    )

    log_z = method.log_z.clone()
    method.after_optimizer_step(INFO)
    for seed in range(3):
        method.training_step(_batch([2, 5], seed=seed + 10), INFO)
        method.after_optimizer_step(INFO)
    assert torch.equal(method.log_z, log_z)


def test_loaded_normaliser_is_kept_not_re_estimated() -> None:
    trained = _method(n=20, exact=False, num_noise=4)
    trained.training_step(_batch([0, 1]), INFO)
    resumed = _method(n=20, seed=5, exact=False, num_noise=4)
    resumed.load_state_dict(trained.state_dict())
    resumed.training_step(_batch([2, 3], seed=7), INFO)
    assert torch.equal(resumed.log_z, trained.log_z)


@pytest.mark.parametrize("exact", [True, False])
def test_bank_update_matches_naive_loop(exact: bool) -> None:
    m = 0.3
    method = _method(n=9, exact=exact, num_noise=4, bank_momentum=m)
    batch = _batch([8, 2, 5])
    before = method.memory_bank.clone()
    with torch.no_grad():
        v = method.embed_views(batch.views[0])
    method.training_step(batch, INFO)
    method.after_optimizer_step(INFO)

    want = before.clone()
    for row, i in enumerate(batch.index.tolist()):
        mixed = [m * before[i, d] + (1 - m) * v[row, d] for d in range(before.shape[1])]
        norm = math.sqrt(sum(float(x) ** 2 for x in mixed))
        for d in range(before.shape[1]):
            want[i, d] = mixed[d] / norm
    torch.testing.assert_close(method.memory_bank, want)
    # a second call without a new step leaves the bank alone
    method.after_optimizer_step(INFO)
    torch.testing.assert_close(method.memory_bank, want)


@pytest.mark.parametrize("exact", [True, False])
def test_loss_decreases_on_fixed_batch(exact: bool) -> None:
    n = 16
    method = _method(n=n, exact=exact, num_noise=8, temperature=0.2)
    batch = _batch(list(range(n)))
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.5)
    losses = []
    for step in range(30):
        torch.manual_seed(step)
        loss = method.training_step(batch, INFO)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(INFO)
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert all(p.grad is not None for p in method.backbone.parameters())


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="temperature"):
        _method(temperature=0.0)
    with pytest.raises(ValueError, match="bank_momentum"):
        _method(bank_momentum=1.5)
    with pytest.raises(ValueError, match="num_noise"):
        _method(num_noise=0)


@pytest.mark.parametrize("exact", [None, False])
def test_method_config_builds_and_runs_on_tiny_data(exact: bool | None) -> None:
    cfg = method_config("instdisc")
    assert cfg.eval.select_metric == "val/knn_top1" and cfg.eval.knn.enabled
    cfg.method.exact = exact
    method = build_method(cfg.method, num_train=12)
    assert isinstance(method, InstDisc)
    assert method.exact == (exact is None) and method.num_noise == 12
    assert torch.isfinite(method.training_step(_batch([0, 5, 11]), INFO)["loss"])
