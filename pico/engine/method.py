"""The method protocol: the one contract between the training engine and any method.

A method (PiCO, MoCo, SimCLR, ...) is an ``nn.Module`` that owns its networks and
buffers, turns a batch of augmented views into losses, and says what happens after
each optimizer step. The engine knows nothing else about it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pico.core.distributed import get_world_size
from pico.core.ema import ema_step_, momentum_tensors

#: key of a parameter group returned by :meth:`Method.optim_parameters` whose learning
#: rate the trainer's schedule (:func:`~pico.engine.optim.warmup_cosine`) leaves at its
#: base value: no warm-up, no decay
FIXED_LR = "fixed_lr"
#: constructor arguments every method takes from the engine rather than from its config
ENGINE_ARGUMENTS = ("backbone", "task")


@dataclass
class Batch:
    """One training batch on the training device.

    ``views`` holds one augmented tensor per name in ``Method.views`` (same order);
    ``index`` are the rows of the train split (partial-label methods look their candidate
    sets up by it); ``target`` the true labels (-1 where unknown), needed only by
    :class:`~pico.pll.supervised.Supervised`: partial-label methods never read it.
    """

    index: Tensor
    views: list[Tensor]
    target: Tensor | None = None


@dataclass
class StepInfo:
    """Where training stands: 0-based epoch and global optimizer step."""

    epoch: int
    step: int
    epochs: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run."""
        return self.epochs * self.steps_per_epoch


@dataclass
class TaskInfo:
    """What a method may know about its training data when it is built.

    ``train_candidates`` is the (N, C) bool candidate matrix of the train split, which
    partial-label methods need; ``train_targets`` are true labels (-1 where unknown), for
    the supervised reference only. ``input_shape`` is one example's shape (``(C, H, W)``
    or ``(D,)``), used to measure the feature width of a backbone without an ``out_dim``
    attribute (:func:`~pico.models.dims.feature_dim`); ``kind`` is ``"image"`` or
    ``"tabular"``. ``mean`` and ``std`` are the per-channel normalisation (0-1 scale) the
    inputs a method receives have been through, ``x = (raw - mean) / std``; empty when
    they have not (CMC undoes it to convert RGB to L*a*b*). ``make_backbone`` builds
    another backbone of the run's model for inputs of a given shape (one example's), for
    methods with one encoder per view of a different shape (CMC); the engine sets it.
    From Python, a partial-label task is just::

        TaskInfo(num_classes=10, num_train=len(candidates), train_candidates=candidates)
    """

    num_classes: int
    num_train: int
    input_shape: tuple[int, ...] | None = None
    kind: str | None = None
    train_targets: Tensor | None = None
    train_candidates: Tensor | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    make_backbone: Callable[[tuple[int, ...]], nn.Module] | None = None

    def __post_init__(self) -> None:
        shape = (self.num_train, self.num_classes)
        if self.train_candidates is not None and tuple(self.train_candidates.shape) != shape:
            raise ValueError(
                f"TaskInfo.train_candidates has shape {tuple(self.train_candidates.shape)}, "
                f"but num_train={self.num_train} and num_classes={self.num_classes} ask for "
                f"{shape}: one row of candidate flags per training example"
            )
        if self.train_targets is not None and len(self.train_targets) != self.num_train:
            raise ValueError(
                f"TaskInfo.train_targets has {len(self.train_targets)} labels, but "
                f"num_train={self.num_train}: one label (-1: unknown) per training example"
            )


class Method(nn.Module):
    """Base class of every training method.

    Subclasses set ``views`` (names of augmentation recipes, one per view they need),
    implement :meth:`training_step`, and override the hooks they need. Everything a
    method must carry across a checkpoint lives in parameters or registered buffers.
    Momentum (target) encoders are declared once: :meth:`momentum_pairs` names the
    (online, target) pairs and :meth:`momentum` the coefficient, and the default
    :meth:`after_optimizer_step` moves them after every optimizer step.

    A training loop of your own (outside :class:`~pico.engine.trainer.Trainer`) must call
    the hooks the engine calls, or schedules and momentum encoders stand still::

        for epoch in range(epochs):
            method.on_epoch_start(StepInfo(epoch, step, epochs, steps_per_epoch))
            for index, views in batches:  # one tensor per name in method.views
                info = StepInfo(epoch, step, epochs, steps_per_epoch)
                loss = method.training_step(Batch(index, views), info)["loss"]
                optimizer.zero_grad()
                loss.backward()
                method.before_optimizer_step(info)
                optimizer.step()
                method.after_optimizer_step(info)
                step += 1

    A method with a :meth:`weight_decay_factor` (DINO) also needs it applied before each
    optimizer step, ``scale_weight_decay_(optimizer, factor)``
    (:func:`~pico.engine.optim.scale_weight_decay_`), as the trainer does.
    """

    views: tuple[str, ...] = ("weak",)
    #: whether the method trains on candidate sets (enables partial-label metrics)
    uses_candidates: bool = False
    #: name of the method function holding a step's tensor work (encoders and losses),
    #: compiled as one graph by :meth:`compile_parts`; it must not read ``StepInfo``
    #: values that change every step. ``None``: only the child modules are compiled.
    step_graph: str | None = None
    #: the online encoder, set by every subclass (see :meth:`backbone_module`)
    backbone: nn.Module
    #: constructor arguments naming files that only training reads (Distill's
    #: ``teacher``): a training run must set them; a run rebuilt from its checkpoint
    #: (``pico-eval``, ``pico-export``, ``pico-predict``) passes ``None``, so it does not
    #: need those files
    training_files: tuple[str, ...] = ()

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        """Losses for one batch; the key ``"loss"`` is minimised, the rest are logged."""
        raise NotImplementedError

    def on_epoch_start(self, info: StepInfo) -> None:
        """Called before the first step of each epoch (schedules that move per epoch, e.g.
        PiCO's φ); a loop of your own must call it too."""

    def momentum_update_(
        self, pairs: Sequence[tuple[nn.Module, nn.Module]], momentum: float
    ) -> None:
        """:func:`~pico.core.ema.ema_update_` of the (online, target) ``pairs``, with their
        tensors listed on the first call and kept: walking and checking a ResNet's modules
        costs about a millisecond of host time per step. The lists are dropped, and made
        again, whenever the method is moved or converted (``.to``, ``.cuda``, ...) or
        switched between training and evaluation (every epoch)."""
        key = tuple(id(module) for pair in pairs for module in pair)
        cache = self.__dict__.setdefault("_momentum_tensors", {})
        if key not in cache:
            cache[key] = momentum_tensors(pairs)
        ema_step_(cache[key], momentum)

    def train(self, mode: bool = True) -> Method:
        self.__dict__.pop("_momentum_tensors", None)
        return super().train(mode)

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Method:
        self.__dict__.pop("_momentum_tensors", None)
        return super()._apply(fn, recurse)

    def compile_parts(self, mode: str = "default") -> None:
        """``torch.compile`` the parts of the step worth compiling (``trainer.compile``):
        every child module (encoders, heads; evaluation runs them) and, in one process,
        the :attr:`step_graph` function as one graph, so a step runs one forward and one
        backward graph (CUDA-graph modes replay each with one launch). Under torchrun
        the step stays split at its gathers, which are collectives. Module names and
        checkpoints stay as they are."""
        for child in self.children():
            child.compile(mode=mode)
        if self.step_graph is not None and get_world_size() == 1:
            step = getattr(type(self), self.step_graph).__get__(self)
            setattr(self, self.step_graph, torch.compile(step, mode=mode))

    def before_optimizer_step(self, info: StepInfo) -> None:
        """Called after ``backward`` and before each optimizer step, e.g. to drop the
        gradients of a layer frozen for now (``p.grad = None``: the optimizer then skips
        it, weight decay and momentum included)."""

    def weight_decay_factor(self, info: StepInfo) -> float | None:
        """Factor on the optimizer's configured weight decay for the step ``info.step``
        (DINO's cosine schedule), or ``None`` to leave the weight decay alone; the trainer
        applies it with :func:`~pico.engine.optim.scale_weight_decay_` before each
        optimizer step."""
        return None

    def momentum_pairs(self) -> Sequence[tuple[nn.Module, nn.Module]]:
        """The (online, target) module pairs of the method's momentum encoders, which the
        default :meth:`after_optimizer_step` moves by EMA with :meth:`momentum`; none by
        default. Each target is a :func:`~pico.core.ema.momentum_copy` of its online
        module."""
        return ()

    def momentum(self, info: StepInfo) -> float:
        """EMA coefficient of the :meth:`momentum_pairs` update after step ``info.step``
        (``target <- m * target + (1 - m) * online``); a method declaring pairs defines it."""
        raise NotImplementedError(
            f"{type(self).__name__} declares momentum_pairs() but no momentum(info): define "
            "it to give the EMA coefficient of each step"
        )

    def after_optimizer_step(self, info: StepInfo) -> None:
        """Called after each optimizer step (momentum encoders, memory banks); a loop of
        your own must call it too, or the key encoders never follow the online ones.

        By default it moves the declared :meth:`momentum_pairs` with
        :meth:`momentum_update_` at :meth:`momentum`; a method overriding it calls
        ``super().after_optimizer_step(info)`` to keep that update."""
        pairs = self.momentum_pairs()
        if pairs:
            self.momentum_update_(pairs, self.momentum(info))

    def backbone_module(self) -> nn.Module:
        """The encoder whose pooled features are evaluated (kNN, linear probe, export).

        By convention every method keeps its online encoder in ``self.backbone``; this is
        what ``model.init_from`` and ``pico-export`` read from a checkpoint.
        """
        return self.backbone

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """Backbone features of normalised inputs (no augmentation)."""
        return self.backbone_module()(x)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor | None:
        """Classifier-head logits, or ``None`` for methods without a classifier."""
        return None

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor | None:
        """L2-normalised embeddings in the prototype space, or ``None``."""
        return None

    def knn_bank(self) -> Tensor | None:
        """(N, D) training-set embeddings in the :meth:`embed` space kept by the method
        (e.g. a memory bank), used by the kNN monitor instead of recomputing features."""
        return None

    def class_prototypes(self) -> Tensor | None:
        """(C, D) L2-normalised class prototypes, or ``None``."""
        return None

    def train_label_estimate(self) -> Tensor | None:
        """Current disambiguated label of every training row, or ``None``."""
        return None

    def optim_parameters(self) -> list[nn.Parameter] | list[dict[str, Any]]:
        """Parameters the optimizer updates (default: every trainable parameter).

        A method may return parameter groups instead, as torch optimizers take them
        (dicts with ``"params"``); a group with ``"fixed_lr": True``
        (:data:`FIXED_LR`) keeps the base learning rate while the
        trainer's schedule warms up and decays the others (SimSiam's predictor).
        """
        return [p for p in self.parameters() if p.requires_grad]


def constructor_parameters(cls: type) -> list[inspect.Parameter]:
    """The hyperparameters of a method class: the arguments of its constructor after
    ``backbone`` and ``task``, in signature order.

    A constructor that hands ``**kwargs`` on to its base class (``PiCOPlus`` takes PiCO's
    arguments that way) contributes its own arguments first, then the base's, a name
    taken once (the subclass's default wins). ``self``, ``*args`` and ``**kwargs``
    themselves are left out.
    """
    seen: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        for param in params:
            skip = param.name == "self" or param.name in ENGINE_ARGUMENTS
            if skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            seen.setdefault(param.name, param)
        if all(param.kind is not param.VAR_KEYWORD for param in params):
            break
    return list(seen.values())


def constructor_defaults(cls: type) -> dict[str, Any]:
    """Every hyperparameter of a method class with a default, and that default: the
    values ``cls(backbone, task)`` builds with, which are also the values of the command
    line's ``method=NAME`` unless ``configs/method/NAME.yaml`` says otherwise
    (:func:`constructor_parameters` says which arguments count)::

        >>> constructor_defaults(pico.PiCO)["temperature"]
        0.07
    """
    return {
        param.name: param.default
        for param in constructor_parameters(cls)
        if param.default is not param.empty
    }
