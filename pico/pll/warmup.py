"""Warm-up lengths that fit the run and the candidate sets: the paper's epochs, enough steps
where the candidates are ambiguous, never the whole run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class Warmup:
    """How long a method trains before its label disambiguation starts.

    The warm-up lasts ``max(epochs * steps_per_epoch, min(floor, share * total_steps))``
    optimizer steps, with ``floor = min_steps * min(1, ambiguity / full_ambiguity)``: at
    least the paper's ``epochs``; at least ``floor`` steps, so that a small data set with
    few steps per epoch still trains its classifier before its predictions start moving the
    targets; but that floor never takes more than ``share`` of the run, so no run spends all
    its steps in warm-up. The floor is there because early wrong targets lock in, and that
    risk grows with the candidate sets' :func:`candidate_ambiguity`: sets at or above
    ``full_ambiguity`` (uniform q=0.3) get all of ``min_steps``, nearly unambiguous ones
    (a real-world set of 1.6 candidates among 90 classes) almost none;
    ``full_ambiguity=0`` keeps the whole floor whatever the candidates.
    """

    epochs: float = 1.0
    min_steps: int = 600
    share: float = 0.3
    full_ambiguity: float = 0.3
    #: the training candidates' :func:`candidate_ambiguity` (1: the full floor)
    ambiguity: float = 1.0
    #: whether :meth:`check` has run (it warns once per run)
    checked: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.min_steps < 0:
            raise ValueError(
                f"method.warmup_epochs={self.epochs} and method.warmup_min_steps="
                f"{self.min_steps} must be >= 0"
            )
        if not self.full_ambiguity >= 0:
            raise ValueError(
                f"method.warmup_full_ambiguity={self.full_ambiguity} must be >= 0 (the "
                "candidate ambiguity at which the step floor is all of warmup_min_steps; "
                "0: always all of it)"
            )
        if not 0 <= self.share <= 1:
            raise ValueError(
                f"method.warmup_share={self.share} must lie in [0, 1] (the largest share "
                "of the run the step floor may take)"
            )

    @classmethod
    def for_candidates(
        cls, candidates: Tensor, epochs: float, min_steps: int, share: float, full_ambiguity: float
    ) -> Warmup:
        """The warm-up of a method training on ``candidates`` (their
        :func:`candidate_ambiguity` scales the step floor)."""
        return cls(epochs, min_steps, share, full_ambiguity, candidate_ambiguity(candidates))

    def steps(self, steps_per_epoch: int, total_steps: int) -> int:
        """Optimizer steps of warm-up in a run of ``total_steps`` steps."""
        scale = min(1.0, self.ambiguity / self.full_ambiguity) if self.full_ambiguity else 1.0
        scaled = round(self.min_steps * scale)
        floor = min(scaled, int(self.share * total_steps))
        return max(round(self.epochs * steps_per_epoch), floor)

    def check(self, method: str, steps_per_epoch: int, total_steps: int) -> int:
        """:meth:`steps`, with a warning, on the first call only, when warm-up takes half of
        the run or more (methods call it from every ``on_epoch_start``)."""
        steps = self.steps(steps_per_epoch, total_steps)
        if not self.checked and total_steps > 0 and steps >= total_steps / 2:
            log.warning(
                "%s stays in warm-up for %d of the run's %d optimizer steps (%.0f%%): label "
                "disambiguation %s. Lower method.warmup_epochs=%g (in epochs of %d steps) or "
                "method.warmup_min_steps=%d / method.warmup_share=%g, or train longer "
                "(candidate ambiguity %.3f)",
                method,
                steps,
                total_steps,
                100 * min(steps / total_steps, 1),
                "never starts" if steps >= total_steps else "has less than half the run",
                self.epochs,
                steps_per_epoch,
                self.min_steps,
                self.share,
                self.ambiguity,
            )
        self.checked = True
        return steps


def candidate_ambiguity(candidates: Tensor) -> float:
    """Mean share of the wrong classes that are candidates, ``mean_i (|S_i| - 1) / (C - 1)``:
    about q for uniform candidates, 0 for singletons, 1 when every class is a candidate."""
    classes = candidates.shape[1]
    if classes < 2 or len(candidates) == 0:
        return 0.0
    sizes = candidates.bool().sum(dim=1).float()
    return float(((sizes - 1).clamp_min(0) / (classes - 1)).mean())
