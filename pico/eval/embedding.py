"""t-SNE pictures of learned features, coloured by class.

Figures are plain ``matplotlib.figure.Figure`` objects (not pyplot-managed), so they
need no GUI backend and are freed when dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from torch import Tensor

from pico.eval.plots import agg_figure, save_png


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def tsne_coordinates(
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    seed: int = 0,
    max_points: int = 2000,
) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of at most ``max_points`` rows drawn with ``seed``; returns (coords, labels).

    Rows are subsampled uniformly without replacement when there are more than
    ``max_points``; the perplexity is 30, lowered for very small samples (t-SNE needs
    perplexity < rows).
    """
    x = _as_numpy(features).astype(np.float32)
    y = _as_numpy(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(
            "embedding needs 2-D features and one label per row, got features "
            f"{x.shape} and labels {y.shape}"
        )
    if x.shape[0] < 3:
        raise ValueError(f"t-SNE needs at least 3 rows, got {x.shape[0]}")
    if max_points < 3:
        raise ValueError(f"max_points must be >= 3, got {max_points}")
    rng = np.random.default_rng(seed)
    if x.shape[0] > max_points:
        keep = np.sort(rng.choice(x.shape[0], size=max_points, replace=False))
        x, y = x[keep], y[keep]
    perplexity = min(30.0, (x.shape[0] - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(x), y


def _class_colours(num_classes: int) -> list[tuple[float, ...]]:
    """Distinct qualitative colours up to 20 classes, a continuous colour map beyond."""
    if num_classes <= 20:
        cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
        return [cmap(c) for c in range(num_classes)]
    cmap = colormaps["turbo"]
    return [cmap(c / (num_classes - 1)) for c in range(num_classes)]


def embedding_title(split: str | None = None, epoch: int | None = None) -> str:
    """``"t-SNE of test features, epoch 100"``; the split or epoch left out when ``None``."""
    title = "t-SNE of features" if split is None else f"t-SNE of {split} features"
    return title if epoch is None else f"{title}, epoch {epoch}"


def embedding_figure(
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    class_names: list[str],
    seed: int = 0,
    max_points: int = 2000,
    split: str | None = None,
    epoch: int | None = None,
) -> Figure:
    """Scatter plot of the t-SNE of ``features`` (see :func:`tsne_coordinates`), one colour
    per class, with a legend of ``class_names`` (label ``c`` is ``class_names[c]``), titled
    with ``split`` and ``epoch`` when given (:func:`embedding_title`)."""
    y = _as_numpy(labels)
    if y.size and (y.min() < 0 or y.max() >= len(class_names)):
        raise ValueError(
            f"labels must lie in [0, {len(class_names)}) to index class_names, got range "
            f"[{y.min()}, {y.max()}]"
        )
    coords, y = tsne_coordinates(features, y, seed=seed, max_points=max_points)
    colours = _class_colours(len(class_names))
    fig = agg_figure(6, 5)
    ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        mask = y == c
        if mask.any():
            ax.scatter(coords[mask, 0], coords[mask, 1], s=6, color=colours[c], label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    shown = "" if len(coords) == len(features) else f" ({len(coords)} of {len(features)} rows)"
    ax.set_title(embedding_title(split, epoch) + shown)
    columns = -(-len(class_names) // 25)
    ax.legend(
        loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2, ncols=columns
    )
    fig.tight_layout()
    return fig


def save_embedding_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` (parent folders created); returns the path."""
    return save_png(fig, path)
