"""Partial-label learning: candidate sets (generation, validation, loading) and methods."""

from __future__ import annotations

from pico.pll.candidate_io import (
    candidates_from_column,
    load_candidates_csv,
    load_candidates_npz,
    load_pll_mat,
)
from pico.pll.candidates import (
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
from pico.pll.validation import (
    CandidateError,
    candidates_from_csr,
    candidates_from_index_lists,
    validate_candidates,
)

__all__ = [
    "CIFAR100_COARSE",
    "CandidateError",
    "binomial_candidates",
    "candidate_generator_params",
    "candidate_summary",
    "candidates_from_column",
    "candidates_from_csr",
    "candidates_from_index_lists",
    "flip_candidates",
    "format_candidate_summary",
    "generate_candidates",
    "hierarchical_candidates",
    "instance_dependent_candidates",
    "load_candidates_csv",
    "load_candidates_npz",
    "load_pll_mat",
    "noisy_candidates",
    "pair_candidates",
    "uniform_candidates",
    "uniform_set_candidates",
    "uniform_set_size_probs",
    "validate_candidates",
]
