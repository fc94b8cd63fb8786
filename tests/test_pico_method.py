import math

import pytest
import torch
import torch.nn.functional as F
from conftest import candidate_task, tiny_backbone

from pico.engine.method import Batch, StepInfo
from pico.pll.pico import PiCO

N, C = 24, 4


def make_pico(**kw):
    torch.manual_seed(0)
    task = candidate_task(N, C)
    defaults = dict(proj_dim=6, queue_size=10, warmup_epochs=0, warmup_min_steps=2)
    return PiCO(tiny_backbone(8), task, **{**defaults, **kw}), task.train_candidates


def batch(index, seed=0):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(len(index), 1, 4, 4, generator=gen) for _ in range(2)]
    return Batch(torch.as_tensor(index), views, torch.full((len(index),), -1))


def info(step, epoch=0):
    return StepInfo(epoch=epoch, step=step, epochs=10, steps_per_epoch=3)


def test_warmup_gates_prototypes_and_confidence():
    model, _ = make_pico()
    conf0 = model.confidence.clone()
    for step in range(2):
        model.training_step(batch([0, 1, 2, 3, 4, 5], step), info(step))
    assert torch.equal(model.confidence, conf0)
    assert torch.count_nonzero(model.prototypes) == 0
    assert model.queue.num_filled() == 10
    model.training_step(batch([6, 7, 8, 9], 9), info(2))
    assert torch.count_nonzero(model.prototypes) > 0


def test_confidence_moves_to_prototype_label_within_candidates():
    model, cands = make_pico()
    model.phi.fill_(0.5)
    for step in range(6):
        model.training_step(batch(list(range(8)), step), info(step))
    conf = model.confidence[:8]
    assert torch.all(conf[~cands[:8]] == 0)
    torch.testing.assert_close(conf.sum(1), torch.ones(8))
    assert not torch.allclose(conf, (cands[:8] / cands[:8].sum(1, keepdim=True)).float())


def test_losses_match_naive_computation_after_warmup():
    model, cands = make_pico(queue_size=6, temperature=0.5)
    for step in range(3):
        model.training_step(batch([10, 11, 12], step), info(step))
    queue = model.queue.features.clone()
    queue_labels = model.queue.column("label").clone()
    b = batch([0, 1, 2, 3], 42)
    out = model.training_step(b, info(5))
    with torch.no_grad():
        feats = model.backbone(b.views[0])
        logits = model.classifier(feats)
        q = F.normalize(model.head(feats), dim=1)
        k = F.normalize(model.key_head(model.key_backbone(b.views[1])), dim=1)
    pseudo = (logits.softmax(1) * cands[:4]).argmax(1)
    contrast = torch.cat([q, k, queue])
    labels = torch.cat([pseudo, pseudo, queue_labels])
    total = 0.0
    for i in range(4):
        others = [j for j in range(len(contrast)) if j != i]
        denom = math.log(sum(math.exp(float(q[i] @ contrast[j]) / 0.5) for j in others))
        pos = [j for j in others if labels[j] == labels[i]]
        total += -sum(float(q[i] @ contrast[j]) / 0.5 - denom for j in pos) / len(pos)
    assert abs(out["cont"].item() - total / 4) < 1e-4
    conf = model.confidence[:4]
    ref_cls = -(conf * F.log_softmax(logits, 1)).sum(1).mean()
    assert abs(out["cls"].item() - ref_cls.item()) < 1e-5
    torch.testing.assert_close(out["loss"], out["cls"] + 0.5 * out["cont"])


def test_phi_follows_schedule_from_first_epoch():
    model, _ = make_pico()
    model.on_epoch_start(info(0, epoch=0))
    assert abs(model.phi.item() - 0.95) < 1e-6
    model.on_epoch_start(info(0, epoch=9))
    assert abs(model.phi.item() - 0.8) < 1e-6


def test_state_dict_carries_pll_state():
    model, _ = make_pico()
    for step in range(4):
        model.training_step(batch([0, 1, 2, 3], step), info(step))
    state = model.state_dict()
    for key in ("confidence", "prototypes", "phi", "queue.features", "queue.label", "queue.ptr"):
        assert any(k.startswith(key) for k in state), key
    fresh, _ = make_pico()
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_key_lag_share_caps_the_key_momentum_in_short_runs_only():
    pico, _ = make_pico()  # the default share, 0.5
    long_run = StepInfo(epoch=0, step=0, epochs=800, steps_per_epoch=195)
    short_run = StepInfo(epoch=0, step=0, epochs=20, steps_per_epoch=11)
    assert pico.momentum(long_run) == 0.999
    assert pico.momentum(short_run) == pytest.approx(1 - 1 / (0.5 * 220))
    assert make_pico(key_lag_share=None)[0].momentum(short_run) == 0.999  # the paper's constant
    # the trainer's hook moves the key encoder with that coefficient
    with torch.no_grad():
        for p in pico.backbone.parameters():
            p.fill_(1.0)
        for p in pico.key_backbone.parameters():
            p.zero_()
    pico.after_optimizer_step(short_run)
    moved = next(pico.key_backbone.parameters())
    assert torch.allclose(moved, torch.full_like(moved, 1 / (0.5 * 220)))
    with pytest.raises(ValueError, match="key_lag_share"):
        make_pico(key_lag_share=0)
