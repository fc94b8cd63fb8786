"""The run's figures: PNGs in run_dir/figures, confusion counts, integer epoch ticks,
titles naming split and epoch, row proportions with many classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from pico.cli import run_evaluation, run_training
from pico.engine.checkpoint import load_checkpoint
from pico.eval.embedding import embedding_figure
from pico.eval.evaluator import eval_mode
from pico.eval.plots import accuracy_figure, confusion_figure, curve_figure, loss_figure
from pico.eval.run_figures import write_confusion_figure, write_history_figures
from pico.experiment import build_experiment
from pico.pll.plots import disambiguation_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> tuple[int, int]:
    """A readable PNG of a sensible size; returns (width, height)."""
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert 300 <= width <= 3000 and 250 <= height <= 3000, (path, image.size)
    assert pixels.std() > 5, f"{path} is nearly blank"
    return width, height


def _naive_counts(predicted: list[int], targets: list[int], classes: int) -> np.ndarray:
    counts = np.zeros((classes, classes), dtype=np.int64)
    for p, t in zip(predicted, targets, strict=True):
        counts[t][p] += 1
    return counts


def _cell_texts(fig: Figure, classes: int) -> np.ndarray:
    """The integers written in the confusion cells, placed by their (x, y) position."""
    cells = np.full((classes, classes), -1, dtype=np.int64)
    for text in fig.axes[0].texts:
        x, y = text.get_position()
        cells[round(y), round(x)] = int(text.get_text())
    return cells


def _history(epochs: int = 3) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            "train/loss": 2.0 / e,
            "train/cls": 1.0 / e,
            "train/disamb_acc": 0.5 + 0.1 * e,
            "val/approx_acc": 0.4 + 0.1 * e,
            "test/top1": 0.3 + 0.1 * e,
        }
        for e in range(1, epochs + 1)
    ]


def test_digits_run_writes_the_figures(make_config, tmp_path, monkeypatch):
    run_training(
        make_config(
            "method=proden", "trainer.epochs=3", "trainer.figure_every=2", "trainer.threads=1"
        )
    )
    run = tmp_path / "run"
    figures = run / "figures"
    names = {p.name for p in figures.glob("*.png")}
    assert names == {"confusion.png", "losses.png", "accuracy.png", "disambiguation.png"}
    for path in [*figures.glob("*.png"), run / "embedding.png"]:
        _check_png(path)
    # the curves come from the history metrics.json holds: redrawn from it, they are alike
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    again = write_history_figures(tmp_path / "again", history)
    assert {p.name for p in again} == names - {"confusion.png"}

    # the trainer's confusion matrix counts the classifier's test predictions
    exp = build_experiment(make_config("method=proden"))
    exp.method.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["method"])
    test = exp.bundle.test
    predicted = []
    with eval_mode(exp.method), torch.no_grad():
        for row in test.inputs:  # one image at a time
            logits = exp.method.logits(exp.evaluator.preprocess(row[None].to(exp.device)))
            predicted.append(int(logits.argmax()))
    naive = _naive_counts(predicted, test.targets.tolist(), exp.bundle.num_classes)
    matrix = exp.evaluator.test_confusion(exp.method)
    assert matrix is not None
    np.testing.assert_array_equal(matrix.numpy(), naive)
    fig = confusion_figure(matrix, exp.bundle.class_names, epoch=3)
    np.testing.assert_array_equal(_cell_texts(fig, exp.bundle.num_classes), naive)

    # pico-eval's t-SNE is titled with split and the checkpoint's epoch
    drawn: list[Figure] = []

    def keep(*args, **kwargs) -> Figure:
        drawn.append(embedding_figure(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr("pico.eval.evaluator.embedding_figure", keep)
    run_evaluation(run / "checkpoints" / "last.pt", device="cpu", out=tmp_path / "eval")
    assert [f.axes[0].get_title() for f in drawn] == ["t-SNE of test features, epoch 3"]


def test_confusion_cells_hold_naive_counts_with_a_colour_bar(tmp_path):
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 7, (400,), generator=gen).tolist()
    predicted = torch.randint(0, 7, (400,), generator=gen).tolist()
    naive = _naive_counts(predicted, targets, 7)
    names = [f"class {c}" for c in range(7)]
    fig = confusion_figure(naive.copy(), names, split="test", epoch=12)
    np.testing.assert_array_equal(_cell_texts(fig, 7), naive)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), naive)
    assert len(fig.axes) == 2, "a colour bar"
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert "test" in ax.get_title() and "epoch 12" in ax.get_title()
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    _check_png(write_confusion_figure(tmp_path, naive, names, epoch=12))


def test_many_classes_normalise_rows_without_cell_text():
    gen = torch.Generator().manual_seed(1)
    classes = 30
    counts = torch.randint(0, 50, (classes, classes), generator=gen)
    counts[4] = 0  # a class without test images: its row stays zero
    fig = confusion_figure(counts, [f"c{c}" for c in range(classes)], epoch=5)
    ax = fig.axes[0]
    assert not ax.texts
    shown = np.asarray(ax.images[0].get_array())
    sums = shown.sum(axis=1)
    np.testing.assert_allclose(np.delete(sums, 4), 1.0)
    assert sums[4] == 0
    np.testing.assert_allclose(shown[0], counts[0].numpy() / counts[0].sum().item())
    assert ax.images[0].get_clim() == (0.0, 1.0)
    assert len(fig.axes) == 2
    assert "proportions" in ax.get_title()


def test_class_names_thin_out_when_they_do_not_fit():
    classes = 400
    fig = confusion_figure(np.eye(classes, dtype=np.int64), [f"c{c}" for c in range(classes)])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert 10 < len(labels) < classes and labels[0] == "c0"


def _xticks(fig: Figure) -> list[np.ndarray]:
    FigureCanvasAgg(fig).draw()
    return [ax.get_xticks() for ax in fig.axes if ax.axison]


@pytest.mark.parametrize("epochs", [1, 2, 3, 7])
def test_curves_have_integer_epoch_ticks_and_labelled_axes(epochs):
    history = _history(epochs)
    figures = [
        loss_figure(history),
        accuracy_figure(history),
        disambiguation_figure(history),
        curve_figure(history, "test/top1", "test", "top-1"),
    ]
    for fig in figures:
        assert fig is not None
        for ticks in _xticks(fig):
            assert len(ticks) and np.array_equal(ticks, np.round(ticks)), ticks
        for ax in fig.axes:
            if ax.axison:
                assert ax.get_xlabel() == "epoch" and ax.get_ylabel()


def test_loss_panels_are_the_train_terms_only():
    fig = loss_figure(_history())
    assert fig is not None
    assert [ax.get_title() for ax in fig.axes if ax.axison] == ["train/loss", "train/cls"]


def test_disambiguation_curve_only_for_partial_label_histories(tmp_path):
    plain = [{k: v for k, v in r.items() if k != "train/disamb_acc"} for r in _history()]
    assert disambiguation_figure(plain) is None
    written = write_history_figures(tmp_path, plain)
    assert {p.name for p in written} == {"losses.png", "accuracy.png"}
    logged: list[str] = []

    class Sink:
        def figure(self, tag: str, figure: Figure, step: int) -> None:
            logged.append(tag)

    written = write_history_figures(tmp_path / "pll", _history(), Sink(), step=9)
    assert {p.name for p in written} == {"losses.png", "accuracy.png", "disambiguation.png"}
    assert logged == ["train/losses", "eval/accuracy", "train/disambiguation"]
    for path in written:
        _check_png(path)


def test_embedding_title_names_split_and_epoch():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=gen), torch.arange(3).repeat(20)
    fig = embedding_figure(x, y, ["a", "b", "c"], split="test", epoch=100)
    assert fig.axes[0].get_title() == "t-SNE of test features, epoch 100"
    fig = embedding_figure(x, y, ["a", "b", "c"], max_points=30, split="val", epoch=4)
    assert fig.axes[0].get_title() == "t-SNE of val features, epoch 4 (30 of 60 rows)"
