from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from pico.pll import (
    CIFAR100_COARSE,
    binomial_candidates,
    candidate_generator_params,
    candidate_summary,
    flip_candidates,
    format_candidate_summary,
    generate_candidates,
    hierarchical_candidates,
    instance_dependent_candidates,
    noisy_candidates,
    pair_candidates,
    uniform_candidates,
    uniform_set_candidates,
    uniform_set_size_probs,
)

N = 20_000


def _targets(n: int, c: int, seed: int = 123) -> torch.Tensor:
    return torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(seed))


def _true_in(cand: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return cand[torch.arange(len(y)), y]


def _false_rate(cand: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(C, C) inclusion rate of class j among rows with true label c (diagonal = y)."""
    c = cand.shape[1]
    return torch.stack([cand[y == k].double().mean(0) for k in range(c)])


def _chi2(observed: list[int], probs: list[float]) -> float:
    total = sum(observed)
    return sum((o - total * p) ** 2 / (total * p) for o, p in zip(observed, probs, strict=True))


# ----------------------------------------------------------------------------- uniform


@pytest.mark.parametrize(("c", "q"), [(10, 0.3), (10, 0.1), (5, 0.7)])
def test_uniform_mean_size_and_true_label(c: int, q: float) -> None:
    y = _targets(N, c)
    cand = uniform_candidates(y, c, q, seed=0)
    assert cand.dtype == torch.bool
    assert cand.shape == (N, c)
    assert _true_in(cand, y).all()
    sd = math.sqrt((c - 1) * q * (1 - q) / N)
    assert abs(cand.sum(1).double().mean().item() - (1 + q * (c - 1))) < 5 * sd
    rates = _false_rate(cand, y)
    off = ~torch.eye(c, dtype=torch.bool)
    assert (rates[off] - q).abs().max() < 5 * math.sqrt(q * (1 - q) / (N / c))


def test_uniform_extremes() -> None:
    y = _targets(50, 4)
    assert torch.equal(uniform_candidates(y, 4, 0.0, seed=1), torch.eye(4, dtype=torch.bool)[y])
    assert uniform_candidates(y, 4, 1.0, seed=1).all()


# ----------------------------------------------------------------------------- hierarchical

FINE_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain "
    "mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain "
    "plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank "
    "telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree "
    "wolf woman worm"
)
SUPERCLASSES = {  # alphabetical superclass names -> members (CIFAR-100 paper table)
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}


def test_cifar100_coarse_matches_superclass_table() -> None:
    fine = FINE_NAMES.split()
    assert sorted(fine) == fine
    assert len(fine) == 100
    assert list(SUPERCLASSES) == sorted(SUPERCLASSES)
    coarse_of = {
        fine: k for k, members in enumerate(SUPERCLASSES.values()) for fine in members.split()
    }
    assert sorted(coarse_of) == fine
    assert list(CIFAR100_COARSE) == [coarse_of[f] for f in fine]
    assert sorted(Counter(CIFAR100_COARSE).items()) == [(k, 5) for k in range(20)]


def test_hierarchical_only_siblings_cifar100() -> None:
    y = _targets(N, 100)
    q = 0.5
    cand = hierarchical_candidates(y, 100, q, seed=3)
    assert _true_in(cand, y).all()
    coarse = torch.tensor(CIFAR100_COARSE)
    siblings = coarse[y][:, None] == coarse[None, :]
    assert not (cand & ~siblings).any()
    sizes = cand.sum(1).double()
    assert abs(sizes.mean().item() - (1 + 4 * q)) < 5 * math.sqrt(4 * q * (1 - q) / N)
    assert sizes.max() <= 5


def test_hierarchical_custom_superclass_loop_reference() -> None:
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    y = _targets(3000, 6)
    cand = hierarchical_candidates(y, 6, 1.0, seed=0, superclass=groups)
    expected = torch.tensor([[groups[j] == groups[t] for j in range(6)] for t in y.tolist()])
    assert torch.equal(cand, expected)


def test_hierarchical_needs_superclass_for_other_class_counts() -> None:
    with pytest.raises(ValueError, match="num_classes=100"):
        hierarchical_candidates(_targets(10, 10), 10, 0.5, seed=0)


# ----------------------------------------------------------------------------- binomial


def test_binomial_never_size_one_and_matches_uniform_elsewhere() -> None:
    c, q = 6, 0.2
    y = _targets(N, c)
    cand = binomial_candidates(y, c, q, seed=5)
    uni = uniform_candidates(y, c, q, seed=5)
    assert _true_in(cand, y).all()
    assert (cand.sum(1) >= 2).all()
    big = uni.sum(1) >= 2
    assert torch.equal(cand[big], uni[big])
    # distribution of sizes: uniform sizes, with size 1 moved to size 2
    p_size = [math.comb(c - 1, s - 1) * q ** (s - 1) * (1 - q) ** (c - s) for s in range(1, 7)]
    probs = [p_size[0] + p_size[1], *p_size[2:]]
    counts = Counter(cand.sum(1).tolist())
    observed = [counts.get(s, 0) for s in range(2, 7)]
    assert _chi2(observed[:3], [p / sum(probs[:3]) for p in probs[:3]]) < 25


def test_binomial_extra_class_is_uniform_over_false_classes() -> None:
    c = 5
    y = _targets(N, c)
    cand = binomial_candidates(y, c, 0.0, seed=2)  # every row gets exactly one forced class
    assert (cand.sum(1) == 2).all()
    extra = (cand & ~torch.eye(c, dtype=torch.bool)[y]).int().argmax(1)
    offsets = ((extra - y) % c).tolist()
    counts = Counter(offsets)
    assert 0 not in counts
    assert _chi2([counts[k] for k in range(1, c)], [1 / (c - 1)] * (c - 1)) < 25


# ----------------------------------------------------------------------------- pair


def test_pair_candidates() -> None:
    c, q = 7, 0.4
    y = _targets(N, c)
    cand = pair_candidates(y, c, q, seed=0)
    allowed = torch.eye(c, dtype=torch.bool)[y] | torch.eye(c, dtype=torch.bool)[(y + 1) % c]
    assert _true_in(cand, y).all()
    assert not (cand & ~allowed).any()
    rate = cand[torch.arange(N), (y + 1) % c].double().mean().item()
    assert abs(rate - q) < 5 * math.sqrt(q * (1 - q) / N)


# ----------------------------------------------------------------------------- uniform set


def test_uniform_set_size_probs_reference() -> None:
    for c in (2, 5, 10):
        expected = [math.comb(c, s) / (2**c - 2) for s in range(1, c)]
        assert torch.allclose(
            uniform_set_size_probs(c), torch.tensor(expected, dtype=torch.float64)
        )
    assert torch.isfinite(uniform_set_size_probs(2000)).all()


def test_uniform_set_sizes_and_labels() -> None:
    c = 6
    y = _targets(N, c)
    cand = uniform_set_candidates(y, c, seed=4)
    assert _true_in(cand, y).all()
    sizes = cand.sum(1)
    assert sizes.min() >= 1
    assert sizes.max() <= c - 1
    counts = Counter(sizes.tolist())
    probs = [math.comb(c, s) / (2**c - 2) for s in range(1, c)]
    assert _chi2([counts.get(s, 0) for s in range(1, c)], probs) < 25  # 4 dof, p ~ 5e-5
    # false labels are drawn uniformly: each false class appears with E[s-1]/(C-1) = 0.4
    rates = _false_rate(cand, y)
    off = ~torch.eye(c, dtype=torch.bool)
    assert (rates[off] - 0.4).abs().max() < 5 * math.sqrt(0.24 / (N / c))


# ----------------------------------------------------------------------------- instance-dependent


def _instance_reference(y: torch.Tensor, probs: torch.Tensor, r: float) -> torch.Tensor:
    """Expected inclusion probability per cell, by the rule written as loops."""
    out = torch.zeros_like(probs, dtype=torch.float64)
    c = probs.shape[1]
    for i in range(len(y)):
        p = probs[i].double().tolist()
        p[y[i]] = 0.0
        top = max(p)
        p = [v / top for v in p]
        mean_false = sum(p) / (c - 1)
        for j in range(c):
            out[i, j] = 1.0 if j == y[i] else min(1.0, p[j] * r / mean_false)
    return out


def test_instance_dependent_matches_loop_reference_with_clipping() -> None:
    c, n = 5, 3000
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(2.0 * torch.randn(n, c, generator=gen), dim=1)
    y = _targets(n, c)
    expected = _instance_reference(y, probs, 0.4)
    assert (expected == 1.0).sum() > n  # clipping does occur (besides y)
    draws = torch.stack(
        [instance_dependent_candidates(y, probs, seed=s, r=0.4).double() for s in range(20)]
    )
    assert draws[:, torch.arange(n), y].all()
    # average over seeds and rows per true class: unbiased for the expected probabilities
    for k in range(c):
        rows = y == k
        got = draws[:, rows].mean((0, 1))
        assert (got - expected[rows].mean(0)).abs().max() < 0.02


def test_instance_dependent_mean_is_r_without_clipping() -> None:
    c, r = 10, 0.4
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(0.3 * torch.randn(N, c, generator=gen), dim=1)
    y = _targets(N, c)
    assert _instance_reference(y[:200], probs[:200], r).max() <= 1.0
    cand = instance_dependent_candidates(y, probs, seed=0, r=r)
    assert _true_in(cand, y).all()
    false_rate = (cand.sum(1) - 1).double().mean().item() / (c - 1)
    assert abs(false_rate - r) < 5 * math.sqrt(r * (1 - r) / (N * (c - 1)))


def test_instance_dependent_zero_false_mass_gives_singletons() -> None:
    y = _targets(20, 4)
    probs = torch.eye(4)[y]
    assert torch.equal(instance_dependent_candidates(y, probs, seed=0), probs.bool())


def test_instance_dependent_bad_probs() -> None:
    y = _targets(5, 3)
    with pytest.raises(ValueError, match="rows"):
        instance_dependent_candidates(y, torch.rand(4, 3), seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        instance_dependent_candidates(y, -torch.rand(5, 3), seed=0)
    with pytest.raises(ValueError, match="r must be"):
        instance_dependent_candidates(y, torch.rand(5, 3), seed=0, r=1.5)


# ----------------------------------------------------------------------------- noisy


@pytest.mark.parametrize(("c", "q", "eta"), [(10, 0.05, 0.5), (10, 0.3, 0.2)])
def test_noisy_missing_rate_and_no_empty_rows(c: int, q: float, eta: float) -> None:
    y = _targets(N, c)
    cand = noisy_candidates(y, c, q, eta, seed=0)
    assert cand.any(1).all()
    empty_p = (1 - q) ** (c - 1)
    expected = eta * (1 - empty_p) / (1 - eta * empty_p)  # redraw conditions on non-empty
    missing = (~_true_in(cand, y)).double().mean().item()
    assert abs(missing - expected) < 5 * math.sqrt(expected * (1 - expected) / N)


def test_noisy_without_noise_is_uniform_in_distribution() -> None:
    c, q = 8, 0.25
    y = _targets(N, c)
    cand = noisy_candidates(y, c, q, 0.0, seed=1)
    assert _true_in(cand, y).all()
    assert abs(cand.sum(1).double().mean().item() - (1 + q * (c - 1))) < 0.05


# ----------------------------------------------------------------------------- flip


@pytest.mark.parametrize(("c", "q", "eta"), [(10, 0.3, 0.3), (4, 0.7, 0.5)])
def test_flip_missing_rate(c: int, q: float, eta: float) -> None:
    y = _targets(N, c)
    cand = flip_candidates(y, c, q, eta, seed=0)
    missing = ~_true_in(cand, y)
    expected = eta * (1 - q ** (c - 1))  # rows holding every class cannot flip
    rate = missing.double().mean().item()
    assert abs(rate - expected) < 5 * math.sqrt(expected * (1 - expected) / N)
    # flipping swaps one label for another: set sizes keep the uniform distribution
    assert abs(cand.sum(1).double().mean().item() - (1 + q * (c - 1))) < 0.05
    assert not (missing & cand.all(1)).any()


def test_flip_replacement_is_uniform_non_candidate() -> None:
    c = 5
    y = _targets(N, c)
    cand = flip_candidates(y, c, 0.0, 0.5, seed=3)  # singletons: flipped rows hold one wrong class
    assert (cand.sum(1) == 1).all()
    label = cand.int().argmax(1)
    flipped = label != y
    counts = Counter(((label - y) % c)[flipped].tolist())
    assert _chi2([counts[k] for k in range(1, c)], [1 / (c - 1)] * (c - 1)) < 25


# ----------------------------------------------------------------------------- seeds, dispatch

GENERATORS = {
    "uniform": {"q": 0.3},
    "hierarchical": {"q": 0.5, "superclass": torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])},
    "binomial": {"q": 0.2},
    "pair": {"q": 0.5},
    "uniform_set": {},
    "instance_dependent": {"probs": torch.softmax(torch.randn(500, 8), dim=1), "r": 0.3},
    "noisy": {"q": 0.3, "eta": 0.2},
    "flip": {"q": 0.3, "eta": 0.2},
}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_seeding_is_private_and_reproducible(name: str) -> None:
    y = _targets(500, 8)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = generate_candidates(name, y, 8, seed=11, **GENERATORS[name])
    assert torch.equal(torch.get_rng_state(), state)
    b = generate_candidates(name, y, 8, seed=11, **GENERATORS[name])
    other = generate_candidates(name, y, 8, seed=12, **GENERATORS[name])
    assert a.dtype == torch.bool
    assert a.shape == (500, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
    assert a.any(1).all()


def test_generate_candidates_dispatches_to_generators() -> None:
    y = _targets(300, 8)
    assert torch.equal(
        generate_candidates("uniform", y, 8, 1, q=0.4), uniform_candidates(y, 8, 0.4, 1)
    )
    assert torch.equal(
        generate_candidates("flip", y, 8, 2, q=0.4, eta=0.1), flip_candidates(y, 8, 0.4, 0.1, 2)
    )


def test_generate_candidates_errors() -> None:
    y = _targets(10, 4)
    with pytest.raises(ValueError, match="uniform, hierarchical, binomial, pair"):
        generate_candidates("random", y, 4, 0)
    with pytest.raises(ValueError, match=r"missing q.*q \(required\)"):
        generate_candidates("uniform", y, 4, 0)
    with pytest.raises(ValueError, match="unknown eta"):
        generate_candidates("uniform", y, 4, 0, q=0.1, eta=0.2)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        generate_candidates("instance_dependent", y, 4, 0, probs=torch.rand(10, 5))
    assert candidate_generator_params("noisy") == {"q": True, "eta": True}
    assert candidate_generator_params("instance_dependent") == {"probs": True, "r": False}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"q": -0.1}, r"q must be a probability in \[0, 1\]"),
        ({"q": 1.5}, r"q must be"),
        ({"q": float("nan")}, r"q must be"),
    ],
)
def test_probability_checks(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        uniform_candidates(_targets(10, 4), 4, seed=0, **kwargs)


def test_eta_and_target_checks() -> None:
    y = _targets(10, 4)
    with pytest.raises(ValueError, match=r"eta must be a probability in \[0, 1\)"):
        noisy_candidates(y, 4, 0.1, 1.0, seed=0)
    with pytest.raises(ValueError, match="eta must be"):
        flip_candidates(y, 4, 0.1, -0.5, seed=0)
    with pytest.raises(ValueError, match="outside"):
        uniform_candidates(torch.tensor([0, 4, -1]), 4, 0.1, seed=0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        uniform_candidates(torch.zeros(3, dtype=torch.long), 1, 0.1, seed=0)
    with pytest.raises(ValueError, match="integer"):
        uniform_candidates(torch.zeros(3), 4, 0.1, seed=0)
    with pytest.raises(ValueError, match="1-D"):
        uniform_candidates(torch.zeros(3, 1, dtype=torch.long), 4, 0.1, seed=0)


# ----------------------------------------------------------------------------- summary


def test_candidate_summary_matches_loops() -> None:
    gen = torch.Generator().manual_seed(0)
    cand = torch.rand(200, 6, generator=gen) < 0.4
    cand[:, 0] = True
    y = torch.randint(-1, 6, (200,), generator=gen)
    summary = candidate_summary(cand, y)
    rows = cand.tolist()
    sizes = [sum(r) for r in rows]
    labelled = [i for i in range(200) if y[i] >= 0]
    inside = [i for i in labelled if rows[i][y[i]]]
    assert summary["rows"] == 200
    assert summary["classes"] == 6
    assert summary["mean_size"] == pytest.approx(sum(sizes) / 200)
    assert summary["min_size"] == min(sizes)
    assert summary["max_size"] == max(sizes)
    assert summary["labelled_rows"] == len(labelled)
    assert summary["true_in_set"] == pytest.approx(len(inside) / len(labelled))
    assert summary["true_missing"] == len(labelled) - len(inside)
    assert "true_in_set" not in candidate_summary(cand)


def test_candidate_summary_rejects_bad_targets() -> None:
    with pytest.raises(ValueError, match="-1 for unknown"):
        candidate_summary(torch.ones(3, 2, dtype=torch.bool), torch.tensor([0, 2, 1]))


def test_format_candidate_summary() -> None:
    cand = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    text = format_candidate_summary(candidate_summary(cand, torch.tensor([0, 2, -1])))
    assert "3 rows x 3 classes" in text
    assert "size mean 2.00 (min 1, max 3)" in text
    assert "50.0% of 2 labelled rows (1 missing)" in text
    assert len(text.splitlines()) == 2
    assert len(format_candidate_summary(candidate_summary(cand)).splitlines()) == 1
