"""PiCO: contrastive label disambiguation for partial-label learning (Wang et al., ICLR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.ema import run_momentum
from pico.core.momentum_encoder import MomentumEncoder
from pico.core.queue import FeatureQueue
from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.models.heads import mlp_head
from pico.pll.candidates_buffer import CandidateRows, require_candidates
from pico.pll.disambiguation_loss import ContrastiveDisambiguation
from pico.pll.supervised import ClassifierMethod
from pico.pll.warmup import Warmup


class PiCO(MomentumEncoder, CandidateRows, ClassifierMethod):
    """MoCo with candidate-aware pseudo-labels, class prototypes and label disambiguation.

    Per step (docs/design.md, "PiCO step"): classifier pseudo-labels restricted to the candidates;
    after warm-up, prototype labels update the confidence matrix (moving average φ) and
    the batch updates the momentum prototypes; the contrastive loss is SupCon over
    ``[q; k; queue]`` with pseudo-label positives (warm-up: instance positives only);
    the classifier learns from the confidence matrix.

    Warm-up (:class:`~pico.pll.warmup.Warmup`) lasts the paper's ``warmup_epochs``, and at
    least ``warmup_min_steps`` optimizer steps (scaled down for candidate sets less
    ambiguous than ``warmup_full_ambiguity``) unless that floor would take more than
    ``warmup_share`` of the run: small data sets with ambiguous candidates and few steps
    per epoch get a long enough warm-up, and no run stays in warm-up throughout. Warm-up
    gates both the prototype and the confidence updates; its contrastive loss is MoCo's
    InfoNCE (positive: the row's own key; negatives: the queue), or with
    ``warmup_batch_negatives`` also the batch's other queries and keys.

    Everything after the encoders is :attr:`disambiguation`, a
    :class:`~pico.pll.disambiguation_loss.ContrastiveDisambiguation` whose state is this
    method's buffers (``candidates``, ``confidence``, ``prototypes``, ``phi``, ``queue``).
    """

    views = ("weak", "strong")
    uses_candidates = True
    #: the name in ``method=...``, for error messages
    method_name = "pico"
    #: extra queue columns stored beside each key (name, dtype)
    queue_columns: tuple[tuple[str, torch.dtype], ...] = (("label", torch.long),)
    step_graph: str | None = "step_tensors"
    # buffers and queue (registered by the disambiguation loss), declared for the type checker
    confidence: Tensor
    prototypes: Tensor
    phi: Tensor
    queue: FeatureQueue
    #: the loss of every step after the encoders, whose state is this method's buffers
    disambiguation: ContrastiveDisambiguation

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_dim: int = 128,
        proj_hidden: int | None = None,
        queue_size: int = 8192,
        key_momentum: float = 0.999,
        key_lag_share: float | None = 0.5,
        temperature: float = 0.07,
        contrastive_weight: float = 0.5,
        proto_momentum: float = 0.99,
        phi_start: float = 0.95,
        phi_end: float = 0.8,
        warmup_epochs: float = 1,
        warmup_min_steps: int = 600,
        warmup_share: float = 0.3,
        warmup_full_ambiguity: float = 0.3,
        warmup_batch_negatives: bool = False,
    ) -> None:
        super().__init__(backbone, task)
        if key_lag_share is not None and not 0 < key_lag_share <= 1:
            raise ValueError(
                f"key_lag_share must lie in (0, 1] or be null (the paper's constant "
                f"key_momentum), got {key_lag_share}"
            )
        self.key_lag_share = key_lag_share
        candidates = require_candidates(task, self.method_name)
        width = self.classifier.in_features
        self.init_momentum_encoder(
            self.backbone,
            mlp_head(width, proj_hidden or width, proj_dim, num_layers=2),
            key_momentum,
        )
        loss = ContrastiveDisambiguation(
            candidates,
            dim=proj_dim,
            queue_size=queue_size,
            temperature=temperature,
            contrastive_weight=contrastive_weight,
            proto_momentum=proto_momentum,
            phi_start=phi_start,
            phi_end=phi_end,
            warmup_batch_negatives=warmup_batch_negatives,
            queue_columns=dict(self.queue_columns),
            owner=self,
        )
        # the loss has registered its buffers and queue on PiCO (the checkpoint keys they
        # always had); it stays out of the module tree, so compile_parts leaves it to
        # step_graph and the state dict holds each tensor once
        object.__setattr__(self, "disambiguation", loss)
        self.row_state_name = "confidence"  # CandidateRows: the loss's confidence matrix
        self.warmup = Warmup.for_candidates(
            candidates, warmup_epochs, warmup_min_steps, warmup_share, warmup_full_ambiguity
        )

    def momentum(self, info: StepInfo) -> float:
        """The key encoder's EMA coefficient: ``key_momentum``, lowered in short runs so that
        the key encoder trails by at most ``key_lag_share`` of the run
        (:func:`~pico.core.ema.run_momentum`; ``None``: the paper's constant)."""
        return run_momentum(self.key_momentum, info.total_steps, self.key_lag_share)

    def warmup_steps(self, info: StepInfo) -> int:
        """Optimizer steps of warm-up for this run."""
        return self.warmup.steps(info.steps_per_epoch, info.total_steps)

    def on_epoch_start(self, info: StepInfo) -> None:
        self.warmup.check(self.method_name, info.steps_per_epoch, info.total_steps)
        self.disambiguation.set_epoch(info.epoch, info.epochs)

    def in_warmup(self, info: StepInfo) -> bool:
        """Whether this step is still in warm-up (no prototype or confidence updates)."""
        return info.step < self.warmup_steps(info)

    def encode(self, weak: Tensor, strong: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Classifier logits and normalised query ``q`` of the weak view; keys of the strong
        view from the momentum encoder (no gradient)."""
        features = self.backbone(weak)
        logits = self.classifier(features)
        q = F.normalize(self.head(features), dim=1)
        return logits, q, self.key(strong)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        weak, strong = batch.views
        return self.step_tensors(batch.index, weak, strong, self.in_warmup(info))

    def step_tensors(
        self, index: Tensor, weak: Tensor, strong: Tensor, warmup: bool
    ) -> dict[str, Tensor]:
        """The tensor work of a step: :meth:`encode`, then the :attr:`disambiguation` loss
        (the :attr:`step_graph`: ``warmup`` is a bool, so the step compiles to two graphs)."""
        logits, q, k = self.encode(weak, strong)
        return self.disambiguation(index, logits, q, k, warmup)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        return self.query(x)

    def class_prototypes(self) -> Tensor:
        return self.prototypes

    def train_label_estimate(self) -> Tensor:
        return self.disambiguation.label_estimate()
