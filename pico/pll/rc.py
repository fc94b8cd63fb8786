"""RC: the risk-consistent partial-label method (Feng et al., NeurIPS 2020)."""

from __future__ import annotations

from pico.pll.proden import PRODEN


class RC(PRODEN):
    """Risk-consistent PLL: cross-entropy weighted by estimated label posteriors.

    Weights start uniform over each row's candidates. The official code refreshes the
    rows of a batch after the optimizer step: a second forward pass of the updated model
    on the same batch gives ``softmax(outputs) * Y``, renormalised over the candidates.
    This library makes no second pass: during the step, the rows take the detached
    probabilities of the step's own forward pass, restricted to the candidates and
    renormalised (after the loss has used the old weights). The new weights thus come
    from the model before this step's update, one optimizer step older than the
    reference's, and BatchNorm sees each batch once (the reference's second pass runs in
    training mode: batch statistics, and a second update of the running statistics).
    Here a row is refreshed each time its batch is trained on: at most once per epoch,
    since the loader drops each epoch's last incomplete batch. Refreshed this way,
    RC's estimate is PRODEN's update rule, so one implementation serves both; the method
    keeps its own name for comparisons.
    """

    method_name = "rc"
