from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pico.eval.embedding import embedding_figure, save_embedding_png, tsne_coordinates


def _clusters(per_class: int = 30, classes: int = 3, dim: int = 10, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen) * 10
    labels = torch.arange(classes).repeat_interleave(per_class)
    return centres[labels] + torch.randn(len(labels), dim, generator=gen), labels


def _knn_accuracy(coords: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out majority vote of the k nearest 2-D neighbours."""
    correct = 0
    for i in range(len(coords)):
        dist = ((coords - coords[i]) ** 2).sum(axis=1)
        dist[i] = np.inf
        votes = np.bincount(labels[np.argsort(dist)[:k]], minlength=labels.max() + 1)
        correct += int(votes.argmax() == labels[i])
    return correct / len(coords)


def test_tsne_keeps_separated_clusters_apart() -> None:
    x, y = _clusters()
    coords, labels = tsne_coordinates(x, y, seed=0)
    assert coords.shape == (90, 2)
    assert np.array_equal(labels, y.numpy())
    assert _knn_accuracy(coords, labels) >= 0.95


def test_subsample_is_seeded_and_respects_max_points() -> None:
    x, y = _clusters(per_class=40)
    a, la = tsne_coordinates(x, y, seed=3, max_points=50)
    b, lb = tsne_coordinates(x, y, seed=3, max_points=50)
    assert a.shape == (50, 2) and np.array_equal(la, lb)
    np.testing.assert_allclose(a, b)
    assert np.bincount(la, minlength=3).min() > 0


def test_figure_is_written_as_png_with_a_legend(tmp_path: Path) -> None:
    x, y = _clusters()
    fig = embedding_figure(x, y, ["cat", "dog", "bird"], seed=0)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["cat", "dog", "bird"]
    path = save_embedding_png(fig, tmp_path / "sub" / "tsne.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000


def test_bad_inputs_raise_value_error() -> None:
    x, y = _clusters()
    with pytest.raises(ValueError, match="class_names"):
        embedding_figure(x, y, ["only", "two"])
    with pytest.raises(ValueError, match="one label per row"):
        tsne_coordinates(x, y[:10])
    with pytest.raises(ValueError, match="at least 3"):
        tsne_coordinates(x[:2], y[:2])
