"""PiCO's contrastive label disambiguation as a loss module, usable in any training loop.

:class:`ContrastiveDisambiguation` keeps the state of the disambiguation (candidate
matrix, confidence matrix, class prototypes, φ and a queue of past keys with their
pseudo-labels) and, given a step's classifier logits, queries and keys, updates that
state and returns the loss terms (docs/design.md, "The disambiguation loss").
:class:`~pico.pll.PiCO` is its encoders and warm-up rule around this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch import Tensor, nn

from pico.core.distributed import gather_no_grad, gather_with_grad, get_rank
from pico.core.losses import sup_con
from pico.core.queue import FeatureQueue, queue_size_for
from pico.pll.candidates_buffer import (
    check_nonempty_rows,
    uniform_confidence,
    weighted_cross_entropy,
)
from pico.pll.disambiguation import phi_schedule, prototype_labels, update_confidence_
from pico.pll.prototypes import update_prototypes


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


class DisambiguationState(Protocol):
    """The state :class:`ContrastiveDisambiguation` reads and writes, held by its owner."""

    candidates: Tensor
    confidence: Tensor
    prototypes: Tensor
    phi: Tensor
    queue: FeatureQueue


class ContrastiveDisambiguation(nn.Module):
    """PiCO's loss: candidate-restricted pseudo-labels, prototype-driven confidences and
    SupCon with pseudo-label positives over ``[q; k; queue]``.

    Per call, on the rows ``index`` of the training split (docs/design.md, "PiCO step"):

    1. pseudo-labels ``argmax(softmax(logits) * Y)``, restricted to each row's candidates;
    2. unless ``warmup``: each row's prototype label (the candidate whose prototype is
       closest to ``q``, prototypes as before the call) moves its confidence row,
       ``S_i <- φ S_i + (1-φ) onehot``, then the prototypes move towards the queries of
       their pseudo-label class (momentum ``proto_momentum``);
    3. the contrastive loss: in warm-up MoCo's InfoNCE (positive the row's own key,
       negatives the queue, and with ``warmup_batch_negatives`` the batch's other queries
       and keys); afterwards every entry with the anchor's pseudo-label is a positive;
    4. the cross-entropy of ``logits`` against the rows' confidences; the keys enter the
       queue with their pseudo-labels.

    It returns ``{"loss": cls + contrastive_weight * cont, "cls", "cont"}`` (the last
    two detached, for logging). ``q`` and ``k`` are L2-normalised ``(B, dim)`` queries
    (with gradient) and keys (without); ``set_epoch`` moves φ linearly from ``phi_start``
    to ``phi_end`` over the run. Under torchrun the rows, queries, pseudo-labels and keys
    of every process are gathered before any update, so each process holds the same
    state. In a loop of your own::

        criterion = ContrastiveDisambiguation(candidates, dim=128)
        for epoch in range(epochs):
            criterion.set_epoch(epoch, epochs)
            for index, weak, strong in batches:
                features = encoder(weak)
                logits, q = classifier(features), F.normalize(projector(features), dim=1)
                with torch.no_grad():
                    k = F.normalize(key_projector(key_encoder(strong)), dim=1)
                loss = criterion(index, logits, q, k, warmup=epoch < 1)["loss"]

    The state lives in buffers (``candidates``, ``confidence``, ``prototypes``, ``phi``)
    and a :class:`~pico.core.queue.FeatureQueue` ``queue`` with a ``label`` column, so it
    is checkpointed with the module. ``owner`` registers them on another module instead
    (PiCO passes itself, so its checkpoints keep the keys they always had); the loss then
    holds no tensor of its own and :attr:`state` is the owner.
    """

    candidates: Tensor
    confidence: Tensor
    prototypes: Tensor
    phi: Tensor
    queue: FeatureQueue
    _owner: nn.Module | None

    def __init__(
        self,
        candidates: Tensor,
        dim: int = 128,
        queue_size: int = 8192,
        temperature: float = 0.07,
        contrastive_weight: float = 0.5,
        proto_momentum: float = 0.99,
        phi_start: float = 0.95,
        phi_end: float = 0.8,
        warmup_batch_negatives: bool = False,
        queue_columns: Mapping[str, torch.dtype] | None = None,
        owner: nn.Module | None = None,
    ) -> None:
        super().__init__()
        columns = dict(queue_columns or {"label": torch.long})
        if columns.get("label") != torch.long:
            raise ValueError(
                f"queue_columns must hold a 'label' column of torch.long (the pseudo-labels), "
                f"got {columns}"
            )
        check_nonempty_rows(candidates, type(self).__name__)
        holder = self if owner is None else owner
        holder.register_buffer("candidates", candidates.bool())
        holder.register_buffer("confidence", uniform_confidence(candidates))
        holder.register_buffer("prototypes", torch.zeros(candidates.shape[1], dim))
        holder.register_buffer("phi", torch.tensor(phi_start))
        holder.queue = FeatureQueue(queue_size_for(queue_size, len(candidates)), dim, columns)
        # a plain attribute, not a submodule: the owner holds the loss, not the other way
        self.__dict__["_owner"] = owner
        self.temperature = temperature
        self.contrastive_weight = contrastive_weight
        self.proto_momentum = proto_momentum
        self.phi_range = (phi_start, phi_end)
        self.warmup_batch_negatives = warmup_batch_negatives

    @property
    def state(self) -> DisambiguationState:
        """The module holding the buffers and the queue: this one, or the ``owner``."""
        return cast(DisambiguationState, self if self._owner is None else self._owner)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Set φ for ``epoch`` (0-based) of ``epochs``: linear from ``phi_start`` (first
        epoch) to ``phi_end`` (last)."""
        self.state.phi.fill_(phi_schedule(epoch, epochs, *self.phi_range))

    def label_estimate(self) -> Tensor:
        """The disambiguated label of every training row: ``argmax`` of its confidences."""
        return self.state.confidence.argmax(dim=1)

    def forward(
        self, index: Tensor, logits: Tensor, q: Tensor, k: Tensor, warmup: bool
    ) -> dict[str, Tensor]:
        """Pseudo-labels, (after ``warmup``) confidence and prototype updates, the
        contrastive and classification losses, the enqueue (see the class docstring)."""
        state = self.state
        candidates = state.candidates[index]
        with torch.no_grad():
            probs = logits.detach().float().softmax(dim=1)
            pseudo = (probs * candidates).argmax(dim=1)
            q_all, pseudo_all = gather_no_grad(q.detach().float()), gather_no_grad(pseudo)
            if not warmup:
                proto_label = prototype_labels(q.detach(), state.prototypes, candidates)
                update_confidence_(
                    state.confidence,
                    gather_no_grad(index),
                    gather_no_grad(proto_label),
                    state.phi,
                )
                state.prototypes.copy_(
                    update_prototypes(state.prototypes, q_all, pseudo_all, self.proto_momentum)
                )
        k_all = gather_no_grad(k.float())
        loss_cont = self._contrastive(q, k_all, pseudo_all, warmup)
        loss_cls = weighted_cross_entropy(logits, state.confidence[index])
        state.queue.enqueue(k_all, label=pseudo_all)
        return {
            "loss": loss_cls + self.contrastive_weight * loss_cont,
            "cls": loss_cls.detach(),
            "cont": loss_cont.detach(),
        }

    def contrast_set(self, q: Tensor, k_all: Tensor) -> ContrastSet:
        """``[q; k; queue]`` over the global batch (``k_all``: the gathered keys): queries
        gathered with their gradient path, the queue's filled slots marked valid."""
        queue = self.state.queue
        q_all = gather_with_grad(q)
        features = torch.cat([q_all, k_all.to(q.dtype), queue.features.to(q.dtype)])
        batch = len(q_all)
        valid = torch.cat(
            [torch.ones(2 * batch, dtype=torch.bool, device=q.device), queue.valid_mask()]
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
        labels = torch.cat([pseudo_all, pseudo_all, self.state.queue.column("label")])
        positive = pseudo_all[contrast.rows, None] == labels[None, :]
        return sup_con(
            q, contrast.features, positive, self.temperature, contrast.own_query(), contrast.valid
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, contrastive_weight={self.contrastive_weight}, "
            f"proto_momentum={self.proto_momentum}, phi={self.phi_range}"
        )
