"""CC, RC, LWS and CAVL: losses and weight rules against naive loops, methods end to end."""

import json
import math

import numpy as np
import pytest
import scipy.io
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import candidate_task, tiny_backbone

from pico.engine.method import Batch, StepInfo
from pico.pll.candidates_buffer import softmax_within, weighted_cross_entropy
from pico.pll.cavl import CAVL, cav_targets, class_activation_values
from pico.pll.cc import CC, candidate_prediction, cc_loss
from pico.pll.lws import LWS, lws_initial_weights, lws_loss, lws_weights
from pico.pll.rc import RC

METHODS = ["cc", "rc", "lws", "cavl"]
B, C = 7, 5


def random_case(seed=0, scale=3.0):
    """Logits (float64, requiring grad) and candidates; row 0 holds every class."""
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(B, C, generator=gen, dtype=torch.float64)).requires_grad_()
    cands = torch.rand(B, C, generator=gen) < 0.4
    cands[torch.arange(B), torch.randint(0, C, (B,), generator=gen)] = True
    cands[0] = True
    return logits, cands


def naive_softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def grad_of(loss, logits):
    (grad,) = torch.autograd.grad(loss, logits)
    return grad


def check_loss_and_grad(fn, naive_rows, logits):
    """``fn(logits)`` equals the mean of the per-row naive losses, gradients included."""
    got = fn(logits)
    rows = [naive_rows(i, logits[i]) for i in range(B)]
    expected = torch.stack(rows).mean()
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        grad_of(got, logits), grad_of(expected, logits), rtol=1e-4, atol=1e-6
    )


# ---------------------------------------------------------------- CC


def test_cc_loss_matches_naive_loop():
    logits, cands = random_case()

    def row(i, f):
        probs = torch.softmax(f, dim=0)
        return -torch.log(sum(probs[j] for j in range(C) if cands[i, j]))

    check_loss_and_grad(lambda x: cc_loss(x, cands), row, logits)


def test_cc_loss_is_minus_log_candidate_mass_and_stays_finite():
    logits, cands = random_case(seed=1)
    mass = (torch.softmax(logits, 1) * cands).sum(1)
    torch.testing.assert_close(cc_loss(logits, cands).double(), -mass.log().mean())
    assert cc_loss(logits.detach()[:1], cands[:1]).abs() < 1e-6  # every class: mass 1
    huge = torch.tensor([[0.0, 200.0, -200.0]], requires_grad=True)
    loss = cc_loss(huge, torch.tensor([[True, False, True]]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(200.0, rel=1e-6)
    assert torch.isfinite(grad_of(loss, huge)).all()


def test_candidate_prediction_is_best_candidate_logit():
    logits, cands = random_case(seed=2)
    pred = candidate_prediction(logits.detach(), cands)
    for i in range(B):
        best = max((j for j in range(C) if cands[i, j]), key=lambda j: logits[i, j].item())
        assert pred[i].item() == best


# ---------------------------------------------------------------- RC


def test_weighted_cross_entropy_matches_naive_loop():
    logits, cands = random_case(seed=3)
    weights = torch.rand(B, C, dtype=torch.float64) * cands

    def row(i, f):
        log_probs = torch.log_softmax(f, dim=0)
        return -sum(weights[i, j] * log_probs[j] for j in range(C))

    check_loss_and_grad(lambda x: weighted_cross_entropy(x, weights), row, logits)


def test_rc_and_proden_weights_are_renormalised_candidate_probabilities():
    logits, cands = random_case(seed=4)
    got = softmax_within(logits.detach(), cands)
    for i in range(B):
        probs = naive_softmax(logits[i].tolist())
        mass = sum(p for p, c in zip(probs, cands[i], strict=True) if c)
        for j in range(C):
            expected = probs[j] / mass if cands[i, j] else 0.0
            assert got[i, j].item() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(B))
    assert torch.all(got[~cands] == 0)


def test_softmax_within_survives_underflow_and_empty_rows():
    logits = torch.tensor([[500.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[False, True, True], [False, False, False]])
    got = softmax_within(logits, mask)
    e = math.exp(1.0)
    torch.testing.assert_close(got[0], torch.tensor([0.0, 1 / (1 + e), e / (1 + e)]))
    assert torch.equal(got[1], torch.zeros(3))


# ---------------------------------------------------------------- LWS


def naive_lws_row(i, f, cands, weights, beta, loss):
    probs = torch.softmax(f, dim=0)
    total = f.new_zeros(())
    for j in range(C):
        if loss == "sigmoid":
            on, off = 1 / (1 + torch.exp(f[j])), 1 / (1 + torch.exp(-f[j]))
        else:
            on, off = -torch.log(probs[j]), -torch.log(1 - probs[j])
        total = total + (weights[i, j] * on if cands[i, j] else beta * weights[i, j] * off)
    return total


@pytest.mark.parametrize("loss", ["sigmoid", "ce"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_lws_loss_matches_naive_loop(loss, beta):
    logits, cands = random_case(seed=5)
    weights = torch.rand(B, C, dtype=torch.float64)

    def row(i, f):
        return naive_lws_row(i, f, cands, weights, beta, loss)

    check_loss_and_grad(lambda x: lws_loss(x, cands, weights, beta, loss), row, logits)


def test_lws_ce_loss_stays_finite_when_a_non_candidate_takes_all_mass():
    logits = torch.tensor([[0.0, 60.0, -5.0]], requires_grad=True)
    cands = torch.tensor([[True, False, False]])
    loss = lws_loss(logits, cands, torch.ones(1, 3), beta=1.0, loss="ce")
    assert torch.isfinite(loss) and loss.item() > 60.0
    assert torch.isfinite(grad_of(loss, logits)).all()


def check_lws_weight_rows(weights, cands):
    """One over the candidates, one over the non-candidates (zero when there are none)."""
    torch.testing.assert_close((weights * cands).sum(1), torch.ones(B))
    complement = (weights * ~cands).sum(1)
    torch.testing.assert_close(complement, (~cands).any(1).float())
    assert torch.all(weights >= 0)


def test_lws_weights_renormalise_within_candidates_and_complement():
    logits, cands = random_case(seed=6)
    got = lws_weights(logits.detach(), cands)
    check_lws_weight_rows(got, cands)
    assert torch.equal(got[0], softmax_within(logits.detach()[:1], cands[:1])[0])  # no complement
    for i in range(B):
        probs = naive_softmax(logits[i].tolist())
        for j in range(C):
            part = [p for p, c in zip(probs, cands[i], strict=True) if bool(c) == bool(cands[i, j])]
            assert got[i, j].item() == pytest.approx(probs[j] / sum(part), abs=1e-6)


def test_lws_initial_weights_are_uniform_within_each_part():
    _, cands = random_case(seed=7)
    got = lws_initial_weights(cands)
    check_lws_weight_rows(got, cands)
    for i in range(B):
        size = int(cands[i].sum())
        for j in range(C):
            expected = 1 / size if cands[i, j] else 1 / (C - size)
            assert got[i, j].item() == pytest.approx(expected)


# ---------------------------------------------------------------- CAVL


def test_cav_targets_match_naive_loop_and_are_candidates():
    for seed in range(5):
        logits, cands = random_case(seed=seed)
        logits = logits.detach()
        values = class_activation_values(logits)
        got = cav_targets(logits, cands)
        assert torch.equal(got.sum(1), torch.ones(B))
        for i in range(B):
            cav = [f * abs(1 - f) for f in logits[i].tolist()]
            assert values[i].tolist() == pytest.approx(cav, rel=1e-5, abs=1e-5)
            best = max((j for j in range(C) if cands[i, j]), key=lambda j: cav[j])
            assert got[i].argmax().item() == best
            assert cands[i, got[i].argmax()]


def test_cav_target_stays_a_candidate_when_every_candidate_value_is_negative():
    logits = torch.tensor([[-2.0, -1.0, 0.5, -3.0]])  # CAV: -6, -2, 0.25, -12
    cands = torch.tensor([[True, True, False, True]])
    assert torch.equal(cav_targets(logits, cands), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))


# ---------------------------------------------------------------- methods on a tiny batch

N = 24


def make_method(name, **kw):
    torch.manual_seed(0)
    task = candidate_task(N, C)
    cls = {"cc": CC, "rc": RC, "lws": LWS, "cavl": CAVL}[name]
    return cls(tiny_backbone(8, relu=True), task, **kw), task.train_candidates


def tiny_batch(index):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 1, 4, 4, generator=gen)[index]
    return Batch(torch.as_tensor(index), [x], torch.full((len(index),), -1))


INFO = StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1)
STATE = {"rc": "confidence", "lws": "label_weights", "cavl": "targets", "cc": "label_estimate"}


@pytest.mark.parametrize("name", METHODS)
def test_training_step_updates_only_the_batch_rows_by_the_method_rule(name):
    method, cands = make_method(name)
    buffer = getattr(method, STATE[name])
    before = buffer.clone()
    index = [3, 0, 7, 11]
    batch = tiny_batch(index)
    out = method.training_step(batch, INFO)
    with torch.no_grad():
        logits = method.classifier(method.backbone(batch.views[0]))
    rule = {
        "cc": candidate_prediction,
        "rc": softmax_within,
        "lws": lws_weights,
        "cavl": cav_targets,
    }[name]
    torch.testing.assert_close(buffer[index], rule(logits, cands[index]))
    rest = torch.ones(N, dtype=torch.bool)
    rest[index] = False
    assert torch.equal(buffer[rest], before[rest])
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    estimate = method.train_label_estimate()
    assert estimate.shape == (N,) and bool(cands[torch.arange(N), estimate].all())


def test_losses_of_a_step_use_the_weights_from_before_the_step():
    method, cands = make_method("lws")
    batch = tiny_batch([1, 2, 5])
    with torch.no_grad():
        logits = method.classifier(method.backbone(batch.views[0]))
    weights = method.label_weights[[1, 2, 5]].clone()
    out = method.training_step(batch, INFO)
    expected = lws_loss(logits, cands[[1, 2, 5]], weights, beta=1.0)
    torch.testing.assert_close(out["loss"].detach(), expected)


def _ddp_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        states = {}
        for name in METHODS:
            method, _ = make_method(name)
            method.training_step(tiny_batch(list(range(4 * rank, 4 * rank + 4))), INFO)
            states[name] = getattr(method, STATE[name])
        torch.save(states, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_under_ddp_every_rank_holds_the_rows_of_both_ranks(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in METHODS:
        method, _ = make_method(name)
        method.training_step(tiny_batch(list(range(8))), INFO)
        expected = getattr(method, STATE[name])
        assert not torch.equal(expected, make_method(name)[0].get_buffer(STATE[name]))
        for states in ranks:
            torch.testing.assert_close(states[name], expected)


@pytest.mark.parametrize(
    ("name", "kw"), [(name, {}) for name in METHODS] + [("lws", {"loss": "ce", "beta": 1.0})]
)
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(name, kw):
    method, _ = make_method(name, **kw)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.2, momentum=0.9)
    batch = tiny_batch(list(range(N)))
    losses = []
    for _ in range(30):
        loss = method.training_step(batch, INFO)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_cavl_targets_stay_uniform_through_warm_up_then_follow_the_cav_rule():
    method, cands = make_method("cavl", warmup_min_steps=3, warmup_share=0.5)
    index = [3, 0, 7, 11]
    batch = tiny_batch(index)
    before = method.targets.clone()
    for i in index:
        size = int(cands[i].sum())
        assert method.targets[i].tolist() == pytest.approx(
            [1 / size if cands[i, j] else 0.0 for j in range(C)]
        )
    for step in range(3):
        out = method.training_step(batch, StepInfo(0, step, 1, 6))
        assert torch.equal(method.targets, before), step
        with torch.no_grad():
            logits = method.classifier(method.backbone(batch.views[0])).tolist()
        naive = []
        for row, i in enumerate(index):
            probs = naive_softmax(logits[row])
            members = [j for j in range(C) if cands[i, j]]
            naive.append(-sum(math.log(probs[j]) for j in members) / len(members))
        assert out["loss"].item() == pytest.approx(sum(naive) / len(naive), rel=1e-5)
    method.training_step(batch, StepInfo(0, 3, 1, 6))
    for row, i in enumerate(index):
        cav = [f * abs(1 - f) for f in logits[row]]
        best = max((j for j in range(C) if cands[i, j]), key=lambda j: cav[j])
        assert method.targets[i].tolist() == [float(j == best) for j in range(C)]
    rest = [i for i in range(N) if i not in index]
    assert torch.equal(method.targets[rest], before[rest])


@pytest.mark.parametrize("name", ["cc", "rc", "lws", "cavl"])
def test_data_without_candidates_is_refused_with_the_methods_own_name(name):
    task = candidate_task(N, C)
    task.train_candidates = None
    cls = {"cc": CC, "rc": RC, "lws": LWS, "cavl": CAVL}[name]
    with pytest.raises(ValueError, match=rf"method={name} trains on candidate label sets"):
        cls(tiny_backbone(8, relu=True), task)


def test_cavl_rejects_a_negative_warm_up():
    task = candidate_task(N, C)
    with pytest.raises(ValueError, match=r"method\.warmup_min_steps=-1 must be >= 0"):
        CAVL(tiny_backbone(8, relu=True), task, warmup_min_steps=-1)


def test_lws_rejects_bad_settings():
    task = candidate_task(N, C)
    with pytest.raises(ValueError, match=r"method\.beta=-1.*>= 0"):
        LWS(tiny_backbone(8, relu=True), task, beta=-1.0)
    with pytest.raises(ValueError, match=r"method\.loss='hinge'"):
        LWS(tiny_backbone(8, relu=True), task, loss="hinge")
    with pytest.raises(ValueError, match=r"got 'hinge'"):
        lws_loss(
            torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2), 1.0, "hinge"
        )


# ---------------------------------------------------------------- end to end
# pico.cli and pico.experiment are imported inside these tests, so that the processes the
# DDP test spawns (which import this module) load only torch and pico.pll.

SMALL = ["trainer.epochs=1", "trainer.embedding_figure=false"]


def write_tiny_mat(path, n=150, d=6, c=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % c
    data = rng.normal(0, 3, (c, d))[labels] + rng.normal(size=(n, d))
    target = np.zeros((c, n))
    target[labels, np.arange(n)] = 1
    partial = (rng.random((c, n)) < 0.3).astype(float)
    partial[labels, np.arange(n)] = 1
    scipy.io.savemat(path, {"data": data, "target": target, "partial_target": partial})


def check_run(run_dir, result):
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    assert final == result["final"]
    for key in ("test/top1", "val/approx_acc", "val/covering_rate", "train/disamb_acc"):
        assert 0.0 <= final[key] <= 1.0, key
    assert math.isfinite(final["train/loss"])


@pytest.mark.slow
def test_every_method_trains_one_epoch_on_digits(make_config, tmp_path):
    from pico.cli import run_training

    for name in METHODS:
        cfg = make_config(f"method={name}", *SMALL, run_dir=name)
        assert cfg.eval.select_metric == "val/approx_acc"
        check_run(tmp_path / name, run_training(cfg))


@pytest.mark.parametrize("name", METHODS)
def test_method_trains_one_epoch_on_a_mat_file(make_config, tmp_path, name):
    from pico.cli import run_training

    write_tiny_mat(tmp_path / "toy.mat")
    cfg = make_config(
        f"method={name}",
        "data=mat",
        f"data.path={tmp_path / 'toy.mat'}",
        "model.hidden=[32]",
        *SMALL,
        tiny_convnet=False,
    )
    check_run(tmp_path / "run", run_training(cfg))


@pytest.mark.parametrize("name", METHODS)
def test_data_without_candidates_is_refused(make_config, name):
    from pico.experiment import build_experiment

    cfg = make_config(f"method={name}", "data.candidates=null")
    with pytest.raises(ValueError, match=rf"method={name} trains on candidate.*data\.candidates"):
        build_experiment(cfg)
