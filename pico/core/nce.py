"""Noise-contrastive estimation against a memory bank (InstDisc, Wu et al. 2018).

Every training example i owns a slot f_i in a memory bank of N L2-normalised features.
For an embedding v the non-parametric softmax would be

    P(i | v) = exp(v . f_i / tau) / Z,   Z = sum_j exp(v . f_j / tau),

which costs O(N) per example. NCE replaces it by a binary task: tell the data slot
(the example's own slot) from K noise slots drawn uniformly, P_n(i) = 1/N. With Z held
fixed (estimated once, see :func:`estimate_log_z`), the posterior that slot i came
from the data is

    h(i, v) = P(i | v) / (P(i | v) + K / N)

and the loss per example is ``-log h(pos) - sum_{k=1..K} log(1 - h(noise_k))``, the
paper's ``-E[log h] - K E[log(1 - h)]`` with the expectation over noise estimated by
the K draws. Everything here works in log space: ``h = sigmoid(log P - log(K / N))``,
so no ``exp`` can overflow and no epsilon is needed.

All functions take *logits*, ``v . f / tau`` (similarities already divided by the
temperature), and compute in at least float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pico.core.distributed import gather_no_grad


def _at_least_float32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_num_data(num_data: int) -> None:
    if num_data < 1:
        raise ValueError(f"num_data (the memory bank size N) must be >= 1, got {num_data}")


def estimate_log_z(noise_logits: Tensor, num_data: int) -> Tensor:
    """``log Z`` with ``Z ~= N * mean(exp(noise_logits))``, as a detached 0-d tensor.

    The paper estimates the normaliser once, from the first batch, by Monte Carlo over
    the sampled noise slots: ``Z ~= (N / M) * sum_j exp(v_j . f_j / tau)`` over all M
    sampled (example, noise slot) pairs. Computed as a ``logsumexp`` so it cannot
    overflow; no host synchronisation.
    """
    _check_num_data(num_data)
    if noise_logits.numel() == 0:
        raise ValueError("estimate_log_z needs at least one noise logit; draw K >= 1 noise slots")
    logits = _at_least_float32(noise_logits.detach()).reshape(-1)
    return torch.logsumexp(logits, dim=0) + math.log(num_data) - math.log(logits.numel())


def estimate_log_z_all_ranks(noise_logits: Tensor, num_data: int) -> Tensor:
    """:func:`estimate_log_z` averaged over the ranks of the process group: ``Z`` is the
    mean of the ranks' estimates (a ``logsumexp`` of their ``log Z``), so every rank
    holds the same normaliser. In a single process it is :func:`estimate_log_z`."""
    local = estimate_log_z(noise_logits, num_data).reshape(1)
    ranks = gather_no_grad(local)
    return (torch.logsumexp(ranks, dim=0) - math.log(ranks.numel())).squeeze(0)


@torch.no_grad()
def update_bank_(bank: Tensor, index: Tensor, features: Tensor, momentum: float) -> None:
    """The memory-bank update of InstDisc and CMC, in place:
    ``bank[i] <- normalise(m * bank[i] + (1 - m) * f)`` for the rows ``index`` of ``bank``
    ``(N, D)`` and their new features ``f`` (``(B, D)``, cast to the bank's dtype),
    with ``m = momentum``. ``bank`` may be a view (one view's slice of a stacked bank)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"bank momentum must lie in [0, 1], got {momentum}")
    slots = bank[index]
    mixed = momentum * slots + (1 - momentum) * features.to(slots.dtype)
    bank.index_copy_(0, index, F.normalize(mixed, dim=1))


def nce_loss(
    positive_logits: Tensor,
    noise_logits: Tensor,
    log_z: Tensor | float,
    num_data: int,
) -> Tensor:
    """InstDisc NCE loss, averaged over the batch.

    ``positive_logits`` ``(B,)``: ``v_b . f_{i_b} / tau`` with the example's own slot;
    ``noise_logits`` ``(B, K)``: ``v_b . f_{n_bk} / tau`` with K uniformly drawn slots;
    ``log_z``: the (fixed) log normaliser; ``num_data``: the bank size N. Per example
    the loss is ``-log h(pos) - sum_k log(1 - h(noise_k))`` with
    ``h = P / (P + K/N)`` and ``P = exp(logit) / Z``. The gradient does not reach
    ``log_z``.
    """
    _check_num_data(num_data)
    if noise_logits.ndim != 2 or positive_logits.shape != (noise_logits.shape[0],):
        raise ValueError(
            "nce_loss needs positive_logits of shape (B,) and noise_logits of shape (B, K), got "
            f"{tuple(positive_logits.shape)} and {tuple(noise_logits.shape)}"
        )
    num_noise = noise_logits.shape[1]
    if num_noise < 1:
        raise ValueError("nce_loss needs K >= 1 noise logits per example")
    log_z = torch.as_tensor(log_z, device=positive_logits.device).detach()
    # log P(i|v) - log(K/N): the logit of the posterior h.
    shift = log_z.float() + math.log(num_noise / num_data)
    pos = _at_least_float32(positive_logits) - shift
    noise = _at_least_float32(noise_logits) - shift
    per_example = -F.logsigmoid(pos) - F.logsigmoid(-noise).sum(dim=1)
    return per_example.mean()


def bank_logits(features: Tensor, bank: Tensor, index: Tensor, temperature: float) -> Tensor:
    """``features[b] . bank[index[b, k]] / temperature`` for an index of shape ``(B, K)``.

    Takes whichever route needs less memory: the full product ``features @ bank.T``
    (``B x N`` values) then a gather, when ``N <= K * D``; otherwise the ``(B, K, D)``
    gathered bank rows (large banks, few noise slots). Both give the same values and the
    same gradient with respect to ``features``; the products run in at least float32,
    also under autocast.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if features.ndim != 2 or bank.ndim != 2 or features.shape[1] != bank.shape[1]:
        raise ValueError(
            "bank_logits needs features (B, D) and bank (N, D) of the same width, got "
            f"{tuple(features.shape)} and {tuple(bank.shape)}"
        )
    if index.ndim != 2 or index.shape[0] != features.shape[0]:
        raise ValueError(
            f"index must have shape (B, K) with B = {features.shape[0]}, got {tuple(index.shape)}"
        )
    features = _at_least_float32(features)
    bank = bank.to(features.dtype)
    num_data, dim = bank.shape
    # Autocast would run the products in bf16; logits divided by a small temperature
    # need the precision of the inputs.
    with torch.autocast(features.device.type, enabled=False):
        if num_data <= index.shape[1] * dim:
            return (features @ bank.T).gather(1, index) / temperature
        return torch.einsum("bd,bkd->bk", features, bank[index]) / temperature
