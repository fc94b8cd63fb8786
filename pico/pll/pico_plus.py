"""PiCO+: PiCO for noisy candidate sets, where the true label may be missing.

Wang et al., "PiCO+: Contrastive Label Disambiguation for Robust Partial Label Learning"
(TPAMI 2023). After warm-up, every step splits the batch into reliable and unreliable
samples by the distance of the query to the prototype of its candidate-restricted
prediction; the closest share is reliable. Reliable samples keep PiCO's behaviour.
Unreliable samples, whose true label may lie outside the candidate set, are learned
semi-supervised: label guessing over all classes, kNN positives in the contrastive loss
and no prototype updates. Mixup over the whole batch anchors the classifier.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pico.core.distributed import gather_no_grad, get_rank
from pico.core.losses import sup_con
from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.eval.metrics import covering_share
from pico.pll.candidates_buffer import soft_cross_entropy
from pico.pll.disambiguation import prototype_labels, update_confidence_
from pico.pll.pico import PiCO
from pico.pll.prototypes import update_prototypes


def prototype_distance(q: Tensor, prototypes: Tensor, labels: Tensor) -> Tensor:
    """Cosine distance ``1 - q_i · M_{labels_i}`` of unit embeddings to one prototype each.

    Rows whose prototype was never set (zero vector) get -1, below any real distance, so
    they are selected first and set it. Ranked last instead, they would never be reliable,
    only reliable rows update prototypes, and the class would stay without a prototype
    (and without label-guess mass) for good.
    """
    chosen = prototypes.float()[labels]
    distance = 1 - (q.float() * chosen).sum(dim=1)
    return torch.where(chosen.norm(dim=1) > 0, distance, -1.0)


def select_reliable(
    distance: Tensor, share: float | Tensor, groups: Tensor | None = None, num_groups: int = 1
) -> Tensor:
    """Bool mask of the rows with the smallest ``distance``: ``round(share * n)`` of them.

    With ``groups`` (ints in ``[0, num_groups)``) the share is taken in every group
    separately: ``round(share * n_g)`` rows of group g. Halves round up; ties go to the
    earlier row, so the counts are always exact. Vectorised, without host synchronisation.
    """
    n = distance.shape[0]
    if groups is None:
        groups = torch.zeros(n, dtype=torch.long, device=distance.device)
    order = distance.argsort(stable=True)
    order = order[groups[order].argsort(stable=True)]  # by group, then by distance
    sorted_groups = groups[order]
    counts = torch.zeros(num_groups, device=distance.device).index_add_(
        0, groups, torch.ones(n, device=distance.device)
    )
    first = counts.cumsum(0) - counts  # position of each group's first row in `order`
    rank = torch.arange(n, device=distance.device) - first[sorted_groups]
    quota = torch.floor(share * counts + 0.5)
    reliable = torch.zeros(n, dtype=torch.bool, device=distance.device)
    reliable[order] = rank < quota[sorted_groups]
    return reliable


def knn_positives(q: Tensor, keys: Tensor, valid: Tensor, k: int) -> Tensor:
    """``(B, K)`` bool: the ``k`` valid keys most similar (cosine) to each query.

    With fewer than ``k`` valid keys every valid key is a positive.
    """
    sim = (q.float() @ keys.float().T).masked_fill(~valid[None, :], float("-inf"))
    nearest = sim.topk(min(k, keys.shape[0]), dim=1).indices
    chosen = torch.zeros(sim.shape, dtype=torch.bool, device=q.device).scatter_(1, nearest, True)
    return chosen & valid[None, :]


def guess_targets(q: Tensor, prototypes: Tensor, temperature: float) -> Tensor:
    """Label guesses over all classes: ``softmax(q M^T / temperature)``.

    The sharpened prototype scores of PiCO+ (``softmax(q M^T)`` raised to ``1/temperature``
    and renormalised, which is the same thing). Classes whose prototype was never set
    are left out while any prototype is set.
    """
    logits = q.float() @ prototypes.float().T / temperature
    ready = prototypes.norm(dim=1) > 0
    logits = torch.where(ready.any(), logits.masked_fill(~ready, float("-inf")), logits)
    return logits.softmax(dim=1)


def sample_mixup(n: int, alpha: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Mixup coefficient ``λ ~ Beta(α, α)`` folded to ``max(λ, 1-λ)`` and a random permutation.

    Drawn on ``device`` from the global generator, without a host synchronisation.
    """
    concentration = torch.full((), float(alpha), device=device)
    # validate_args=False: the argument check would read a device tensor on the host
    beta = torch.distributions.Beta(concentration, concentration, validate_args=False)
    lam = beta.sample()
    return torch.maximum(lam, 1 - lam), torch.randperm(n, device=device)


def mixup(x: Tensor, targets: Tensor, lam: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """``λ a + (1-λ) a[perm]`` of the inputs and of the soft targets."""
    lam_x = lam.to(x.dtype)
    mixed_x = lam_x * x + (1 - lam_x) * x[perm]
    mixed_targets = lam * targets + (1 - lam) * targets[perm]
    return mixed_x, mixed_targets


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over rows where ``mask`` is True (0 when none is)."""
    return (values * mask).sum() / mask.sum().clamp_min(1)


class PiCOPlus(PiCO):
    """PiCO with distance-based reliable-sample selection for noisy candidate sets.

    Warm-up is PiCO's (instance contrast, classifier on the initial confidences), with
    the paper's ``warmup_epochs=5`` (its CIFAR-10 value; 50 on CIFAR-100). After it, per
    step, on the batch gathered over ranks:

    1. Distance of ``q`` to the prototype of the candidate-restricted classifier
       prediction; the closest ``reliable_share`` of the batch is reliable. The paper
       fixes that share (0.6 for its noise rates). The default ``"auto"`` estimates it
       instead: a running mean (momentum :attr:`clean_share_momentum` per step, warm-up
       included) of the share of rows whose classifier prediction over all classes is a
       candidate (:func:`~pico.eval.metrics.covering_share`). That is about 1 on clean
       digits, where a fixed 0.6 would discard 40 % of the candidate sets, and about the
       clean share where true labels are missing (0.75-0.83 on digits with 20 % of them
       dropped); classifier errors count as noise too (0.73 on clean italian). The
       paper's way (``reliable_per_class=False``) is one ranking over all classes; the official
       code ranks the whole training set once per epoch, from distances stored during
       the previous epoch, while here each batch is ranked as it comes, so no stale
       distances are kept. With ``reliable_per_class`` (the default: on digits one
       ranking lost whole classes, see ``configs/method/pico_plus.yaml``) the share is
       taken within each predicted class, so a class whose samples lie farther from its
       prototype is not starved of reliable rows (and of prototype updates).
    2. Confidence update of every row as in PiCO (restricted to candidates); prototypes
       move with reliable rows only.
    3. Pseudo-labels: candidate-restricted for reliable rows, over all classes for the
       unreliable ones (they fill the queue's label column).
    4. Contrastive loss over ``[q; k; queue]``, always with the own key as a positive:
       reliable anchors take the entries with the same pseudo-label that are themselves
       reliable. Before the kNN phase unreliable anchors take their own key only, and
       every anchor has weight 1; in it they take their ``knn_neighbors`` nearest queue
       keys, and the anchors weigh ``contrastive_weight`` (reliable) and
       ``unreliable_weight`` (unreliable). Plus, in both, ``unreliable_weight`` times
       PiCO's SupCon over all anchors and entries.
    5. Classifier: ``reliable_cls_weight`` x cross-entropy to the confidences on reliable
       rows, ``unreliable_weight`` x cross-entropy to the label guesses
       ``softmax(q M^T / guess_temperature)`` on unreliable rows, and the mixup loss: weak
       inputs mixed with ``λ ~ Beta(mixup_alpha, mixup_alpha)``, ``λ >= 0.5``, against the
       equally mixed targets (confidences or guesses).

    Logged terms: ``cls`` (confidence cross-entropy; reliable rows after warm-up),
    ``cont`` (the weighted contrastive term as it enters the loss), ``mix`` (0 during
    warm-up) and ``reliable`` (the share of the batch marked reliable; 1 in warm-up).

    The kNN phase starts ``knn_start`` of the way from the end of warm-up (``W`` steps) to
    the end of the run (``T`` steps): at step ``W + round(knn_start * (T - W))``. The
    official code starts it at epoch ``knn_start=100``; on its CIFAR-10 schedule (800
    epochs, 5 of warm-up) that is 95 of the 795 epochs after warm-up, and the default
    0.1195 (95/795 rounded) lands on the first step of epoch 100 for up to 199 steps per
    epoch (175 at batch 256 here, 195 in the official code). Its CIFAR-100 run (50 epochs
    of warm-up, kNN from epoch 100 too) is ``knn_start=0.06667``. With 0 the kNN phase
    starts with the end of warm-up; with 1 it never starts. Counted in steps of the run,
    the phase keeps its share on small data sets with few steps per epoch.

    The official code searches kNN positives in the whole contrast set (batch queries
    and keys included); here they come from the queue keys. The remaining arguments are
    PiCO's (see :class:`~pico.pll.pico.PiCO`).
    """

    method_name = "pico_plus"
    queue_columns = (("label", torch.long), ("reliable", torch.bool))
    step_graph = None  # its own training_step, which branches on the step
    #: per-step momentum of the running clean-share estimate (``reliable_share="auto"``)
    clean_share_momentum = 0.99
    clean_share: Tensor  # buffer of reliable_share="auto"

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        reliable_share: float | str = "auto",
        reliable_per_class: bool = True,
        knn_neighbors: int = 16,
        knn_start: float = 0.1195,
        guess_temperature: float = 0.07,
        unreliable_weight: float = 0.1,
        reliable_cls_weight: float = 2.0,
        mixup_alpha: float = 4.0,
        warmup_epochs: float = 5,
        **pico_kwargs: Any,
    ) -> None:
        if reliable_share != "auto" and not (
            isinstance(reliable_share, (int, float)) and 0 < reliable_share <= 1
        ):
            raise ValueError(
                f"reliable_share must be 'auto' or lie in (0, 1] (the share of each batch "
                f"treated as reliable; the paper uses 0.6), got {reliable_share!r}"
            )
        if knn_neighbors < 1:
            raise ValueError(f"knn_neighbors must be >= 1 (the paper uses 16), got {knn_neighbors}")
        if not 0 <= knn_start <= 1:
            raise ValueError(
                f"knn_start must lie in [0, 1], got {knn_start}: it is the share of the steps "
                "between the end of warm-up and the end of the run after which kNN positives "
                "start, not an epoch (the official knn_start=100 of 800 epochs with 5 of "
                "warm-up is 0.1195; 0 starts them with the end of warm-up)"
            )
        if not guess_temperature > 0:
            raise ValueError(
                f"guess_temperature must be > 0 (the paper uses 0.07), got {guess_temperature}"
            )
        if not mixup_alpha > 0:
            raise ValueError(f"mixup_alpha must be > 0 (the paper uses 4), got {mixup_alpha}")
        super().__init__(backbone, task, warmup_epochs=warmup_epochs, **pico_kwargs)
        self.reliable_share = reliable_share
        if reliable_share == "auto":
            self.register_buffer("clean_share", torch.tensor(1.0))
        self.reliable_per_class = reliable_per_class
        self.knn_neighbors = knn_neighbors
        self.knn_start = knn_start
        self.guess_temperature = guess_temperature
        self.unreliable_weight = unreliable_weight
        self.reliable_cls_weight = reliable_cls_weight
        self.mixup_alpha = mixup_alpha

    def knn_start_step(self, info: StepInfo) -> int:
        """First optimizer step of the kNN phase in this run (see the class docstring)."""
        warmup = self.warmup_steps(info)
        return warmup + round(self.knn_start * max(info.total_steps - warmup, 0))

    def in_knn_phase(self, info: StepInfo) -> bool:
        """Whether this step uses kNN positives and the reduced unreliable weights."""
        return info.step >= self.knn_start_step(info)

    def training_step(self, batch: Batch, info: StepInfo) -> dict[str, Tensor]:
        weak, strong = batch.views
        index = batch.index
        candidates = self.candidates[index]
        logits, q, k = self.encode(weak, strong)
        k_all = gather_no_grad(k.float())
        share = self._reliable_share(logits, candidates)
        if self.in_warmup(info):
            with torch.no_grad():
                pseudo = (logits.detach().float().softmax(dim=1) * candidates).argmax(dim=1)
                reliable = torch.ones_like(pseudo, dtype=torch.bool)
            disambiguation = self.disambiguation
            contrast = disambiguation.contrast_set(q, k_all)
            instance = disambiguation.instance_contrastive(q, contrast)
            loss_cont = disambiguation.contrastive_weight * instance
            loss_cls = soft_cross_entropy(logits, self.confidence[index]).mean()
            loss_mix = torch.zeros((), device=loss_cls.device)
            loss = loss_cls + loss_cont
        else:
            reliable, pseudo, guess = self._select_and_update(logits, q, index, candidates, share)
            knn = self.in_knn_phase(info)
            loss_cont = self._robust_contrastive(q, k_all, pseudo, reliable, knn)
            confidence = self.confidence[index]
            loss_cls = masked_mean(soft_cross_entropy(logits, confidence), reliable)
            loss_guess = masked_mean(soft_cross_entropy(logits, guess), ~reliable)
            targets = torch.where(reliable[:, None], confidence, guess)
            loss_mix = self._mixup_loss(weak, targets)
            loss = (
                loss_mix
                + self.reliable_cls_weight * loss_cls
                + self.unreliable_weight * loss_guess
                + loss_cont
            )
        self.queue.enqueue(k_all, label=gather_no_grad(pseudo), reliable=gather_no_grad(reliable))
        return {
            "loss": loss,
            "cls": loss_cls.detach(),
            "cont": loss_cont.detach(),
            "mix": loss_mix.detach(),
            "reliable": reliable.float().mean(),
        }

    @torch.no_grad()
    def _reliable_share(self, logits: Tensor, candidates: Tensor) -> float | Tensor:
        """The share of a batch to mark reliable: ``reliable_share``, or with ``"auto"`` the
        running estimate of the clean share, moved each step (warm-up included) towards the
        gathered batch's :func:`~pico.eval.metrics.covering_share` (the training-time
        covering rate)."""
        if self.reliable_share != "auto":
            return float(self.reliable_share)
        predictions = gather_no_grad(logits.detach().argmax(dim=1))
        batch_share = covering_share(predictions, gather_no_grad(candidates))
        self.clean_share.lerp_(batch_share, 1 - self.clean_share_momentum)
        return self.clean_share.clone()

    @torch.no_grad()
    def _select_and_update(
        self, logits: Tensor, q: Tensor, index: Tensor, candidates: Tensor, share: float | Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Reliable mask, pseudo-labels and label guesses of this rank's rows; updates the
        confidences (all rows) and the prototypes (reliable rows) from the gathered batch."""
        probs = logits.detach().float().softmax(dim=1)
        within = (probs * candidates).argmax(dim=1)
        q = q.detach().float()
        q_all, within_all = gather_no_grad(q), gather_no_grad(within)
        distance = prototype_distance(q_all, self.prototypes, within_all)
        num_classes = self.prototypes.shape[0]
        groups = within_all if self.reliable_per_class else None
        reliable_all = select_reliable(distance, share, groups, num_classes)
        start = get_rank() * len(index)
        reliable = reliable_all[start : start + len(index)]
        guess = guess_targets(q, self.prototypes, self.guess_temperature)
        proto_label = prototype_labels(q, self.prototypes, candidates)
        update_confidence_(
            self.confidence, gather_no_grad(index), gather_no_grad(proto_label), self.phi
        )
        # Unreliable rows go to an extra scratch class that is dropped afterwards.
        scratch = torch.cat([self.prototypes, self.prototypes.new_zeros(1, q.shape[1])])
        labels = torch.where(reliable_all, within_all, num_classes)
        updated = update_prototypes(scratch, q_all, labels, self.disambiguation.proto_momentum)
        self.prototypes.copy_(updated[:num_classes])
        pseudo = torch.where(reliable, within, probs.argmax(dim=1))
        return reliable, pseudo, guess

    def _robust_contrastive(
        self, q: Tensor, k_all: Tensor, pseudo: Tensor, reliable: Tensor, knn: bool
    ) -> Tensor:
        """Contrastive loss of step 4 (see the class docstring); ``k_all``: gathered keys,
        ``knn``: whether the step is in the kNN phase."""
        contrast = self.disambiguation.contrast_set(q, k_all)
        temperature = self.disambiguation.temperature
        valid, exclude, own_key = contrast.valid, contrast.own_query(), contrast.own_key()
        pseudo_all, reliable_all = gather_no_grad(pseudo), gather_no_grad(reliable)
        labels = torch.cat([pseudo_all, pseudo_all, self.queue.column("label")])
        entry_reliable = torch.cat([reliable_all, reliable_all, self.queue.column("reliable")])
        same_label = pseudo[:, None] == labels[None, :]
        label_positive = same_label & entry_reliable[None, :] & reliable[:, None]
        features = contrast.features
        loss_all = sup_con(q, features, same_label, temperature, exclude, valid)
        if not knn:  # every anchor weight 1; unreliable ones contrast their own key only
            positive = label_positive | own_key
            loss = sup_con(q, features, positive, temperature, exclude, valid)
            return loss + self.unreliable_weight * loss_all
        neighbours = knn_positives(
            q.detach(), self.queue.features, self.queue.valid_mask(), self.knn_neighbors
        )
        knn_positive = torch.cat(
            [torch.zeros_like(own_key[:, : 2 * contrast.batch]), neighbours], dim=1
        )
        positive_rel = label_positive | (own_key & reliable[:, None])
        positive_unrel = (knn_positive | own_key) & ~reliable[:, None]
        # sup_con averages over anchors with positives: here the reliable, resp. unreliable
        # rows. Scaling by their share gives the per-anchor weighted batch mean.
        share = reliable.float().mean()
        loss_rel = sup_con(q, features, positive_rel, temperature, exclude, valid)
        loss_unrel = sup_con(q, features, positive_unrel, temperature, exclude, valid)
        return (
            self.disambiguation.contrastive_weight * share * loss_rel
            + self.unreliable_weight * (1 - share) * loss_unrel
            + self.unreliable_weight * loss_all
        )

    def _mixup_loss(self, weak: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy of the classifier on mixed weak inputs against the mixed targets."""
        lam, perm = sample_mixup(len(weak), self.mixup_alpha, weak.device)
        mixed, mixed_targets = mixup(weak, targets, lam, perm)
        return soft_cross_entropy(self.classifier(self.backbone(mixed)), mixed_targets).mean()
