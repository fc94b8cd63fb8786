"""Warm-up lengths that fit the run, the warning for long warm-ups, and PiCO's warm-up loss."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import candidate_task, tiny_backbone
from hypothesis import given
from hypothesis import strategies as st

from pico.cli import run_training
from pico.engine.checkpoint import load_checkpoint
from pico.engine.method import Batch, StepInfo
from pico.pll.pico import PiCO
from pico.pll.warmup import Warmup, candidate_ambiguity


@pytest.mark.parametrize(
    ("steps_per_epoch", "epochs", "expected"),
    [
        (20, 100, 600),  # digits: the 600-step floor is 30 % of the run
        (195, 800, 600),  # CIFAR-10 at the paper's length: 600 steps, about 3 epochs
        (195, 30, 600),  # 5,850 steps: the floor fits in 30 %
        (20, 50, 300),  # digits for 50 epochs: 30 % of 1,000 steps
        (3, 200, 180),  # a 1,000-row tabular set at batch 256: 30 % of 600 steps
        (15, 30, 135),  # the same set at batch 64 for 30 epochs
    ],
)
def test_default_warmup_follows_the_run(steps_per_epoch, epochs, expected):
    assert Warmup().steps(steps_per_epoch, steps_per_epoch * epochs) == expected


def test_paper_epochs_win_over_the_floor():
    assert Warmup(epochs=5).steps(195, 195 * 800) == 975
    assert Warmup(epochs=1, min_steps=0).steps(20, 2000) == 20


@given(st.integers(1, 500), st.integers(1, 1000), st.integers(0, 10_000), st.floats(0, 0.49))
def test_the_step_floor_never_takes_half_the_run(steps_per_epoch, epochs, min_steps, share):
    total = steps_per_epoch * epochs
    steps = Warmup(epochs=0, min_steps=min_steps, share=share).steps(steps_per_epoch, total)
    assert steps <= share * total < total / 2
    assert steps == min(min_steps, math.floor(share * total))


def naive_ambiguity(candidates):
    rows = [(sum(row) - 1) / (len(row) - 1) for row in candidates.int().tolist()]
    return sum(rows) / len(rows)


def test_candidate_ambiguity_matches_a_loop_and_is_q_for_uniform_sets():
    gen = torch.Generator().manual_seed(0)
    candidates = torch.rand(500, 10, generator=gen) < 0.3
    candidates[torch.arange(500), torch.randint(0, 10, (500,), generator=gen)] = True
    assert candidate_ambiguity(candidates) == pytest.approx(naive_ambiguity(candidates))
    assert candidate_ambiguity(torch.eye(6, dtype=torch.bool)) == 0.0
    assert candidate_ambiguity(torch.ones(4, 6, dtype=torch.bool)) == 1.0
    # uniform candidates: every wrong class a candidate with probability q
    uniform = torch.rand(20_000, 10, generator=gen) < 0.7
    uniform[:, 0] = True
    assert candidate_ambiguity(uniform) == pytest.approx(0.7, abs=0.01)


@pytest.mark.parametrize(
    ("ambiguity", "expected"),
    [(1.0, 600), (0.3, 600), (0.15, 300), (0.03, 60), (0.0, 20)],
)
def test_the_floor_scales_with_ambiguity_below_full(ambiguity, expected):
    # CIFAR-sized run (the share cap is far away), 20 steps per epoch
    assert Warmup(ambiguity=ambiguity).steps(20, 20_000) == expected


def test_nearly_unambiguous_sets_get_about_the_paper_epoch():
    # italian.mat: 1.6 candidates among 90 classes, 62 steps per epoch, 3,038 steps
    italian = Warmup(ambiguity=0.6 / 89)
    assert italian.steps(62, 3038) == 62
    assert Warmup(ambiguity=0.6 / 89, full_ambiguity=0.005).steps(62, 3038) == 600
    assert Warmup(ambiguity=0.6 / 89, full_ambiguity=0).steps(62, 3038) == 600  # CAVL's


def test_bad_settings_are_refused_with_their_keys():
    with pytest.raises(ValueError, match=r"method\.warmup_share=1\.5 must lie in \[0, 1\]"):
        Warmup(share=1.5)
    with pytest.raises(ValueError, match=r"method\.warmup_min_steps=-3 must be >= 0"):
        Warmup(min_steps=-3)
    with pytest.raises(ValueError, match=r"method\.warmup_full_ambiguity=-1 must be >= 0"):
        Warmup(full_ambiguity=-1)


def test_warning_names_the_keys_when_warmup_takes_half_the_run(caplog):
    with caplog.at_level(logging.WARNING, logger="pico.pll.warmup"):
        assert Warmup(epochs=10).check("pico", 20, 20 * 30) == 200
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="pico.pll.warmup"):
        assert Warmup(epochs=15).check("pico", 20, 20 * 30) == 300
    (record,) = caplog.records
    message = record.getMessage()
    assert "300 of the run's 600 optimizer steps (50%)" in message
    for key in ("method.warmup_epochs=15", "method.warmup_min_steps=600", "method.warmup_share"):
        assert key in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pico.pll.warmup"):
        Warmup(epochs=40).check("pico_plus", 20, 20 * 30)
    assert "never starts" in caplog.records[0].getMessage()


def test_a_tiny_run_leaves_warmup_and_disambiguates(make_config, caplog):
    # digits for 4 epochs of 20 steps: the 600-step floor shrinks to 30 % of the run
    cfg = make_config("method.queue_size=256", "trainer.epochs=4", "trainer.embedding_figure=false")
    with caplog.at_level(logging.WARNING, logger="pico.pll.warmup"):
        run_training(cfg)
    assert not [r for r in caplog.records if "warm-up" in r.getMessage()]
    state = load_checkpoint(f"{cfg.run_dir}/checkpoints/last.pt")["method"]
    assert (state["prototypes"].norm(dim=1) > 0.99).all()  # every class has a prototype
    candidates = state["candidates"].float()
    uniform = candidates / candidates.sum(dim=1, keepdim=True)
    moved = (state["confidence"] - uniform).abs().sum(dim=1) > 1e-6
    assert moved.float().mean() > 0.9


def test_a_run_kept_in_warmup_warns(make_config, caplog):
    cfg = make_config(
        "method.queue_size=256", "method.warmup_epochs=2", "trainer.embedding_figure=false"
    )
    with caplog.at_level(logging.WARNING, logger="pico.pll.warmup"):
        run_training(cfg)
    messages = [r.getMessage() for r in caplog.records if r.name == "pico.pll.warmup"]
    assert len(messages) == 1 and "never starts" in messages[0]
    state = load_checkpoint(f"{cfg.run_dir}/checkpoints/last.pt")["method"]
    assert torch.equal(state["prototypes"], torch.zeros_like(state["prototypes"]))


N, C, B = 12, 4, 5


def naive_moco_info_nce(q, k, queue, temperature):
    """-log(exp(q.k/T) / (exp(q.k/T) + sum over queue rows exp(q.n/T))), averaged."""
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(float(q[i] @ k[i]) / temperature)
        neg = sum(math.exp(float(q[i] @ n) / temperature) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


@pytest.mark.parametrize("filled", [0, 3, 10])
def test_pico_warmup_loss_is_moco_info_nce_against_the_queue(filled):
    torch.manual_seed(0)
    method = PiCO(tiny_backbone(8), candidate_task(N, C), proj_dim=6, queue_size=10).double()
    keys = F.normalize(torch.randn(filled, 6, dtype=torch.float64), dim=1)
    if filled:
        method.queue.enqueue(keys, label=torch.zeros(filled, dtype=torch.long))
    gen = torch.Generator().manual_seed(1)
    views = [torch.randn(B, 1, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    batch = Batch(torch.arange(B), views, torch.full((B,), -1))
    info = StepInfo(epoch=0, step=0, epochs=10, steps_per_epoch=3)
    assert method.in_warmup(info)
    _, q, k = method.encode(*views)
    expected = naive_moco_info_nce(q.detach(), k, keys, method.disambiguation.temperature)
    out = method.training_step(batch, info)
    assert out["cont"].item() == pytest.approx(expected, rel=1e-6)  # keys pass as float32


def test_in_batch_negatives_are_an_option_that_changes_the_loss():
    torch.manual_seed(0)
    task = candidate_task(N, C)
    gen = torch.Generator().manual_seed(1)
    views = [torch.randn(B, 1, 4, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    batch = Batch(torch.arange(B), views, torch.full((B,), -1))
    info = StepInfo(epoch=0, step=0, epochs=10, steps_per_epoch=3)
    losses = {}
    for in_batch in (False, True):
        torch.manual_seed(0)
        method = PiCO(
            tiny_backbone(8), task, proj_dim=6, queue_size=10, warmup_batch_negatives=in_batch
        ).double()
        _, q, k = method.encode(*views)
        losses[in_batch] = method.training_step(batch, info)["cont"].item()
        if in_batch:  # [q; k] with the own query excluded: 2B - 1 entries per anchor
            q, k = q.detach(), k.detach()
            temperature = method.disambiguation.temperature
            naive = 0.0
            for i in range(B):
                others = [*(q[j] for j in range(B) if j != i), *k]
                denom = sum(math.exp(float(q[i] @ c) / temperature) for c in others)
                naive += -math.log(math.exp(float(q[i] @ k[i]) / temperature) / denom)
            assert losses[True] == pytest.approx(naive / B, rel=1e-6)
    assert losses[False] == pytest.approx(0.0, abs=1e-12)  # empty queue: only the positive
    assert losses[True] > 0.1
