"""Property-based checks of every candidate generator on random shapes and parameters."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pico.pll.candidates import generate_candidates
from pico.pll.validation import validate_candidates


@st.composite
def labelled(draw, min_classes=2):
    num_classes = draw(st.integers(min_classes, 12))
    n = draw(st.integers(1, 60))
    targets = draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n))
    return torch.tensor(targets), num_classes, draw(st.integers(0, 2**31 - 1))


PROB = st.floats(0.0, 1.0)


@settings(max_examples=40, deadline=None)
@given(labelled(), PROB, st.sampled_from(["uniform", "binomial", "pair"]))
def test_true_label_rules_keep_the_label_and_validate(case, q, name):
    targets, num_classes, seed = case
    cands = generate_candidates(name, targets, num_classes, seed, q=q)
    assert cands.shape == (len(targets), num_classes) and cands.dtype == torch.bool
    assert cands[torch.arange(len(targets)), targets].all()
    validate_candidates(cands, num_classes, len(targets), targets)
    if name == "binomial":
        assert (cands.sum(1) >= 2).all()
    if name == "pair":
        assert (cands.sum(1) <= 2).all()
    again = generate_candidates(name, targets, num_classes, seed, q=q)
    assert torch.equal(cands, again)


@settings(max_examples=40, deadline=None)
@given(labelled(min_classes=3), PROB, st.floats(0.0, 0.99))
def test_noisy_rules_never_leave_an_empty_set(case, q, eta):
    targets, num_classes, seed = case
    for name in ("noisy", "flip"):
        cands = generate_candidates(name, targets, num_classes, seed, q=q, eta=eta)
        assert (cands.sum(1) >= 1).all()
        validate_candidates(cands, num_classes, len(targets))


@settings(max_examples=40, deadline=None)
@given(labelled())
def test_uniform_set_sizes_stay_below_the_class_count(case):
    targets, num_classes, seed = case
    cands = generate_candidates("uniform_set", targets, num_classes, seed)
    sizes = cands.sum(1)
    assert ((sizes >= 1) & (sizes <= num_classes - 1)).all()
    assert cands[torch.arange(len(targets)), targets].all()
