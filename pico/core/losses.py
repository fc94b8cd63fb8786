"""Contrastive losses: MoCo InfoNCE, SimCLR NT-Xent, masked supervised contrast,
InvaSpread, CPC's InfoNCE over patches, triplet and margin contrastive losses, and the Deep
InfoMax JSD estimator.

All functions are pure. The softmax losses expect L2-normalised embeddings (rows of
unit norm), so dot products are cosine similarities divided by the temperature; the
triplet and margin losses work on Euclidean distances of any embeddings, and CPC's loss
scores raw dot products (its log-bilinear critic). Logits are computed
in at least float32, normalised with ``logsumexp`` / ``cross_entropy``, and masked
entries are replaced by the dtype's most negative finite value (never ``-inf``), so
fully masked rows cannot produce NaN in the value or the gradient. Masked queue or
contrast rows are zeroed before any product, so garbage in them (even inf or NaN)
cannot leak in. Every loss returns a scalar mean and never synchronises the host,
except :func:`jsd_mi_loss`, which checks that positives and negatives exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_2d(name: str, x: Tensor, dim: int | None = None) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dim) tensor, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have width {dim} like the anchors, got {x.shape[1]}")


def _check_valid(name: str, valid: Tensor | None, rows: int) -> None:
    if valid is not None and (valid.dtype != torch.bool or valid.shape != (rows,)):
        raise ValueError(
            f"{name} must be a bool tensor of shape ({rows},), got {valid.dtype} "
            f"{tuple(valid.shape)}"
        )


def _logits(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """``a @ b.T / temperature`` in at least float32."""
    sim = a @ b.T
    if sim.dtype in (torch.float16, torch.bfloat16):
        sim = sim.float()
    return sim / temperature


def _zero_invalid_rows(x: Tensor, valid: Tensor | None) -> Tensor:
    """Rows of ``x`` where ``valid`` is False replaced by zeros (no gradient reaches them)."""
    if valid is None:
        return x
    return torch.where(valid[:, None], x, 0.0)


def _masked(logits: Tensor, keep: Tensor) -> Tensor:
    """``logits`` with entries where ``keep`` is False set to the most negative finite value."""
    return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)


def info_nce(
    query: Tensor,
    key: Tensor,
    queue: Tensor | None = None,
    queue_valid: Tensor | None = None,
    temperature: float = 0.2,
) -> Tensor:
    """MoCo InfoNCE: each query's positive is its own key, negatives the queue rows.

    ``query`` and ``key`` are ``(N, D)``, ``queue`` is ``(K, D)``; rows where the bool
    ``queue_valid`` ``(K,)`` is False are excluded entirely (value and gradient). Without a
    queue the negatives are the other keys of the batch (logits ``q @ k.T``, target i).
    Detach ``key`` / ``queue`` in the caller where no gradient should flow.
    """
    _check_temperature(temperature)
    _check_2d("query", query)
    _check_2d("key", key, query.shape[1])
    if key.shape[0] != query.shape[0]:
        raise ValueError(
            f"key must have one row per query ({query.shape[0]}), got {key.shape[0]} rows"
        )
    n = query.shape[0]
    if queue is None:
        if queue_valid is not None:
            raise ValueError("queue_valid was given without a queue; pass the queue too")
        logits = _logits(query, key, temperature)
        target = torch.arange(n, device=query.device)
        return F.cross_entropy(logits, target)
    _check_2d("queue", queue, query.shape[1])
    _check_valid("queue_valid", queue_valid, queue.shape[0])
    positive = (query * key).sum(dim=1, keepdim=True)
    if positive.dtype in (torch.float16, torch.bfloat16):
        positive = positive.float()
    negatives = _logits(query, _zero_invalid_rows(queue, queue_valid), temperature)
    if queue_valid is not None:
        negatives = _masked(negatives, queue_valid[None, :])
    logits = torch.cat([positive / temperature, negatives], dim=1)
    target = torch.zeros(n, dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent over the 2N views ``[z1; z2]``.

    Each view's positive is its partner in the other half; its denominator holds the
    other 2N - 1 views. The mean is over all 2N anchors.
    """
    _check_temperature(temperature)
    _check_2d("z1", z1)
    _check_2d("z2", z2, z1.shape[1])
    if z1.shape[0] != z2.shape[0]:
        raise ValueError(f"z1 and z2 must have the same rows, got {z1.shape[0]} and {z2.shape[0]}")
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    logits = _logits(z, z, temperature)
    not_self = ~torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = _masked(logits, not_self)
    idx = torch.arange(n, device=z.device)
    target = torch.cat([idx + n, idx])
    return F.cross_entropy(logits, target)


def sup_con(
    anchors: Tensor,
    contrast: Tensor,
    positive_mask: Tensor,
    temperature: float = 0.07,
    exclude_mask: Tensor | None = None,
    contrast_valid: Tensor | None = None,
) -> Tensor:
    """Supervised contrastive loss driven by a positive mask.

    ``anchors`` ``(A, D)``, ``contrast`` ``(M, D)``. Entry j is *allowed* for anchor i
    when ``contrast_valid[j]`` and not ``exclude_mask[i, j]``; the positives of i are
    ``positive_mask[i] & allowed``. Per anchor::

        loss_i = -(1/|P_i|) sum_{p in P_i} log(exp(a_i.c_p/t) / sum_{j allowed} exp(a_i.c_j/t))

    ``positive_mask`` may be bool or float weights in [0, 1] (then a weighted mean
    ``sum_p w_p log p / sum_p w_p``). Anchors without positives are left out of the mean;
    if none has one the result is a zero that still has a gradient path.
    """
    _check_temperature(temperature)
    _check_2d("anchors", anchors)
    _check_2d("contrast", contrast, anchors.shape[1])
    shape = (anchors.shape[0], contrast.shape[0])
    if positive_mask.shape != shape:
        raise ValueError(f"positive_mask must have shape {shape}, got {tuple(positive_mask.shape)}")
    if positive_mask.dtype != torch.bool and not positive_mask.is_floating_point():
        raise ValueError(f"positive_mask must be bool or floating, got {positive_mask.dtype}")
    if exclude_mask is not None and (
        exclude_mask.dtype != torch.bool or exclude_mask.shape != shape
    ):
        raise ValueError(
            f"exclude_mask must be a bool tensor of shape {shape}, got {exclude_mask.dtype} "
            f"{tuple(exclude_mask.shape)}"
        )
    _check_valid("contrast_valid", contrast_valid, contrast.shape[0])

    logits = _logits(anchors, _zero_invalid_rows(contrast, contrast_valid), temperature)
    allowed = torch.ones(shape, dtype=torch.bool, device=logits.device)
    if contrast_valid is not None:
        allowed = allowed & contrast_valid[None, :]
    if exclude_mask is not None:
        allowed = allowed & ~exclude_mask
    logits = _masked(logits, allowed)
    weights = positive_mask.to(logits.dtype) * allowed
    weight_sum = weights.sum(dim=1)
    has_positive = weight_sum > 0
    # -sum_p w_p log p_p / sum_p w_p = logsumexp - sum_p w_p logit_p / sum_p w_p: no (A, M)
    # log-probability matrix; masked logits are finite and meet zero weights only.
    weighted = (weights * logits).sum(dim=1) / weight_sum.clamp_min(1e-12)
    per_anchor = torch.logsumexp(logits, dim=1) - weighted
    per_anchor = torch.where(has_positive, per_anchor, 0.0)
    return per_anchor.sum() / has_positive.sum().clamp_min(1)


def sup_con_from_labels(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    temperature: float = 0.07,
    contrast_valid: Tensor | None = None,
    anchors_in_contrast: bool = True,
) -> Tensor:
    """:func:`sup_con` with positives = contrast entries sharing the anchor's label.

    With ``anchors_in_contrast`` (the PiCO layout ``contrast = [q; k; queue]``), anchor i
    is row i of ``contrast`` and is excluded from its own denominator and positives; its
    own key (row A + i) stays a positive since it shares the label.
    """
    positive_mask, exclude_mask = _label_masks(
        anchors, anchor_labels, contrast, contrast_labels, anchors_in_contrast
    )
    return sup_con(
        anchors,
        contrast,
        positive_mask,
        temperature=temperature,
        exclude_mask=exclude_mask,
        contrast_valid=contrast_valid,
    )


# --- Metric-learning losses, the JSD mutual-information estimator, InvaSpread -----------
# Triplet loss with mining (Schroff et al. 2015, Hermans et al. 2017), the margin
# contrastive loss of Hadsell et al. (2006) and the Jensen-Shannon estimator of Deep
# InfoMax (Hjelm et al. 2019) take the masks of :func:`sup_con`: entry j is allowed for
# anchor i when ``contrast_valid[j]`` and not ``exclude_mask[i, j]``; the positives of i
# are ``positive_mask[i] & allowed`` (bool only), its negatives the other allowed entries.
# Triplet and margin losses work on Euclidean distances and need no normalisation.


def _pair_masks(
    anchors: Tensor,
    contrast: Tensor,
    positive_mask: Tensor,
    exclude_mask: Tensor | None,
    contrast_valid: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``(positive, negative)`` bool masks ``(A, M)`` of the allowed entries, after checks."""
    _check_2d("anchors", anchors)
    _check_2d("contrast", contrast, anchors.shape[1])
    shape = (anchors.shape[0], contrast.shape[0])
    for name, mask in (("positive_mask", positive_mask), ("exclude_mask", exclude_mask)):
        if mask is not None and (mask.dtype != torch.bool or mask.shape != shape):
            raise ValueError(
                f"{name} must be a bool tensor of shape {shape}, got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
    _check_valid("contrast_valid", contrast_valid, contrast.shape[0])
    allowed = torch.ones(shape, dtype=torch.bool, device=anchors.device)
    if contrast_valid is not None:
        allowed = allowed & contrast_valid[None, :]
    if exclude_mask is not None:
        allowed = allowed & ~exclude_mask
    return positive_mask & allowed, ~positive_mask & allowed


def _label_masks(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    anchors_in_contrast: bool,
) -> tuple[Tensor, Tensor | None]:
    """``(positive_mask, exclude_mask)`` from labels; with ``anchors_in_contrast`` anchor i
    is row i of ``contrast`` and its own entry is excluded."""
    a, m = anchors.shape[0], contrast.shape[0]
    if anchor_labels.shape != (a,) or contrast_labels.shape != (m,):
        raise ValueError(
            f"anchor_labels must have shape ({a},) and contrast_labels ({m},), got "
            f"{tuple(anchor_labels.shape)} and {tuple(contrast_labels.shape)}"
        )
    if not anchors_in_contrast:
        return anchor_labels[:, None] == contrast_labels[None, :], None
    if a > m:
        raise ValueError(
            f"anchors_in_contrast needs the {a} anchors as the first rows of contrast, "
            f"which has only {m} rows; pass anchors_in_contrast=False otherwise"
        )
    exclude = torch.eye(a, m, dtype=torch.bool, device=anchors.device)
    return anchor_labels[:, None] == contrast_labels[None, :], exclude


def _squared_distances(a: Tensor, c: Tensor) -> Tensor:
    """``|a_i - c_j|^2`` ``(A, M)`` in at least float32, clamped at zero."""
    if a.dtype in (torch.float16, torch.bfloat16):
        a, c = a.float(), c.float()
    c = c.to(a.dtype)
    with torch.autocast(a.device.type, enabled=False):
        sq = (a * a).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2 * (a @ c.T)
    return sq.clamp_min(0)


def _sqrt0(sq: Tensor) -> Tensor:
    """``sqrt`` whose gradient at zero is zero (not NaN): coinciding points are safe."""
    positive = sq > 0
    return torch.where(positive, torch.where(positive, sq, 1.0).sqrt(), 0.0)


def triplet_loss(
    anchors: Tensor,
    contrast: Tensor,
    positive_mask: Tensor,
    margin: float = 0.2,
    mining: str = "batch_hard",
    squared: bool = False,
    exclude_mask: Tensor | None = None,
    contrast_valid: Tensor | None = None,
) -> Tensor:
    """Triplet loss ``max(0, d(a, p) - d(a, n) + margin)`` with in-batch mining.

    ``d`` is the Euclidean distance (``squared``: its square) between ``anchors`` ``(A, D)``
    and ``contrast`` ``(M, D)``; positives and negatives follow the masks (see above).

    * ``mining="batch_hard"`` (Hermans et al. 2017): one triplet per anchor, its farthest
      positive and its nearest negative; the mean is over anchors with both.
    * ``mining="semi_hard"`` (Schroff et al. 2015): one triplet per (anchor, positive)
      pair, with the nearest negative farther than the positive; when no negative is
      farther, the farthest negative. The mean is over pairs whose anchor has a negative.

    With no triplet at all the result is a zero that still has a gradient path.
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if mining not in ("batch_hard", "semi_hard"):
        raise ValueError(f"mining must be 'batch_hard' or 'semi_hard', got {mining!r}")
    positive, negative = _pair_masks(anchors, contrast, positive_mask, exclude_mask, contrast_valid)
    sq = _squared_distances(anchors, _zero_invalid_rows(contrast, contrast_valid))
    dist = sq if squared else _sqrt0(sq)
    far = torch.finfo(dist.dtype).max
    has_negative = negative.any(dim=1)
    if mining == "batch_hard":
        hardest_positive = dist.masked_fill(~positive, 0.0).amax(dim=1)
        nearest_negative = dist.masked_fill(~negative, far).amin(dim=1)
        keep = positive.any(dim=1) & has_negative
        per = F.relu(hardest_positive - nearest_negative + margin)
    else:
        # Negative distances sorted per anchor (padding ``far`` last): the first one above
        # d(a, p) is the semi-hard negative, the last real one the fallback.
        sorted_negative = dist.masked_fill(~negative, far).sort(dim=1).values
        count = negative.sum(dim=1, keepdim=True)
        first_above = torch.searchsorted(sorted_negative.detach(), dist.detach(), right=True)
        index = torch.where(first_above < count, first_above, (count - 1).clamp_min(0))
        chosen = sorted_negative.gather(1, index)
        keep = positive & has_negative[:, None]
        per = F.relu(dist - chosen + margin)
    per = torch.where(keep, per, 0.0)
    return per.sum() / keep.sum().clamp_min(1)


def triplet_loss_from_labels(
    anchors: Tensor,
    anchor_labels: Tensor,
    contrast: Tensor,
    contrast_labels: Tensor,
    margin: float = 0.2,
    mining: str = "batch_hard",
    squared: bool = False,
    contrast_valid: Tensor | None = None,
    anchors_in_contrast: bool = True,
) -> Tensor:
    """:func:`triplet_loss` with positives = contrast entries sharing the anchor's label.

    With ``anchors_in_contrast`` anchor i is row i of ``contrast`` (e.g. one batch as both,
    ``triplet_loss_from_labels(z, y, z, y)``) and is not its own positive.
    """
    positive_mask, exclude_mask = _label_masks(
        anchors, anchor_labels, contrast, contrast_labels, anchors_in_contrast
    )
    return triplet_loss(
        anchors,
        contrast,
        positive_mask,
        margin=margin,
        mining=mining,
        squared=squared,
        exclude_mask=exclude_mask,
        contrast_valid=contrast_valid,
    )


def margin_contrastive_loss(
    anchors: Tensor,
    contrast: Tensor,
    positive_mask: Tensor,
    margin: float = 1.0,
    exclude_mask: Tensor | None = None,
    contrast_valid: Tensor | None = None,
) -> Tensor:
    """The contrastive loss of Hadsell et al. (2006), averaged over the allowed pairs.

    For the pair (i, j) at Euclidean distance d with label Y = 0 (similar: a positive)
    or Y = 1 (dissimilar: a negative), the loss is ``(1 - Y) d^2 / 2 + Y max(0, m - d)^2 / 2``
    with ``m = margin``. With no allowed pair the result is a zero with a gradient path.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    positive, negative = _pair_masks(anchors, contrast, positive_mask, exclude_mask, contrast_valid)
    sq = _squared_distances(anchors, _zero_invalid_rows(contrast, contrast_valid))
    similar = 0.5 * sq
    dissimilar = 0.5 * F.relu(margin - _sqrt0(sq)).square()
    per = torch.where(positive, similar, torch.where(negative, dissimilar, 0.0))
    return per.sum() / (positive | negative).sum().clamp_min(1)


def jsd_mi_loss(
    anchors: Tensor,
    contrast: Tensor,
    positive_mask: Tensor,
    exclude_mask: Tensor | None = None,
    contrast_valid: Tensor | None = None,
) -> Tensor:
    """Negative Jensen-Shannon mutual-information estimate (Deep InfoMax, f-GAN form).

    The critic is the dot product ``T(i, j) = anchors[i] . contrast[j]``; with ``sp`` the
    softplus the estimate is ``E_P[-sp(-T)] - E_N[sp(T)]``, the means over all positive
    and over all negative entries, and the loss is its negative
    ``E_P[sp(-T)] + E_N[sp(T)]``. Needs at least one positive and one negative entry
    (checked on the host, one synchronisation).
    """
    positive, negative = _pair_masks(anchors, contrast, positive_mask, exclude_mask, contrast_valid)
    if not bool(positive.any()):
        raise ValueError("jsd_mi_loss needs at least one allowed positive entry, got none")
    if not bool(negative.any()):
        raise ValueError("jsd_mi_loss needs at least one allowed negative entry, got none")
    scores = _logits(anchors, _zero_invalid_rows(contrast, contrast_valid), 1.0)
    e_pos = torch.where(positive, F.softplus(-scores), 0.0).sum() / positive.sum()
    e_neg = torch.where(negative, F.softplus(scores), 0.0).sum() / negative.sum()
    return e_pos + e_neg


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both sides of ``-log 2``."""
    x = x.clamp_max(-torch.finfo(x.dtype).tiny)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-x.exp()))


def invaspread_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """InvaSpread's loss (Ye et al. 2019) over the 2N views ``[z1; z2]``.

    For view a, ``P(b | a)`` is the non-parametric softmax of ``z_a . z_b / temperature``
    over the 2N - 1 other views. With a' the other view of a's image, view a contributes
    ``-log P(a' | a) - sum_{b not in {a, a'}} log(1 - P(b | a))``: recognised as its own
    instance, and as none of the other 2N - 2 views (both views of every other image are
    negatives). The mean is over the 2N views.
    """
    _check_temperature(temperature)
    _check_2d("z1", z1)
    _check_2d("z2", z2, z1.shape[1])
    if z1.shape[0] != z2.shape[0]:
        raise ValueError(f"z1 and z2 must have the same rows, got {z1.shape[0]} and {z2.shape[0]}")
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    not_self = ~torch.eye(2 * n, dtype=torch.bool, device=z.device)
    log_p = torch.log_softmax(_masked(_logits(z, z, temperature), not_self), dim=1)
    idx = torch.arange(n, device=z.device)
    partner = torch.cat([idx + n, idx])
    negative = not_self.clone()
    negative[torch.arange(2 * n, device=z.device), partner] = False
    positive_term = -log_p.gather(1, partner[:, None]).squeeze(1)
    negative_term = -torch.where(negative, _log1mexp(log_p), 0.0).sum(dim=1)
    return (positive_term + negative_term).mean()


def cpc_loss(predictions: Tensor, encodings: Tensor) -> Tensor:
    """Contrastive Predictive Coding's InfoNCE over a grid of patch encodings (van den Oord
    et al. 2018; Hénaff et al. 2019).

    ``encodings`` ``(B, Gh, Gw, D)`` holds ``z[b, r, c]``, the encoding of the patch in row
    ``r`` and column ``c`` of image ``b``; ``predictions`` ``(B, K, Gh, Gw, D)`` holds
    ``p[b, k - 1, r, c]``, the prediction of ``z[b, r + k, c]`` made from the context at
    ``(b, r, c)``, for the offsets ``k = 1..K`` (``K < Gh``). Predictions whose target lies
    below the grid (``r + k >= Gh``) are ignored. Each prediction scores every encoding by
    the dot product (the log-bilinear critic ``z^T W_k c``, no normalisation, no
    temperature): its positive is its target, its negatives the other ``B * Gh * Gw - 1``
    encodings, that is every other patch of its own image and every patch of the other
    images. Per offset the cross-entropy is averaged over its ``B * (Gh - k) * Gw``
    predictions; the loss is the mean over the ``K`` offsets, each counting alike.
    """
    if encodings.ndim != 4:
        raise ValueError(
            f"encodings must be a (B, Gh, Gw, D) grid, got shape {tuple(encodings.shape)}"
        )
    b, gh, gw, d = encodings.shape
    if predictions.ndim != 5 or (predictions.shape[0], *predictions.shape[2:]) != (b, gh, gw, d):
        raise ValueError(
            f"predictions must have shape (B, K, Gh, Gw, D) = ({b}, K, {gh}, {gw}, {d}) like "
            f"the encodings, got {tuple(predictions.shape)}"
        )
    steps = predictions.shape[1]
    if not 1 <= steps < gh:
        raise ValueError(
            f"predictions must hold K = 1..{gh - 1} offsets for a grid of {gh} rows (each "
            f"offset needs a target row below), got K={steps}"
        )
    contrast = encodings.reshape(-1, d)
    position = torch.arange(b * gh * gw, device=encodings.device).view(b, gh, gw)
    per_offset = []
    for k in range(1, steps + 1):
        anchors = predictions[:, k - 1, : gh - k].reshape(-1, d)
        target = position[:, k:].reshape(-1)
        per_offset.append(F.cross_entropy(_logits(anchors, contrast, 1.0), target))
    return torch.stack(per_offset).mean()
