"""ContrastiveDisambiguation: PiCO's loss in a plain loop, against naive per-row loops."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import candidate_task, tiny_backbone
from torch import Tensor, nn

from pico.pll import CandidateError, ContrastiveDisambiguation, PiCO

N, C, D, B = 24, 4, 6, 6
TEMPERATURE, WEIGHT, GAMMA = 0.5, 0.5, 0.9


class Encoder(nn.Module):
    """A backbone of one's own: linear features, a classifier and a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
        self.classifier = nn.Linear(8, C)
        self.projector = nn.Linear(8, D)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.classifier(h), F.normalize(self.projector(h), dim=1)


def naive_supcon(q: Tensor, contrast: Tensor, positive) -> float:
    """Mean over anchors of -mean_p log softmax, the anchor's own entry left out."""
    total = 0.0
    for i in range(len(q)):
        others = [j for j in range(len(contrast)) if j != i]
        logz = math.log(sum(math.exp(float(q[i] @ contrast[j]) / TEMPERATURE) for j in others))
        pos = [j for j in others if positive(i, j)]
        total += -sum(float(q[i] @ contrast[j]) / TEMPERATURE - logz for j in pos) / len(pos)
    return total / len(q)


def naive_prototypes(prototypes: Tensor, q: Tensor, labels: Tensor) -> Tensor:
    """The official loop: ``M_c <- γ M_c + (1-γ) z`` per sample, then each moved class
    normalised, in float64."""
    out = prototypes.double().clone()
    for z, c in zip(q.double(), labels.tolist(), strict=True):
        out[c] = GAMMA * out[c] + (1 - GAMMA) * z
    for c in set(labels.tolist()):
        out[c] = out[c] / out[c].norm()
    return out


def plain_loop(criterion: ContrastiveDisambiguation, steps: int, check=None) -> Encoder:
    """Train an encoder and a momentum copy with the loss for ``steps`` steps (warm-up for
    the first two); ``check(step, index, logits, q, k, before, out)`` inspects each step."""
    torch.manual_seed(0)
    encoder = Encoder()
    key_encoder = copy.deepcopy(encoder).requires_grad_(False)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    criterion.set_epoch(0, 2)
    for step in range(steps):
        index = torch.randperm(N, generator=gen)[:B]
        x = torch.randn(B, 1, 4, 4, generator=gen)
        logits, q = encoder(x)
        with torch.no_grad():
            _, k = key_encoder(x + 0.1 * torch.randn(x.shape, generator=gen))
        before = {name: value.clone() for name, value in criterion.state_dict().items()}
        out = criterion(index, logits, q, k, warmup=step < 2)
        if check is not None:
            check(step, index, logits.detach(), q.detach(), k, before, out)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        with torch.no_grad():
            for p, pk in zip(encoder.parameters(), key_encoder.parameters(), strict=True):
                pk.mul_(0.9).add_(0.1 * p)
    return encoder


def make_loss(**kw) -> ContrastiveDisambiguation:
    candidates = candidate_task(N, C).train_candidates
    defaults = dict(dim=D, queue_size=10, temperature=TEMPERATURE, proto_momentum=GAMMA)
    return ContrastiveDisambiguation(candidates, **{**defaults, **kw})


def test_plain_loop_matches_naive_per_row_computation() -> None:
    criterion = make_loss()
    checked, moved = [], []

    def check(step, index, logits, q, k, before, out):
        cands = before["candidates"][index]
        probs = logits.softmax(dim=1)
        pseudo = torch.tensor(
            [max((c for c in range(C) if cands[i, c]), key=lambda c: probs[i, c]) for i in range(B)]
        )
        filled = int(before["queue.filled"])
        queue = before["queue.features"][:filled]
        contrast = torch.cat([q, k, queue])
        labels = torch.cat([pseudo, pseudo, before["queue.label"][:filled]])
        conf, protos = before["confidence"].clone(), before["prototypes"]
        if step < 2:  # warm-up: InfoNCE of the own key against the queue; no state moves
            want = 0.0
            for i in range(B):
                entries = [k[i], *queue]
                logz = math.log(sum(math.exp(float(q[i] @ e) / TEMPERATURE) for e in entries))
                want += (logz - float(q[i] @ k[i]) / TEMPERATURE) / B
            assert abs(float(out["cont"]) - want) < 1e-5
            assert torch.equal(criterion.prototypes, protos)
        else:
            phi = float(before["phi"])
            for i, row in enumerate(index.tolist()):
                ready = [c for c in range(C) if cands[i, c] and protos[c].norm() > 0]
                if ready:
                    label = max(ready, key=lambda c: float(q[i] @ protos[c]))
                    conf[row] = phi * conf[row] + (1 - phi) * F.one_hot(torch.tensor(label), C)
            torch.testing.assert_close(criterion.confidence, conf)
            moved.append(not torch.equal(conf, before["confidence"]))
            want_protos = naive_prototypes(protos, q, pseudo)
            torch.testing.assert_close(criterion.prototypes.double(), want_protos)
            want = naive_supcon(q, contrast, lambda i, j: labels[j] == labels[i])
            assert abs(float(out["cont"]) - want) < 1e-5
        log_p = F.log_softmax(logits, dim=1)
        cls = -sum(float(conf[row] @ log_p[i]) for i, row in enumerate(index.tolist())) / B
        assert abs(float(out["cls"]) - cls) < 1e-5
        torch.testing.assert_close(out["loss"].detach(), out["cls"] + WEIGHT * out["cont"])
        slots = [(int(before["queue.ptr"]) + i) % 10 for i in range(B)]
        assert torch.equal(criterion.queue.features[slots], k)
        assert torch.equal(criterion.queue.column("label")[slots], pseudo)
        checked.append(step)

    plain_loop(criterion, 6, check)
    assert checked == list(range(6))
    assert any(moved), "no confidence row moved"
    assert criterion.prototypes.norm(dim=1).gt(0).any(), "no prototype formed"


def test_gradients_reach_the_encoder_and_state_round_trips() -> None:
    criterion = make_loss()
    encoder = plain_loop(criterion, 4)
    logits, q = encoder(torch.randn(B, 1, 4, 4))
    k = F.normalize(torch.randn(B, D), dim=1)
    criterion(torch.arange(B), logits, q, k, warmup=False)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    state = criterion.state_dict()
    assert list(state) == ["candidates", "confidence", "prototypes", "phi", "queue.features",
                           "queue.ptr", "queue.filled", "queue.label"]  # fmt: skip
    fresh = make_loss()
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(fresh.label_estimate(), criterion.confidence.argmax(dim=1))


def test_phi_schedule_and_argument_checks() -> None:
    criterion = make_loss(phi_start=0.9, phi_end=0.6)
    criterion.set_epoch(0, 4)
    assert float(criterion.phi) == pytest.approx(0.9)
    criterion.set_epoch(3, 4)
    assert float(criterion.phi) == pytest.approx(0.6)
    candidates = candidate_task(N, C).train_candidates
    with pytest.raises(ValueError, match="'label' column"):
        ContrastiveDisambiguation(candidates, dim=D, queue_columns={"reliable": torch.bool})
    candidates[5] = False
    with pytest.raises(CandidateError, match="ContrastiveDisambiguation"):
        ContrastiveDisambiguation(candidates, dim=D)


def test_pico_holds_the_state_under_its_old_checkpoint_keys() -> None:
    torch.manual_seed(0)
    method = PiCO(tiny_backbone(8), candidate_task(N, C), proj_dim=D, queue_size=10)
    keys = list(method.state_dict())
    groups = list(dict.fromkeys(key.split(".")[0] for key in keys))
    assert groups == ["candidates", "confidence", "prototypes", "phi", "backbone", "classifier",
                      "head", "key_backbone", "key_head", "queue"]  # fmt: skip
    assert keys[-4:] == ["queue.features", "queue.ptr", "queue.filled", "queue.label"]
    loss = method.disambiguation
    assert loss.state is method and not list(loss.state_dict())
    assert all(child is not loss for child in method.modules())
    copied = copy.deepcopy(method)
    assert copied.disambiguation.state is copied
