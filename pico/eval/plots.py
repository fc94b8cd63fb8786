"""Matplotlib figures for TensorBoard and run directories."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor


def confusion_figure(matrix: Tensor, class_names: list[str]) -> Figure:
    """Row-normalised confusion matrix (rows = true class) as a heat map."""
    rates = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    size = max(4.0, 0.35 * len(class_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig


def curve_figure(values: list[float], title: str) -> Figure:
    """A single metric against epochs."""
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3)
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
