import itertools

import torch

from pico.pll.disambiguation import phi_schedule, prototype_labels, update_confidence_


def test_phi_schedule_endpoints_and_linear():
    values = [phi_schedule(e, 5, 0.95, 0.8) for e in range(5)]
    assert values[0] == 0.95
    assert abs(values[-1] - 0.8) < 1e-12
    steps = [b - a for a, b in itertools.pairwise(values)]
    assert max(steps) - min(steps) < 1e-12


def test_prototype_labels_restricted_to_candidates_and_ready_prototypes():
    gen = torch.Generator().manual_seed(0)
    protos = torch.nn.functional.normalize(torch.randn(5, 4, generator=gen), dim=1)
    protos[4] = 0  # never set
    emb = torch.nn.functional.normalize(torch.randn(30, 4, generator=gen), dim=1)
    cands = torch.rand(30, 5, generator=gen) < 0.5
    cands[0] = False
    cands[0, 4] = True  # only an unset prototype
    got = prototype_labels(emb, protos, cands)
    for i in range(30):
        allowed = [c for c in range(4) if cands[i, c]]
        if not allowed:
            assert got[i] == -1
        else:
            scores = {c: float(emb[i] @ protos[c]) for c in allowed}
            assert got[i] == max(scores, key=scores.get)


def test_confidence_update_against_loop():
    gen = torch.Generator().manual_seed(1)
    conf = torch.rand(10, 4, generator=gen)
    ref = conf.clone()
    index = torch.tensor([7, 2, 5])
    labels = torch.tensor([1, -1, 3])
    update_confidence_(conf, index, labels, 0.9)
    for i, c in zip(index.tolist(), labels.tolist(), strict=True):
        if c >= 0:
            onehot = torch.zeros(4)
            onehot[c] = 1
            ref[i] = 0.9 * ref[i] + 0.1 * onehot
    torch.testing.assert_close(conf, ref)
