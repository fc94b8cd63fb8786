"""Self-distillation from a trained classifier (SimCLR v2's third step, Chen et al. 2020,
"Big Self-Supervised Models are Strong Semi-Supervised Learners")."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.pll.candidates_buffer import require_candidates, soft_cross_entropy, softmax_within
from pico.pll.supervised import ClassifierMethod


def teacher_targets(
    teacher_logits: Tensor, temperature: float = 1.0, candidates: Tensor | None = None
) -> Tensor:
    """The teacher's softmax at ``temperature``: over all classes, or over each row's
    ``candidates`` (renormalised there, zero elsewhere) where they are given."""
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    scaled = teacher_logits.detach().float() / temperature
    if candidates is None:
        return scaled.softmax(dim=1)
    return softmax_within(scaled, candidates)


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    candidates: Tensor | None = None,
) -> Tensor:
    """SimCLR v2's distillation loss, the mean over rows of
    ``-sum_y P_T(y | x) log P_S(y | x)`` with ``P = softmax(logits / temperature)``.

    ``candidates`` ((B, C) bool, optional) restricts the teacher's distribution to each
    row's candidate set, renormalised (:func:`teacher_targets`); the student's softmax
    stays over all classes, so it learns to put no mass outside the set. The teacher gets
    no gradient. The cross-entropy differs from ``KL(P_T || P_S)`` by the teacher's
    entropy, a constant: same gradient. No ``temperature**2`` factor (the paper's
    equation has none).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    targets = teacher_targets(teacher_logits, temperature, candidates)
    return soft_cross_entropy(student_logits.float() / temperature, targets).mean()


class Distill(ClassifierMethod):
    """A student (backbone + linear classifier) trained on a frozen teacher's
    temperature-softened predictions, with no labels (:func:`distill_loss`).

    ``teacher`` is a pico-train checkpoint of a run with a classifier head (PRODEN, PiCO,
    ...; e.g. one fine-tuned from SimCLR v2's projector) or a pico-export state dict of
    one (:func:`~pico.export.load_classifier`). Teacher and student see the same weak
    view; the teacher runs in eval mode without gradients. Where the data has candidate
    sets, each row's target is the teacher's distribution restricted to its candidates,
    renormalised; without them, the full distribution. The teacher sees the student's
    normalised views, so it must come from a run on the same data (the same
    normalisation, channels and image size).

    The teacher is not part of the method's state: checkpoints hold the student, and
    ``teacher_digest``, a digest of the teacher's weights. A resume reloads the teacher
    from ``teacher`` and refuses one whose weights differ, so a resumed run ends where the
    uninterrupted one does. A run rebuilt for evaluation or export is built without it
    (``teacher=None``, :attr:`~pico.engine.method.Method.training_files`).
    """

    views = ("weak",)
    training_files = ("teacher",)
    teacher_digest: Tensor
    candidates: Tensor  # registered where the data has candidate sets

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        teacher: str | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(backbone, task)
        if not temperature > 0:
            raise ValueError(f"Distill temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.teacher_path = teacher
        self.uses_candidates = task.train_candidates is not None
        if self.uses_candidates:
            self.register_buffer("candidates", require_candidates(task, "distill"))
        digest = torch.zeros(16, dtype=torch.uint8)
        network: nn.Module | None = None
        if teacher is not None:
            network, hexdigest = _load_teacher(teacher, task)
            digest = torch.tensor(list(bytes.fromhex(hexdigest)), dtype=torch.uint8)
        # a plain attribute, not a submodule: not in the state dict nor the optimizer
        self.__dict__["_teacher"] = network
        self.register_buffer("teacher_digest", digest)

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen teacher network (``None`` in a run rebuilt for evaluation)."""
        return self.__dict__["_teacher"]

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Distill:
        if self.teacher is not None:  # moves and casts reach the teacher too
            self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)  # type: ignore[return-value]

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load a student's state; with a teacher, refuse a checkpoint written with
        another teacher (its ``teacher_digest`` differs)."""
        stored = state_dict.get("teacher_digest")
        if (
            self.teacher is not None
            and stored is not None
            and not torch.equal(stored.cpu(), self.teacher_digest.cpu())
        ):
            raise ValueError(
                f"method.teacher={self.teacher_path} holds other weights than the teacher "
                "this checkpoint was trained with; resume with that teacher's checkpoint"
            )
        return super().load_state_dict(state_dict, strict, assign)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        if self.teacher is None:
            raise ValueError("Distill trains with a teacher: pass teacher=CHECKPOINT")
        x = batch.views[0]
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        logits = self.classifier(self.backbone(x))
        candidates = self.candidates[batch.index] if self.uses_candidates else None
        return {"loss": distill_loss(logits, teacher_logits, self.temperature, candidates)}


def _load_teacher(path: str, task: TaskInfo) -> tuple[nn.Module, str]:
    """The frozen teacher of ``path`` and its digest, checked against the task."""
    from pico.export import load_classifier

    if task.input_shape is None or task.kind is None:
        raise ValueError("Distill needs TaskInfo.input_shape and kind to rebuild its teacher")
    network, digest = load_classifier(path, task.input_shape, task.kind)
    head = network[-1]
    assert isinstance(head, nn.Linear)  # load_classifier ends with the linear head
    if head.out_features != task.num_classes:
        raise ValueError(
            f"the teacher {path} predicts {head.out_features} classes, but this data has "
            f"{task.num_classes}; distil on the data the teacher was trained on"
        )
    return network, digest
