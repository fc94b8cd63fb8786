"""Partial-label learning: candidate sets (generation, validation, loading), the methods
(PiCO, PiCO+, PRODEN, CC, RC, LWS, CAVL, the supervised reference, self-distillation)
and their losses."""

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
from pico.pll.candidates_buffer import (
    CandidateRows,
    check_nonempty_rows,
    require_candidates,
    soft_cross_entropy,
    softmax_within,
    uniform_confidence,
    weighted_cross_entropy,
)
from pico.pll.cavl import CAVL, cav_targets, class_activation_values
from pico.pll.cc import CC, candidate_prediction, cc_loss
from pico.pll.disambiguation import phi_schedule, prototype_labels, update_confidence_
from pico.pll.disambiguation_loss import ContrastiveDisambiguation
from pico.pll.distill import Distill, distill_loss, teacher_targets
from pico.pll.lws import LWS, lws_initial_weights, lws_loss, lws_weights
from pico.pll.pico import PiCO
from pico.pll.pico_plus import PiCOPlus
from pico.pll.proden import PRODEN
from pico.pll.prototypes import update_prototypes
from pico.pll.rc import RC
from pico.pll.supervised import ClassifierMethod, Supervised
from pico.pll.validation import (
    CandidateError,
    candidates_from_csr,
    candidates_from_index_lists,
    validate_candidates,
)
from pico.pll.warmup import Warmup, candidate_ambiguity

__all__ = [
    "CAVL",
    "CC",
    "CIFAR100_COARSE",
    "LWS",
    "PRODEN",
    "RC",
    "CandidateError",
    "CandidateRows",
    "ClassifierMethod",
    "ContrastiveDisambiguation",
    "Distill",
    "PiCO",
    "PiCOPlus",
    "Supervised",
    "Warmup",
    "binomial_candidates",
    "candidate_ambiguity",
    "candidate_generator_params",
    "candidate_prediction",
    "candidate_summary",
    "candidates_from_column",
    "candidates_from_csr",
    "candidates_from_index_lists",
    "cav_targets",
    "cc_loss",
    "check_nonempty_rows",
    "class_activation_values",
    "distill_loss",
    "flip_candidates",
    "format_candidate_summary",
    "generate_candidates",
    "hierarchical_candidates",
    "instance_dependent_candidates",
    "load_candidates_csv",
    "load_candidates_npz",
    "load_pll_mat",
    "lws_initial_weights",
    "lws_loss",
    "lws_weights",
    "noisy_candidates",
    "pair_candidates",
    "phi_schedule",
    "prototype_labels",
    "require_candidates",
    "soft_cross_entropy",
    "softmax_within",
    "teacher_targets",
    "uniform_candidates",
    "uniform_confidence",
    "uniform_set_candidates",
    "uniform_set_size_probs",
    "update_confidence_",
    "update_prototypes",
    "validate_candidates",
    "weighted_cross_entropy",
]
