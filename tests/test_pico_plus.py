import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import candidate_task, tiny_backbone

import pico.pll.pico_plus as pico_plus
from pico.cli import run_training
from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.eval.metrics import covering_share
from pico.pll.candidates_buffer import soft_cross_entropy
from pico.pll.pico import PiCO
from pico.pll.pico_plus import (
    PiCOPlus,
    guess_targets,
    knn_positives,
    masked_mean,
    mixup,
    prototype_distance,
    sample_mixup,
    select_reliable,
)
from pico.pll.prototypes import update_prototypes

N, C = 24, 4
WARMUP = 2


def make_task():
    task = candidate_task(N, C)
    cands, targets = task.train_candidates, task.train_targets
    cands[:4, targets[:4]] = False  # noisy rows: true label missing
    cands[:4, (targets[:4] + 1) % C] = True
    return task


def make_model(cls=PiCOPlus, **kw):
    torch.manual_seed(0)
    defaults = dict(proj_dim=6, queue_size=12, warmup_epochs=0, warmup_min_steps=WARMUP)
    if cls is PiCOPlus:
        defaults.update(knn_neighbors=3, reliable_share=0.5)
    return cls(tiny_backbone(8), make_task(), **{**defaults, **kw})


def batch(index, seed=0):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(len(index), 1, 4, 4, generator=gen) for _ in range(2)]
    return Batch(torch.as_tensor(index), views, torch.full((len(index),), -1))


def info(step):
    return StepInfo(epoch=0, step=step, epochs=10, steps_per_epoch=3)


def naive_reliable(distance, share, groups=None):
    n = len(distance)
    groups = [0] * n if groups is None else [int(g) for g in groups]
    mask = torch.zeros(n, dtype=torch.bool)
    for g in set(groups):
        rows = sorted(
            (i for i in range(n) if groups[i] == g), key=lambda i: (float(distance[i]), i)
        )
        mask[rows[: math.floor(share * len(rows) + 0.5)]] = True
    return mask


def warmed_model(steps=6, **kw):
    """A model past warm-up, with prototypes set and a full queue holding unreliable rows."""
    model = make_model(**kw)
    for step in range(steps):
        model.training_step(batch([(3 * step + j) % N for j in range(6)], step), info(step))
    return model


def forward_reference(model, b):
    with torch.no_grad():
        feats = model.backbone(b.views[0])
        logits = model.classifier(feats)
        q = F.normalize(model.head(feats), dim=1)
        k = F.normalize(model.key_head(model.key_backbone(b.views[1])), dim=1)
    return logits, q, k


def step_reference(model, b):
    """Naive selection, pseudo-labels and guesses for a post-warm-up step (before it runs)."""
    logits, q, k = forward_reference(model, b)
    cands = model.candidates[b.index]
    probs = logits.softmax(1)
    within = torch.tensor([max((j for j in range(C) if cands[i, j]), key=lambda j: probs[i, j])
                           for i in range(len(q))])  # fmt: skip
    protos = model.prototypes.clone()
    distance = [
        1 - float(q[i] @ protos[within[i]]) if protos[within[i]].abs().sum() > 0 else -1.0
        for i in range(len(q))
    ]
    groups = within if model.reliable_per_class else None
    reliable = naive_reliable(distance, model.reliable_share, groups)
    pseudo = torch.where(reliable, within, probs.argmax(1))
    guess = torch.zeros(len(q), C)
    ready = [c for c in range(C) if protos[c].abs().sum() > 0]
    for i in range(len(q)):
        weights = [math.exp(float(q[i] @ protos[c]) / model.guess_temperature) * (c in ready)
                   for c in range(C)]  # fmt: skip
        guess[i] = torch.tensor(weights) / sum(weights)
    return logits, q, k, within, reliable, pseudo, guess, protos


def test_select_reliable_marks_exact_share_of_closest_rows():
    gen = torch.Generator().manual_seed(1)
    for n, share in [(64, 0.6), (10, 0.65), (7, 0.3), (100, 0.57), (5, 1.0)]:
        distance = torch.rand(n, generator=gen)
        distance[: n // 3] = distance[n // 3]  # ties
        got = select_reliable(distance, share)
        assert got.sum() == math.floor(share * n + 0.5)
        assert torch.equal(got, naive_reliable(distance, share))
        if 0 < got.sum() < n:
            assert distance[got].max() <= distance[~got].min()


def test_select_reliable_per_class_takes_the_share_of_every_class():
    gen = torch.Generator().manual_seed(6)
    distance = torch.rand(60, generator=gen)
    distance[:10] = distance[10]  # ties
    groups = torch.randint(0, 5, (60,), generator=gen)
    groups[groups == 4] = 3  # one empty class
    got = select_reliable(distance, 0.6, groups, num_groups=5)
    assert torch.equal(got, naive_reliable(distance, 0.6, groups))
    for g in range(4):
        rows = groups == g
        assert got[rows].sum() == math.floor(0.6 * rows.sum() + 0.5)
        if 0 < got[rows].sum() < rows.sum():
            assert distance[rows & got].max() <= distance[rows & ~got].min()


def test_prototype_distance_matches_cosine_distance():
    gen = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(9, 5, generator=gen), dim=1)
    protos = F.normalize(torch.randn(4, 5, generator=gen), dim=1)
    protos[3] = 0
    labels = torch.randint(0, 4, (9,), generator=gen)
    expected = [1 - float(F.cosine_similarity(q[i], protos[labels[i]], dim=0))
                if labels[i] != 3 else -1.0 for i in range(9)]  # fmt: skip
    torch.testing.assert_close(prototype_distance(q, protos, labels), torch.tensor(expected))


def test_knn_positives_match_naive_loop():
    gen = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(7, 5, generator=gen), dim=1)
    keys = F.normalize(torch.randn(20, 5, generator=gen), dim=1)
    valid = torch.rand(20, generator=gen) < 0.7
    for k in (1, 4, 30):
        got = knn_positives(q, keys, valid, k)
        for i in range(7):
            ranked = sorted(
                (j for j in range(20) if valid[j]), key=lambda j: -float(q[i] @ keys[j])
            )
            expected = torch.zeros(20, dtype=torch.bool)
            expected[ranked[:k]] = True
            assert torch.equal(got[i], expected)


def test_guess_targets_are_sharpened_distributions_over_all_classes():
    gen = torch.Generator().manual_seed(4)
    q = F.normalize(torch.randn(6, 5, generator=gen), dim=1)
    protos = F.normalize(torch.randn(4, 5, generator=gen), dim=1)
    guess = guess_targets(q, protos, 0.1)
    torch.testing.assert_close(guess.sum(1), torch.ones(6))
    plain = (q @ protos.T).softmax(1)
    sharpened = plain**10 / (plain**10).sum(1, keepdim=True)
    torch.testing.assert_close(guess, sharpened)
    assert torch.all(guess.max(1).values > plain.max(1).values)
    protos[2] = 0  # never set: gets no mass while others are set
    guess = guess_targets(q, protos, 0.1)
    assert torch.all(guess[:, 2] == 0)
    torch.testing.assert_close(guess.sum(1), torch.ones(6))
    uniform = guess_targets(q, torch.zeros(4, 5), 0.1)
    torch.testing.assert_close(uniform, torch.full((6, 4), 0.25))


def test_mixup_and_soft_cross_entropy_match_naive_reference():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 1, 3, 3, generator=gen)
    targets = torch.rand(5, 4, generator=gen).softmax(1)
    lam, perm = torch.tensor(0.7), torch.tensor([2, 0, 4, 1, 3])
    mixed_x, mixed_t = mixup(x, targets, lam, perm)
    for i in range(5):
        torch.testing.assert_close(mixed_x[i], 0.7 * x[i] + 0.3 * x[perm[i]])
        torch.testing.assert_close(mixed_t[i], 0.7 * targets[i] + 0.3 * targets[perm[i]])
    logits = torch.randn(5, 4, generator=gen)
    for i in range(5):
        logz = math.log(sum(math.exp(float(v)) for v in logits[i]))
        ref = -sum(float(mixed_t[i, j]) * (float(logits[i, j]) - logz) for j in range(4))
        assert abs(float(soft_cross_entropy(logits, mixed_t)[i]) - ref) < 1e-5
    mask = torch.tensor([True, False, True, False, False])
    values = torch.arange(5.0)
    assert float(masked_mean(values, mask)) == 1.0
    assert float(masked_mean(values, torch.zeros(5, dtype=torch.bool))) == 0.0


def test_sample_mixup_folds_lambda_and_permutes():
    torch.manual_seed(0)
    draws = [sample_mixup(8, 4.0, torch.device("cpu")) for _ in range(400)]
    lams = torch.stack([lam for lam, _ in draws])
    assert torch.all((lams >= 0.5) & (lams <= 1))
    # folded Beta(4, 4): mean 1/2 + E|B - 1/2| = 1/2 + 35/256, sd of the mean of 400 ~0.005
    assert abs(float(lams.mean()) - (0.5 + 35 / 256)) < 0.015
    for _, perm in draws[:20]:
        assert sorted(perm.tolist()) == list(range(8))


def test_warmup_step_equals_pico():
    plus, pico = make_model(), make_model(PiCO)
    for step in range(WARMUP):
        b = batch([0, 1, 2, 3, 4, 5], step)
        a, r = plus.training_step(b, info(step)), pico.training_step(b, info(step))
        torch.testing.assert_close(a["loss"], r["loss"])
        torch.testing.assert_close(a["cls"], r["cls"])
        assert float(a["mix"]) == 0
    assert bool(plus.queue.column("reliable")[:12].all())
    assert torch.count_nonzero(plus.prototypes) == 0


@pytest.mark.parametrize("per_class", [False, True])
def test_unreliable_rows_do_not_move_prototypes_and_get_all_class_labels(per_class):
    model = warmed_model(reliable_per_class=per_class)
    b = batch([6, 7, 8, 9, 10, 11, 12, 13], 99)
    _, q, _, within, reliable, pseudo, _, protos = step_reference(model, b)
    assert 0 < reliable.sum() < len(reliable)
    conf_before = model.confidence.clone()
    ptr = int(model.queue.ptr)
    model.training_step(b, info(10))
    expected = update_prototypes(
        protos, q[reliable], within[reliable], model.disambiguation.proto_momentum
    )
    torch.testing.assert_close(model.prototypes, expected)
    slots = [(ptr + i) % model.queue.size for i in range(len(q))]
    assert torch.equal(model.queue.column("reliable")[slots], reliable)
    assert torch.equal(model.queue.column("label")[slots], pseudo)
    # confidences of all rows move, within their candidates only
    rows = b.index
    assert not torch.allclose(model.confidence[rows], conf_before[rows])
    assert torch.all(model.confidence[rows][~model.candidates[rows]] == 0)


@pytest.mark.parametrize("per_class", [False, True])
def test_step_losses_match_naive_reference(monkeypatch, per_class):
    model = warmed_model(temperature=0.5, reliable_per_class=per_class)
    b = batch([6, 7, 8, 9, 10, 11, 12, 13], 99)
    logits, q, k, _, reliable, pseudo, guess, _ = step_reference(model, b)
    queue = model.queue.features.clone()
    q_labels = model.queue.column("label").clone()
    q_rel = model.queue.column("reliable").clone()
    q_valid = model.queue.valid_mask().clone()
    lam, perm = torch.tensor(0.8), torch.tensor([3, 0, 1, 2, 7, 4, 5, 6])
    monkeypatch.setattr(pico_plus, "sample_mixup", lambda n, alpha, device: (lam, perm))
    out = model.training_step(b, info(10))

    n, temp = len(q), 0.5
    contrast = torch.cat([q, k, queue])
    labels = torch.cat([pseudo, pseudo, q_labels]).tolist()
    entry_rel = torch.cat([reliable, reliable, q_rel]).tolist()
    valid = [True] * (2 * n) + q_valid.tolist()

    def anchor_loss(i, positives):
        allowed = [j for j in range(len(contrast)) if j != i and valid[j]]
        logz = math.log(sum(math.exp(float(q[i] @ contrast[j]) / temp) for j in allowed))
        return -sum(float(q[i] @ contrast[j]) / temp - logz for j in positives) / len(positives)

    weighted, relaxed = 0.0, 0.0
    for i in range(n):
        if reliable[i]:
            pos = {j for j in range(len(contrast))
                   if j != i and valid[j] and entry_rel[j] and labels[j] == labels[i]}  # fmt: skip
            weight = model.disambiguation.contrastive_weight
        else:
            sims = sorted((j for j in range(len(queue)) if q_valid[j]),
                          key=lambda j: -float(q[i] @ queue[j]))  # fmt: skip
            pos = {2 * n + j for j in sims[: model.knn_neighbors]}
            weight = model.unreliable_weight
        pos.add(n + i)
        weighted += weight * anchor_loss(i, sorted(pos))
        relaxed += anchor_loss(
            i, [j for j in range(len(contrast)) if j != i and valid[j] and labels[j] == labels[i]]
        )
    ref_cont = weighted / n + model.unreliable_weight * relaxed / n
    assert abs(float(out["cont"]) - ref_cont) < 1e-4

    conf = model.confidence[b.index]  # already updated by the step
    log_p = F.log_softmax(logits, 1)
    rel_rows = [i for i in range(n) if reliable[i]]
    unrel_rows = [i for i in range(n) if not reliable[i]]
    ref_cls = sum(-float((conf[i] * log_p[i]).sum()) for i in rel_rows) / len(rel_rows)
    ref_guess = sum(-float((guess[i] * log_p[i]).sum()) for i in unrel_rows) / len(unrel_rows)
    assert abs(float(out["cls"]) - ref_cls) < 1e-5

    targets = [conf[i] if reliable[i] else guess[i] for i in range(n)]
    ref_mix = 0.0
    for i in range(n):
        x_mix = 0.8 * b.views[0][i] + 0.2 * b.views[0][perm[i]]
        t_mix = 0.8 * targets[i] + 0.2 * targets[perm[i]]
        with torch.no_grad():
            mix_logits = model.classifier(model.backbone(x_mix[None]))[0]
        ref_mix += -float((t_mix * F.log_softmax(mix_logits, 0)).sum()) / n
    assert abs(float(out["mix"]) - ref_mix) < 1e-5
    ref_total = ref_mix + 2.0 * ref_cls + 0.1 * ref_guess + ref_cont
    assert abs(float(out["loss"].detach()) - ref_total) < 1e-4


def test_middle_phase_contrastive_matches_naive_reference():
    # 30 steps, 2 of warm-up: kNN from step 2 + round(0.5 * 28) = 16, so step 10 is between
    model = warmed_model(temperature=0.5, knn_start=0.5)
    assert not model.in_warmup(info(10)) and not model.in_knn_phase(info(10))
    b = batch([6, 7, 8, 9, 10, 11, 12, 13], 99)
    _, q, k, _, reliable, pseudo, _, _ = step_reference(model, b)
    assert 0 < reliable.sum() < len(reliable)
    queue = model.queue.features.clone()
    q_labels = model.queue.column("label").clone()
    q_rel = model.queue.column("reliable").clone()
    q_valid = model.queue.valid_mask().clone()
    out = model.training_step(b, info(10))

    n, temp = len(q), 0.5
    anchors, contrast = q.double(), torch.cat([q, k, queue]).double()
    labels = torch.cat([pseudo, pseudo, q_labels]).tolist()
    entry_rel = torch.cat([reliable, reliable, q_rel]).tolist()
    valid = [True] * (2 * n) + q_valid.tolist()

    def anchor_loss(i, positives):
        logit = {j: float(anchors[i] @ contrast[j]) / temp
                 for j in range(len(contrast)) if j != i and valid[j]}  # fmt: skip
        logz = math.log(sum(math.exp(v) for v in logit.values()))
        return -sum(logit[j] - logz for j in positives) / len(positives)

    weighted, relaxed, label_positives = 0.0, 0.0, 0
    for i in range(n):
        pos = {n + i}  # own key, for every anchor
        if reliable[i]:
            pos |= {j for j in range(len(contrast))
                    if j != i and valid[j] and entry_rel[j] and labels[j] == labels[i]}  # fmt: skip
        label_positives += len(pos) - 1
        weighted += anchor_loss(i, sorted(pos))  # weight 1 for every anchor
        relaxed += anchor_loss(
            i, [j for j in range(len(contrast)) if j != i and valid[j] and labels[j] == labels[i]]
        )
    assert label_positives > 0
    ref_cont = weighted / n + model.unreliable_weight * relaxed / n
    assert abs(float(out["cont"]) - ref_cont) < 1e-5 * max(1.0, abs(ref_cont))


def test_knn_phase_starts_at_the_configured_step(monkeypatch):
    model = warmed_model(knn_start=0.5)
    warmup = model.warmup_steps(info(0))
    start = warmup + round(0.5 * (30 - warmup))
    assert model.knn_start_step(info(0)) == start
    assert [model.in_knn_phase(info(s)) for s in (start - 1, start, 29)] == [False, True, True]
    calls = []
    real = pico_plus.knn_positives
    monkeypatch.setattr(pico_plus, "knn_positives", lambda *a: calls.append(a) or real(*a))
    b = batch(list(range(8)), 42)
    outs = {}
    for step in (start - 1, start):
        probe = copy.deepcopy(model)
        torch.manual_seed(7)
        outs[step] = probe.training_step(b, info(step))
    assert len(calls) == 1  # the kNN step only
    # the same state and mixup draw: only the contrastive term changes with the phase
    torch.testing.assert_close(outs[start - 1]["cls"], outs[start]["cls"])
    torch.testing.assert_close(outs[start - 1]["mix"], outs[start]["mix"])
    assert abs(float(outs[start - 1]["cont"]) - float(outs[start]["cont"])) > 1e-3


def test_knn_start_0_begins_with_the_end_of_warmup_and_1_never():
    first, never = make_model(knn_start=0.0), make_model(knn_start=1.0)
    warmup = first.warmup_steps(info(0))
    assert first.knn_start_step(info(0)) == warmup
    assert not first.in_knn_phase(info(warmup - 1)) and first.in_knn_phase(info(warmup))
    assert never.knn_start_step(info(0)) == 30  # the run's last step is 29


@pytest.mark.parametrize("steps_per_epoch", [175, 195, 199])
def test_default_knn_start_is_epoch_100_of_the_official_cifar10_run(monkeypatch, steps_per_epoch):
    model = make_model()
    # the official schedule: 800 epochs, 5 of warm-up (stubbed: PiCO's own rule may differ)
    monkeypatch.setattr(model, "warmup_steps", lambda info: 5 * info.steps_per_epoch)
    run = StepInfo(epoch=0, step=0, epochs=800, steps_per_epoch=steps_per_epoch)
    assert model.knn_start_step(run) == 100 * steps_per_epoch


def test_gradients_reach_classifier_head_and_backbone():
    model = warmed_model()
    out = model.training_step(batch(list(range(8)), 50), info(10))
    out["loss"].backward()
    for module in (model.backbone, model.classifier, model.head):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.key_backbone.parameters())


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    model = warmed_model()
    fixed = batch(list(range(12)), 77)

    def loss_now():
        probe = copy.deepcopy(model)
        torch.manual_seed(123)
        return float(probe.training_step(fixed, info(20))["loss"].detach())

    before = loss_now()
    opt = torch.optim.SGD(model.optim_parameters(), lr=0.05, momentum=0.9)
    for step in range(40):
        torch.manual_seed(step)
        loss = model.training_step(fixed, info(20 + step))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.after_optimizer_step(info(20 + step))
    assert loss_now() < 0.8 * before


def test_state_dict_carries_the_reliable_queue_column():
    model = warmed_model()
    state = model.state_dict()
    assert "queue.reliable" in state
    assert not bool(state["queue.reliable"].all())
    fresh = make_model()
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(reliable_share=0.0), "reliable_share"),
        (dict(reliable_share=1.5), "reliable_share"),
        (dict(reliable_share="half"), "reliable_share"),
        (dict(knn_neighbors=0), "knn_neighbors"),
        (dict(knn_start=-0.1), "knn_start"),
        (dict(knn_start=100), "knn_start"),
        (dict(guess_temperature=0.0), "guess_temperature"),
        (dict(mixup_alpha=-1.0), "mixup_alpha"),
    ],
)
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        make_model(**kw)


def test_missing_candidates_name_pico_plus():
    task = TaskInfo(C, N, (1, 4, 4), "image", torch.arange(N) % C, None)
    with pytest.raises(ValueError, match="method=pico_plus"):
        PiCOPlus(tiny_backbone(8), task)


def test_one_epoch_end_to_end_on_noisy_digits(make_config, tmp_path):
    cfg = make_config(
        "method=pico_plus",
        "trainer.epochs=1",
        "trainer.embedding_figure=false",
        "method.queue_size=128",
        "method.warmup_epochs=0",
        "method.warmup_min_steps=8",
        "data.candidates.name=noisy",
        "+data.candidates.eta=0.2",
    )
    run_training(cfg)
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    assert final["train/mix"] > 0
    for key in ("test/top1", "val/approx_acc", "train/disamb_acc"):
        assert 0.0 <= final[key] <= 1.0
    assert math.isfinite(final["train/loss"])


def test_covering_share_counts_predictions_inside_the_candidate_set():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 6, generator=gen)
    cands = torch.rand(50, 6, generator=gen) < 0.4
    cands[torch.arange(50), torch.randint(0, 6, (50,), generator=gen)] = True
    naive = sum(bool(cands[i, int(logits[i].argmax())]) for i in range(50)) / 50
    assert float(covering_share(logits.argmax(1), cands)) == pytest.approx(naive)


def test_auto_share_follows_the_covering_share_and_sets_the_reliable_count():
    """With reliable_share="auto" every step (warm-up included) moves the running clean-share
    estimate towards the batch's covered share, and after warm-up that estimate is the
    share of each class's rows marked reliable."""
    model = make_model(reliable_share="auto")
    expected = 1.0
    for step in range(6):
        b = batch([(3 * step + j) % N for j in range(6)], step)
        logits, q, _ = forward_reference(model, b)
        cands = model.candidates[b.index]
        expected += 0.01 * (float(covering_share(logits.argmax(1), cands)) - expected)
        if step >= WARMUP:
            protos = model.prototypes.clone()
            within = (logits.softmax(1) * cands).argmax(1)
            distance = [
                1 - float(q[i] @ protos[within[i]]) if protos[within[i]].abs().sum() > 0 else -1.0
                for i in range(len(q))
            ]
            reliable = naive_reliable(distance, expected, within)
        out = model.training_step(b, info(step))
        assert float(model.clean_share) == pytest.approx(expected, abs=1e-6)
        if step >= WARMUP:
            assert float(out["reliable"]) == pytest.approx(float(reliable.float().mean()))
        else:
            assert float(out["reliable"]) == 1.0


def test_covering_share_of_a_perfect_model_is_the_clean_share():
    """A model that predicts the true label everywhere covers exactly the rows whose
    candidate set holds it."""
    targets = torch.arange(24) % C
    cands = F.one_hot(targets, C).bool() | F.one_hot((targets + 1) % C, C).bool()
    cands[:4] = F.one_hot((targets[:4] + 2) % C, C).bool()  # noisy rows: true label missing
    logits = F.one_hot(targets, C).float() * 5
    assert float(covering_share(logits.argmax(1), cands)) == pytest.approx(20 / 24)
