"""update_prototypes against the official PiCO loop, in float64."""

import pytest
import torch
import torch.nn.functional as F

from pico.pll.prototypes import update_prototypes

#: float64 agreement: the loop and the matrix product differ only in summation order
EXACT = {"rtol": 1e-12, "atol": 1e-12}


def official_loop(prototypes, features, labels, momentum):
    """The official code: one momentum step per sample, then every prototype normalised once."""
    out = prototypes.clone()
    for feat, label in zip(features, labels.tolist(), strict=True):
        out[label] = out[label] * momentum + (1 - momentum) * feat
    return F.normalize(out, p=2, dim=1)


def per_sample_normalised_loop(prototypes, features, labels, momentum):
    """A different rule: normalise the prototype after every sample."""
    out = prototypes.clone()
    for feat, label in zip(features, labels.tolist(), strict=True):
        out[label] = F.normalize(out[label] * momentum + (1 - momentum) * feat, dim=0)
    return out


def reversed_order_loop(prototypes, features, labels, momentum):
    """A wrong rule: the official loop over the batch in reverse order."""
    return official_loop(prototypes, features.flip(0), labels.flip(0), momentum)


def random_case(seed, num_classes=6, dim=8, batch=40, zero_rows=()):
    gen = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(num_classes, dim, generator=gen, dtype=torch.float64), dim=1)
    for row in zero_rows:
        protos[row] = 0
    feats = F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, num_classes - 1, (batch,), generator=gen)  # last class absent
    return protos, feats, labels


@pytest.mark.parametrize("momentum", [0.99, 0.9, 0.5])
def test_matches_the_official_loop_to_float64_precision(momentum):
    for seed in range(5):
        # row 0: never seen before, in the batch; row 5: absent (zero in odd seeds)
        protos, feats, labels = random_case(seed, zero_rows=(0, 5) if seed % 2 else (0,))
        got = update_prototypes(protos, feats, labels, momentum)
        torch.testing.assert_close(got, official_loop(protos, feats, labels, momentum), **EXACT)


@pytest.mark.parametrize("momentum", [0.99, 0.9, 0.5])
@pytest.mark.parametrize("wrong", [per_sample_normalised_loop, reversed_order_loop])
def test_the_comparison_tells_other_rules_apart(momentum, wrong):
    protos, feats, labels = random_case(1, zero_rows=(0,))
    official = official_loop(protos, feats, labels, momentum)
    other = wrong(protos, feats, labels, momentum)
    seen = torch.bincount(labels, minlength=len(protos)) > 0
    # the other rule moves every seen class far beyond the tolerance of the test above
    assert torch.all((official - other)[seen].abs().amax(dim=1) > 1e-6)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(other, official, **EXACT)


def test_absent_class_unchanged_and_rows_unit_norm():
    protos, feats, labels = random_case(2, zero_rows=(5,))
    protos[4] *= 1 + 1e-15  # unit norm up to rounding, as the result of an earlier update
    labels[labels == 4] = 0  # classes 4 and 5 absent
    got = update_prototypes(protos, feats, labels, 0.99)
    assert torch.equal(got[4:], protos[4:])
    torch.testing.assert_close(got[:4].norm(dim=1), torch.ones(4, dtype=got.dtype))
    # the official loop normalises absent rows again: zero stays zero, unit rows move by rounding
    torch.testing.assert_close(official_loop(protos, feats, labels, 0.99)[4:], protos[4:], **EXACT)


def test_zero_prototype_takes_the_weighted_sum_of_its_first_batch():
    protos, feats, labels = random_case(3, zero_rows=(0,))
    labels[:3] = 0
    got = update_prototypes(protos, feats, labels, 0.99)
    rows = feats[labels == 0]
    weights = 0.99 ** torch.arange(len(rows) - 1, -1, -1, dtype=rows.dtype)
    expected = F.normalize((weights[:, None] * rows).sum(0), dim=0)
    torch.testing.assert_close(got[0], expected, **EXACT)


def test_float32_matches_the_official_loop():
    protos, feats, labels = random_case(4, zero_rows=(0,))
    protos, feats = protos.float(), feats.float()
    got = update_prototypes(protos, feats, labels, 0.99)
    torch.testing.assert_close(got, official_loop(protos, feats, labels, 0.99))
