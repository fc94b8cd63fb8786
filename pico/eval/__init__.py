"""Evaluation: classification and partial-label metrics, weighted kNN, the linear probe,
and the :class:`Evaluator` that runs them all on a :class:`~pico.data.DataBundle`.

The metrics and the kNN classifier import with torch alone; the rest (scikit-learn,
matplotlib, OmegaConf) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pico._lazy import lazy_exports
from pico.eval.knn import knn_predict
from pico.eval.metrics import (
    approximated_accuracy,
    confusion_matrix,
    covering_rate,
    topk_accuracy,
)

if TYPE_CHECKING:
    from pico.eval.embedding import embedding_figure, tsne_coordinates
    from pico.eval.evaluator import Evaluator, eval_mode
    from pico.eval.features import collect
    from pico.eval.linear import linear_probe

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "embedding_figure": "pico.eval.embedding",
        "tsne_coordinates": "pico.eval.embedding",
        "Evaluator": "pico.eval.evaluator",
        "eval_mode": "pico.eval.evaluator",
        "collect": "pico.eval.features",
        "linear_probe": "pico.eval.linear",
    },
)

__all__ = [
    "Evaluator",
    "approximated_accuracy",
    "collect",
    "confusion_matrix",
    "covering_rate",
    "embedding_figure",
    "eval_mode",
    "knn_predict",
    "linear_probe",
    "topk_accuracy",
    "tsne_coordinates",
]
