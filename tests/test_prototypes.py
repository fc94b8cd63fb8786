import torch
import torch.nn.functional as F

from pico.pll.prototypes import update_prototypes


def sequential_reference(prototypes, features, labels, momentum, renormalise=True):
    """The original per-sample loop."""
    out = prototypes.clone()
    for z, c in zip(features, labels.tolist(), strict=True):
        updated = momentum * out[c] + (1 - momentum) * z
        out[c] = F.normalize(updated, dim=0) if renormalise else updated
    return out


def unnormalised_reference(prototypes, features, labels, momentum):
    """Sequential recursion without intermediate renormalisation, normalised at the end."""
    raw = sequential_reference(prototypes, features, labels, momentum, renormalise=False)
    seen = torch.zeros(len(prototypes), dtype=torch.bool)
    seen[labels] = True
    return torch.where(seen[:, None], F.normalize(raw, dim=1), prototypes)


def random_case(seed, num_classes=6, dim=8, batch=40, zero_rows=()):
    gen = torch.Generator().manual_seed(seed)
    protos = F.normalize(torch.randn(num_classes, dim, generator=gen, dtype=torch.float64), dim=1)
    for row in zero_rows:
        protos[row] = 0
    feats = F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.randint(0, num_classes - 1, (batch,), generator=gen)  # last class absent
    return protos, feats, labels


def test_matches_unrolled_recursion_exactly():
    for seed in range(5):
        protos, feats, labels = random_case(seed)
        got = update_prototypes(protos, feats, labels, 0.9)
        torch.testing.assert_close(got, unnormalised_reference(protos, feats, labels, 0.9))


def test_close_to_sequential_original_within_second_order():
    for gamma in (0.99, 0.9):
        protos, feats, labels = random_case(1)
        got = update_prototypes(protos, feats, labels, gamma)
        ref = sequential_reference(protos, feats, labels, gamma)
        cos = (got * ref).sum(dim=1)
        assert torch.all(1 - cos < 10 * (1 - gamma) ** 2), (gamma, 1 - cos)


def test_absent_class_unchanged_and_rows_unit_norm():
    protos, feats, labels = random_case(2)
    got = update_prototypes(protos, feats, labels, 0.99)
    torch.testing.assert_close(got[-1], protos[-1])
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(got), dtype=got.dtype))


def test_zero_prototype_takes_weighted_mean_of_its_first_batch():
    protos, feats, labels = random_case(3, zero_rows=(0,))
    labels[:3] = 0
    got = update_prototypes(protos, feats, labels, 0.99)
    rows = feats[labels == 0]
    weights = 0.99 ** torch.arange(len(rows) - 1, -1, -1, dtype=rows.dtype)
    expected = F.normalize((weights[:, None] * rows).sum(0), dim=0)
    torch.testing.assert_close(got[0], expected)
