"""Seeded candidate-set generators (docs/candidates.md, "Generated candidate sets").

Every generator takes ``targets`` (N,) int64 true labels in ``[0, C)``, draws from a
private ``torch.Generator`` seeded with ``seed`` (never the global RNG) and returns a
bool matrix (N, C) whose row i is the candidate set of example i. Results depend only
on the inputs and the seed, and are computed on the CPU.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: CIFAR-100 superclass (coarse label) of each fine label, in torchvision's alphabetical
#: fine-label order (apple, aquarium_fish, baby, ...); 20 superclasses of 5 classes each,
#: numbered alphabetically (aquatic_mammals=0, ..., vehicles_2=19).
CIFAR100_COARSE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_targets(targets: Tensor, num_classes: int) -> Tensor:
    """Validate true labels and return them as a CPU int64 vector."""
    if num_classes < 2:
        raise ValueError(f"candidate generation needs at least 2 classes, got {num_classes}")
    targets = torch.as_tensor(targets)
    if targets.ndim != 1:
        raise ValueError(
            f"targets must be a 1-D tensor of labels, got shape {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must hold integer class ids, got dtype {targets.dtype}")
    targets = targets.detach().to("cpu", torch.int64)
    bad = torch.nonzero((targets < 0) | (targets >= num_classes)).flatten()
    if len(bad):
        raise ValueError(
            f"{len(bad)} targets lie outside [0, {num_classes}) (first rows: "
            f"{bad[:5].tolist()}); generated candidates need every true label known and "
            "in range (drop unlabelled rows before generating)"
        )
    return targets


def _check_prob(name: str, value: float, *, allow_one: bool = True) -> float:
    value = float(value)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (value >= 0.0 and upper_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must be a probability in {interval}, got {value}")
    return value


def _with_true_label(cand: Tensor, targets: Tensor) -> Tensor:
    cand[torch.arange(len(targets)), targets] = True
    return cand


def uniform_candidates(targets: Tensor, num_classes: int, q: float, seed: int) -> Tensor:
    """PiCO rule: keep y; add every other class independently with probability ``q``.

    Expected set size ``1 + q (C - 1)``.
    """
    targets = _check_targets(targets, num_classes)
    q = _check_prob("q", q)
    draw = torch.rand(len(targets), num_classes, generator=_generator(seed))
    return _with_true_label(draw < q, targets)


def hierarchical_candidates(
    targets: Tensor,
    num_classes: int,
    q: float,
    seed: int,
    superclass: Tensor | None = None,
) -> Tensor:
    """CIFAR-100-H rule: like uniform, but only classes of y's superclass can enter.

    ``superclass`` (C,) gives the group of each class; the default is
    :data:`CIFAR100_COARSE` (needs ``num_classes == 100``).
    """
    targets = _check_targets(targets, num_classes)
    q = _check_prob("q", q)
    groups = torch.as_tensor(CIFAR100_COARSE if superclass is None else superclass)
    if groups.shape != (num_classes,):
        raise ValueError(
            f"superclass must give one group per class, shape ({num_classes},), got "
            f"{tuple(groups.shape)}; the default CIFAR-100 mapping needs num_classes=100, "
            "otherwise pass superclass="
        )
    groups = groups.to("cpu", torch.int64)
    siblings = groups[targets][:, None] == groups[None, :]
    draw = torch.rand(len(targets), num_classes, generator=_generator(seed))
    return _with_true_label((draw < q) & siblings, targets)


def binomial_candidates(targets: Tensor, num_classes: int, q: float, seed: int) -> Tensor:
    """PRODEN/LWS rule: uniform candidates, but a set of size 1 gets one random false class.

    With the same seed, rows of size >= 2 equal those of :func:`uniform_candidates`.
    """
    targets = _check_targets(targets, num_classes)
    q = _check_prob("q", q)
    gen = _generator(seed)
    cand = _with_true_label(torch.rand(len(targets), num_classes, generator=gen) < q, targets)
    lonely = torch.nonzero(cand.sum(1) == 1).flatten()
    offset = torch.randint(0, num_classes - 1, (len(lonely),), generator=gen)
    y = targets[lonely]
    cand[lonely, offset + (offset >= y).long()] = True  # uniform over the C-1 classes != y
    return cand


def pair_candidates(targets: Tensor, num_classes: int, q: float, seed: int) -> Tensor:
    """Pair rule: y plus ``(y + 1) mod C`` with probability ``q``."""
    targets = _check_targets(targets, num_classes)
    q = _check_prob("q", q)
    n = len(targets)
    cand = torch.zeros(n, num_classes, dtype=torch.bool)
    cand[torch.arange(n), (targets + 1) % num_classes] = (
        torch.rand(n, generator=_generator(seed)) < q
    )
    return _with_true_label(cand, targets)


def uniform_set_size_probs(num_classes: int) -> Tensor:
    """P(s) = binom(C, s) / (2^C - 2) for s = 1..C-1 (float64, computed in log space)."""
    s = torch.arange(1, num_classes, dtype=torch.float64)
    c = torch.tensor(float(num_classes), dtype=torch.float64)
    log_binom = torch.lgamma(c + 1) - torch.lgamma(s + 1) - torch.lgamma(c - s + 1)
    return torch.softmax(log_binom, dim=0)


def uniform_set_candidates(targets: Tensor, num_classes: int, seed: int) -> Tensor:
    """CC/RC rule: size s in 1..C-1 with P(s) = binom(C, s) / (2^C - 2), then s-1 random
    distinct false labels join y."""
    targets = _check_targets(targets, num_classes)
    n = len(targets)
    gen = _generator(seed)
    sizes = (
        torch.multinomial(uniform_set_size_probs(num_classes), n, replacement=True, generator=gen)
        + 1
    )
    keys = torch.rand(n, num_classes, generator=gen)
    keys[torch.arange(n), targets] = 2.0  # y sorts last, so it is never among the picks
    rank = torch.empty_like(keys, dtype=torch.int64)
    rank.scatter_(1, keys.argsort(dim=1), torch.arange(num_classes).expand(n, -1).contiguous())
    return _with_true_label(rank < (sizes - 1)[:, None], targets)


def instance_dependent_candidates(
    targets: Tensor, probs: Tensor, seed: int, r: float = 0.4
) -> Tensor:
    """Instance-dependent rule from a trained classifier's softmax ``probs`` (N, C).

    Per row: zero p_y, divide by the row max, rescale so the mean over the C-1 false
    classes is ``r``, clip to 1, draw each false class as Bernoulli; y is kept. (The
    division by the max cancels in the rescaling; it is applied implicitly.) Rows whose
    false-class probabilities are all zero get no false class.
    """
    probs = torch.as_tensor(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be an (N, C) matrix, got shape {tuple(probs.shape)}")
    num_classes = probs.shape[1]
    targets = _check_targets(targets, num_classes)
    if probs.shape[0] != len(targets):
        raise ValueError(
            f"probs has {probs.shape[0]} rows but there are {len(targets)} targets; "
            "give one probability row per example"
        )
    r = _check_prob("r", r)
    p = probs.detach().to("cpu", torch.float64).clone()
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError("probs must be finite and non-negative (pass softmax outputs)")
    p[torch.arange(len(targets)), targets] = 0.0
    false_mean = p.sum(1, keepdim=True) / (num_classes - 1)
    p = torch.where(false_mean > 0, p * r / false_mean.clamp_min(1e-300), 0.0).clamp_max(1.0)
    draw = torch.rand(p.shape, generator=_generator(seed), dtype=torch.float64)
    return _with_true_label(draw < p, targets)


def noisy_candidates(targets: Tensor, num_classes: int, q: float, eta: float, seed: int) -> Tensor:
    """PiCO+ rule: y kept with probability ``1 - eta``, every other class with ``q``.

    Rows left empty are redrawn (whole row, same rule) until non-empty, so the true label
    is missing at rate ``eta (1-(1-q)^(C-1)) / (1 - eta (1-q)^(C-1))``.
    """
    targets = _check_targets(targets, num_classes)
    q = _check_prob("q", q)
    eta = _check_prob("eta", eta, allow_one=False)
    gen = _generator(seed)
    keep = torch.full((num_classes,), q, dtype=torch.float64)
    cand = torch.zeros(len(targets), num_classes, dtype=torch.bool)
    rows = torch.arange(len(targets))
    while len(rows):
        y = targets[rows]
        p = keep.expand(len(rows), -1).clone()
        p[torch.arange(len(rows)), y] = 1.0 - eta
        cand[rows] = torch.rand(p.shape, generator=gen, dtype=torch.float64) < p
        rows = rows[~cand[rows].any(1)]
    return cand


def flip_candidates(targets: Tensor, num_classes: int, q: float, eta: float, seed: int) -> Tensor:
    """ALIM rule: uniform candidates, then with probability ``eta`` y is replaced by a
    uniformly random non-candidate class (rows that hold every class stay as they are)."""
    targets = _check_targets(targets, num_classes)
    q = _check_prob("q", q)
    eta = _check_prob("eta", eta, allow_one=False)
    n = len(targets)
    gen = _generator(seed)
    cand = _with_true_label(torch.rand(n, num_classes, generator=gen) < q, targets)
    flip = (torch.rand(n, generator=gen) < eta) & ~cand.all(1)
    keys = torch.rand(n, num_classes, generator=gen).masked_fill(cand, -1.0)
    rows = torch.nonzero(flip).flatten()
    cand[rows, targets[rows]] = False
    cand[rows, keys[rows].argmax(1)] = True
    return cand


def _instance_dependent(
    targets: Tensor, num_classes: int, seed: int, probs: Tensor, r: float = 0.4
) -> Tensor:
    probs = torch.as_tensor(probs)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(
            f"probs must have shape (N, {num_classes}) to match num_classes, got "
            f"{tuple(probs.shape)}"
        )
    return instance_dependent_candidates(targets, probs, seed, r=r)


#: name -> generator with signature (targets, num_classes, seed, **params)
_GENERATORS: dict[str, Callable[..., Tensor]] = {
    "uniform": uniform_candidates,
    "hierarchical": hierarchical_candidates,
    "binomial": binomial_candidates,
    "pair": pair_candidates,
    "uniform_set": uniform_set_candidates,
    "instance_dependent": _instance_dependent,
    "noisy": noisy_candidates,
    "flip": flip_candidates,
}
_COMMON_ARGS = ("targets", "num_classes", "seed")


def candidate_generator_params(name: str) -> dict[str, bool]:
    """Extra parameters of generator ``name``: parameter name -> whether it is required."""
    if name not in _GENERATORS:
        raise ValueError(
            f"unknown candidate generator {name!r}; valid names: {', '.join(_GENERATORS)}"
        )
    params = inspect.signature(_GENERATORS[name]).parameters.values()
    return {
        p.name: p.default is inspect.Parameter.empty for p in params if p.name not in _COMMON_ARGS
    }


def generate_candidates(
    name: str, targets: Tensor, num_classes: int, seed: int, **params: Any
) -> Tensor:
    """Candidate sets by generator ``name`` (uniform, hierarchical, binomial, pair,
    uniform_set, instance_dependent, noisy, flip) with its parameters ``params``."""
    accepted = candidate_generator_params(name)
    unknown = sorted(set(params) - set(accepted))
    missing = sorted(k for k, required in accepted.items() if required and k not in params)
    if unknown or missing:
        described = ", ".join(
            f"{k} ({'required' if req else 'optional'})" for k, req in accepted.items()
        )
        problems = []
        if unknown:
            problems.append(f"unknown {', '.join(unknown)}")
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        raise ValueError(
            f"bad parameters for candidate generator {name!r}: {'; '.join(problems)}. "
            f"It takes: {described or 'no extra parameters'}"
        )
    return _GENERATORS[name](targets=targets, num_classes=num_classes, seed=seed, **params)


def candidate_summary(candidates: Tensor, targets: Tensor | None = None) -> dict[str, float]:
    """Size statistics of a candidate matrix (N, C), and true-label coverage when known.

    Keys: ``rows``, ``classes``, ``mean_size``, ``min_size``, ``max_size``; with
    ``targets`` (rows with target -1 are ignored) also ``labelled_rows``,
    ``true_in_set`` (share of labelled rows whose true label is a candidate) and
    ``true_missing`` (their count).
    """
    candidates = torch.as_tensor(candidates)
    if candidates.ndim != 2:
        raise ValueError(
            f"candidates must be an (N, C) matrix, got shape {tuple(candidates.shape)}"
        )
    cand = candidates.detach().cpu().bool()
    sizes = cand.sum(1).double()
    n, c = cand.shape
    out = {
        "rows": float(n),
        "classes": float(c),
        "mean_size": sizes.mean().item() if n else 0.0,
        "min_size": sizes.min().item() if n else 0.0,
        "max_size": sizes.max().item() if n else 0.0,
    }
    if targets is not None:
        targets = torch.as_tensor(targets).detach().cpu().long()
        if targets.shape != (n,):
            raise ValueError(
                f"targets must have shape ({n},) to match the candidate rows, got "
                f"{tuple(targets.shape)}"
            )
        if (targets >= c).any() or (targets < -1).any():
            raise ValueError(
                f"targets must be class ids in [0, {c}) or -1 for unknown; got values from "
                f"{targets.min().item()} to {targets.max().item()}"
            )
        rows = torch.nonzero(targets >= 0).flatten()
        inside = cand[rows, targets[rows]]
        out["labelled_rows"] = float(len(rows))
        out["true_in_set"] = inside.double().mean().item() if len(rows) else math.nan
        out["true_missing"] = float((~inside).sum().item())
    return out


def format_candidate_summary(summary: dict[str, float]) -> str:
    """One or two readable lines from :func:`candidate_summary`."""
    text = (
        f"candidate sets: {int(summary['rows'])} rows x {int(summary['classes'])} classes, "
        f"size mean {summary['mean_size']:.2f} (min {int(summary['min_size'])}, "
        f"max {int(summary['max_size'])})"
    )
    if "true_in_set" in summary:
        labelled = int(summary["labelled_rows"])
        if labelled:
            text += (
                f"\ntrue label inside the set: {100 * summary['true_in_set']:.1f}% of "
                f"{labelled} labelled rows ({int(summary['true_missing'])} missing)"
            )
        else:
            text += "\ntrue label inside the set: unknown (no labelled rows)"
    return text
