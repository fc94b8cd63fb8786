"""Matplotlib figures for TensorBoard and run directories.

Figures are plain ``matplotlib.figure.Figure`` objects on an Agg canvas (not
pyplot-managed): they need no GUI backend, leave pyplot's backend alone and are freed
when dropped. Curves read a run's history, the list of epoch
records of ``metrics.json`` (``{"epoch": 3, "train/loss": ..., "test/top1": ...}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

#: above this many classes the confusion matrix shows row proportions, without cell text
COUNT_CELLS_MAX_CLASSES = 20
#: ``train/`` keys of the history that are evaluations, not loss terms
NOT_LOSSES = frozenset({"train/disamb_acc"})

History = Sequence[Mapping[str, float]]


def agg_figure(width: float, height: float) -> Figure:
    """A ``width`` x ``height`` inch figure drawn by Agg, whatever pyplot's backend is."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` (parent folders created); returns the path.

    A failed write (a full disk) removes the partial file and raises the ``OSError``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    except OSError:
        path.unlink(missing_ok=True)
        raise
    return path


def _tick_labels(ax: Axes, class_names: Sequence[str], axes_inches: float) -> None:
    """Class names on both axes: every class while a label gets 5 pt, else every k-th."""
    n = len(class_names)
    cell_pt = 72 * axes_inches / max(n, 1)
    stride = 1 if cell_pt >= 5 else math.ceil(5 / cell_pt)
    ticks = list(range(0, n, stride))
    names = [class_names[i] for i in ticks]
    size = min(9.0, max(5.0, 0.8 * cell_pt * stride))
    ax.set_xticks(ticks, names, rotation=90 if max(map(len, names), default=0) > 2 else 0)
    ax.set_yticks(ticks, names)
    ax.tick_params(labelsize=size)


def confusion_figure(
    matrix: Tensor | np.ndarray,
    class_names: Sequence[str],
    split: str = "test",
    epoch: int | None = None,
    normalise: bool | None = None,
) -> Figure:
    """Confusion matrix (rows: true class, columns: predicted) as a heat map with a colour
    bar. Up to :data:`COUNT_CELLS_MAX_CLASSES` classes the cells hold their counts; with
    more (or ``normalise=True``) each row is divided by its total and the cells hold no text.
    """
    counts = np.asarray(matrix.cpu() if isinstance(matrix, Tensor) else matrix, dtype=np.int64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"a confusion matrix of {n} classes is {n}x{n}, got {counts.shape}")
    if normalise is None:
        normalise = n > COUNT_CELLS_MAX_CLASSES
    total = int(counts.sum())
    accuracy = np.trace(counts) / total if total else 0.0
    side = min(12.0, max(5.0, 0.45 * n))
    fig = agg_figure(side + 1.2, side)
    ax = fig.add_subplot()
    if normalise:
        values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0)
        bar_label = "proportion of the true class"
    else:
        values = counts
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(int(counts.max()), 1))
        bar_label = f"{split} images"
        size = 9 if n <= 10 else 7
        threshold = 0.5 * max(int(counts.max()), 1)
        for i in range(n):
            for j in range(n):
                value = counts[i, j]
                colour = "white" if value > threshold else "black" if value else "0.7"
                ax.text(
                    j, i, str(counts[i, j]), ha="center", va="center", fontsize=size, color=colour
                )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=bar_label)
    _tick_labels(ax, class_names, 0.8 * side)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    when = "" if epoch is None else f", epoch {epoch}"
    shown = "row proportions" if normalise else "counts"
    ax.set_title(
        f"Confusion matrix, {split} split{when}\n"
        f"{total} images, top-1 {100 * accuracy:.1f}% ({shown})"
    )
    fig.tight_layout()
    return fig


def _epoch_axes(ax: Axes, ylabel: str) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10], min_n_ticks=1))
    ax.grid(alpha=0.3)


def _series(history: History, key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key``, over the records that hold it."""
    rows = [(int(r["epoch"]), float(r[key])) for r in history if key in r]
    return [e for e, _ in rows], [v for _, v in rows]


def _marker(points: int) -> str | None:
    return "o" if points <= 30 else None


def curve_figure(
    history: History, key: str, title: str, ylabel: str, percent: bool = False
) -> Figure | None:
    """One metric of the history against epochs (``None`` when no record holds ``key``)."""
    epochs, values = _series(history, key)
    if not epochs:
        return None
    fig = agg_figure(6, 4)
    ax = fig.add_subplot()
    scale = 100.0 if percent else 1.0
    ax.plot(epochs, [scale * v for v in values], marker=_marker(len(epochs)), markersize=3)
    _epoch_axes(ax, ylabel)
    if percent:
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), 101.0)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def loss_figure(history: History) -> Figure | None:
    """One panel per training loss term (the ``train/*`` epoch means), or ``None``."""
    keys = sorted(
        {k for r in history for k in r if k.startswith("train/") and k not in NOT_LOSSES},
        key=lambda k: (k != "train/loss", k),
    )
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = agg_figure(4 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        epochs, values = _series(history, key)
        ax.plot(epochs, values, marker=_marker(len(epochs)), markersize=3)
        _epoch_axes(ax, "loss (epoch mean)")
        ax.set_title(key)
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    fig.suptitle("Training losses")
    fig.tight_layout()
    return fig


def accuracy_figure(history: History) -> Figure | None:
    """Validation (dashed) and test (solid) metrics in percent, or ``None`` without any."""
    keys = sorted(
        {k for r in history for k in r if k.startswith(("val/", "test/"))},
        key=lambda k: (k.split("/", 1)[1], k.startswith("test/")),
    )
    if not keys:
        return None
    names = sorted({k.split("/", 1)[1] for k in keys})
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    fig = agg_figure(7, 4.2)
    ax = fig.add_subplot()
    for key in keys:
        split, name = key.split("/", 1)
        epochs, values = _series(history, key)
        ax.plot(
            epochs,
            [100 * v for v in values],
            color=colours[name],
            linestyle="--" if split == "val" else "-",
            marker=_marker(len(epochs)),
            markersize=3,
            label=key,
        )
    _epoch_axes(ax, "accuracy / rate (%)")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 101.0)
    ax.set_title("Validation (dashed) and test (solid) accuracy")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig
