"""PiCO: contrastive label disambiguation for partial-label learning (Wang et al., ICLR 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pico.core.distributed import gather_no_grad, gather_with_grad, get_rank
from pico.core.losses import sup_con
from pico.core.momentum_encoder import MomentumEncoder
from pico.core.queue import FeatureQueue, queue_size_for
from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.models.heads import mlp_head
from pico.pll.candidates_buffer import (
    CandidateRows,
    uniform_confidence,
    weighted_cross_entropy,
)
from pico.pll.disambiguation import phi_schedule, prototype_labels, update_confidence_
from pico.pll.prototypes import update_prototypes
from pico.pll.supervised import ClassifierMethod
from pico.pll.warmup import Warmup


@dataclass
class ContrastSet:
    """The contrast set ``[q; k; queue]`` of a step, seen from this rank's anchors.

    ``features`` stacks the queries and keys of the global batch (``batch`` rows each,
    in rank order) and the queue; ``rows`` are the positions of this rank's queries in it,
    so anchor ``i`` has its own key at ``rows[i] + batch``. With one process ``rows`` is
    ``0..B-1``; under DDP the same layout makes every rank's loss a slice of the
    single-process loss.
    """

    features: Tensor
    valid: Tensor
    rows: Tensor
    batch: int

    def _mask(self, columns: Tensor) -> Tensor:
        # a comparison, not an indexed write: writing a Python scalar through an index
        # copies it from the host, which synchronises on CUDA
        positions = torch.arange(len(self.features), device=columns.device)
        return columns[:, None] == positions[None, :]

    def own_query(self) -> Tensor:
        """(b, M) mask of each anchor's own entry, excluded from its denominator."""
        return self._mask(self.rows)

    def own_key(self) -> Tensor:
        """(b, M) mask of each anchor's own key, its positive in warm-up."""
        return self._mask(self.rows + self.batch)

    def batch_entries(self) -> Tensor:
        """(b, M) mask of the global batch's queries and keys (every column before the
        queue)."""
        positions = torch.arange(len(self.features), device=self.rows.device)
        return (positions < 2 * self.batch)[None, :].expand(len(self.rows), -1)


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
    """

    views = ("weak", "strong")
    uses_candidates = True
    #: the name in ``method=...``, for error messages
    method_name = "pico"
    #: extra queue columns stored beside each key (name, dtype)
    queue_columns: tuple[tuple[str, torch.dtype], ...] = (("label", torch.long),)
    step_graph: str | None = "step_tensors"
    # buffers (init_candidate_rows / register_buffer in __init__), declared for the type checker
    confidence: Tensor
    prototypes: Tensor
    phi: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        proj_dim: int = 128,
        proj_hidden: int | None = None,
        queue_size: int = 8192,
        key_momentum: float = 0.999,
        temperature: float = 0.07,
        contrastive_weight: float = 0.5,
        proto_momentum: float = 0.99,
        phi_start: float = 0.95,
        phi_end: float = 0.8,
        warmup_epochs: float = 1.0,
        warmup_min_steps: int = 600,
        warmup_share: float = 0.3,
        warmup_full_ambiguity: float = 0.3,
        warmup_batch_negatives: bool = False,
    ) -> None:
        super().__init__(backbone, task)
        candidates = self.init_candidate_rows(
            task, self.method_name, "confidence", uniform_confidence
        )
        width = self.classifier.in_features
        self.init_momentum_encoder(
            self.backbone,
            mlp_head(width, proj_hidden or width, proj_dim, num_layers=2),
            key_momentum,
            FeatureQueue(
                queue_size_for(queue_size, task.num_train),
                proj_dim,
                columns=dict(self.queue_columns),
            ),
        )
        self.register_buffer("prototypes", torch.zeros(task.num_classes, proj_dim))
        self.register_buffer("phi", torch.tensor(phi_start))
        self.temperature = temperature
        self.contrastive_weight = contrastive_weight
        self.proto_momentum = proto_momentum
        self.phi_range = (phi_start, phi_end)
        self.warmup = Warmup.for_candidates(
            candidates, warmup_epochs, warmup_min_steps, warmup_share, warmup_full_ambiguity
        )
        self.warmup_batch_negatives = warmup_batch_negatives

    def warmup_steps(self, info: StepInfo) -> int:
        """Optimizer steps of warm-up for this run."""
        return self.warmup.steps(info.steps_per_epoch, info.total_steps)

    def on_epoch_start(self, info: StepInfo) -> None:
        self.warmup.check(self.method_name, info.steps_per_epoch, info.total_steps)
        self.phi.fill_(phi_schedule(info.epoch, info.epochs, *self.phi_range))

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
        """The tensor work of a step: :meth:`encode`, then :meth:`losses` (the
        :attr:`step_graph`: ``warmup`` is a bool, so the step compiles to two graphs)."""
        logits, q, k = self.encode(weak, strong)
        return self.losses(index, logits, q, k, warmup)

    def losses(
        self, index: Tensor, logits: Tensor, q: Tensor, k: Tensor, warmup: bool
    ) -> dict[str, Tensor]:
        """The step after the encoders: pseudo-labels, (after ``warmup``) confidence and
        prototype updates, the contrastive and classification losses, the enqueue."""
        candidates = self.candidates[index]
        with torch.no_grad():
            probs = logits.detach().float().softmax(dim=1)
            pseudo = (probs * candidates).argmax(dim=1)
            q_all, pseudo_all = gather_no_grad(q.detach().float()), gather_no_grad(pseudo)
            if not warmup:
                proto_label = prototype_labels(q.detach(), self.prototypes, candidates)
                update_confidence_(
                    self.confidence,
                    gather_no_grad(index),
                    gather_no_grad(proto_label),
                    self.phi,
                )
                self.prototypes.copy_(
                    update_prototypes(self.prototypes, q_all, pseudo_all, self.proto_momentum)
                )
        k_all = gather_no_grad(k.float())
        loss_cont = self._contrastive(q, k_all, pseudo_all, warmup)
        loss_cls = weighted_cross_entropy(logits, self.confidence[index])
        self.queue.enqueue(k_all, label=pseudo_all)
        return {
            "loss": loss_cls + self.contrastive_weight * loss_cont,
            "cls": loss_cls.detach(),
            "cont": loss_cont.detach(),
        }

    def contrast_set(self, q: Tensor, k_all: Tensor) -> ContrastSet:
        """``[q; k; queue]`` over the global batch (``k_all``: the gathered keys): queries
        gathered with their gradient path, the queue's filled slots marked valid."""
        q_all = gather_with_grad(q)
        features = torch.cat([q_all, k_all.to(q.dtype), self.queue.features.to(q.dtype)])
        batch = len(q_all)
        valid = torch.cat(
            [torch.ones(2 * batch, dtype=torch.bool, device=q.device), self.queue.valid_mask()]
        )
        rows = get_rank() * len(q) + torch.arange(len(q), device=q.device)
        return ContrastSet(features, valid, rows, batch)

    def instance_contrastive(self, q: Tensor, contrast: ContrastSet) -> Tensor:
        """Warm-up loss: MoCo InfoNCE, the positive the row's own key and the negatives the
        queue's filled slots, as in the official code; with ``warmup_batch_negatives`` the
        other queries and keys of the batch are negatives too."""
        own_key = contrast.own_key()
        if self.warmup_batch_negatives:
            exclude = contrast.own_query()
        else:
            exclude = contrast.batch_entries() & ~own_key
        return sup_con(q, contrast.features, own_key, self.temperature, exclude, contrast.valid)

    def _contrastive(self, q: Tensor, k_all: Tensor, pseudo_all: Tensor, warmup: bool) -> Tensor:
        """SupCon over ``[q; k; queue]``: pseudo-label positives, or own key in ``warmup``."""
        contrast = self.contrast_set(q, k_all)
        if warmup:
            return self.instance_contrastive(q, contrast)
        labels = torch.cat([pseudo_all, pseudo_all, self.queue.column("label")])
        positive = pseudo_all[contrast.rows, None] == labels[None, :]
        return sup_con(
            q, contrast.features, positive, self.temperature, contrast.own_query(), contrast.valid
        )

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        return self.query(x)

    def class_prototypes(self) -> Tensor:
        return self.prototypes

    def train_label_estimate(self) -> Tensor:
        return self.confidence.argmax(dim=1)
