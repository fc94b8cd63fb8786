"""Partial-label figures: how well the label estimate of the training rows disambiguates
their candidate sets, drawn from a run's history."""

from __future__ import annotations

from matplotlib.figure import Figure

from pico.eval.plots import History, curve_figure

#: history key of the disambiguation accuracy (see :class:`pico.eval.Evaluator`)
DISAMB_KEY = "train/disamb_acc"


def disambiguation_figure(history: History) -> Figure | None:
    """Share of training rows whose label estimate is their true label, against epochs;
    ``None`` when the history holds no ``train/disamb_acc`` (no partial-label method)."""
    return curve_figure(
        history,
        DISAMB_KEY,
        "Disambiguation: training rows whose label estimate is the true label",
        "disambiguation accuracy (%)",
        percent=True,
    )
