"""The figures of a run, written as PNGs into ``run_dir/figures`` and handed to the
metric loggers (TensorBoard, ...): the test confusion matrix and the curves of the
run's history. :class:`~pico.engine.trainer.Trainer` calls it at ``trainer.figure_every``
and after the last epoch; ``write_history_figures(folder, metrics["history"])`` redraws
the curves of a finished run from its ``metrics.json``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from pico.eval.plots import History, accuracy_figure, confusion_figure, loss_figure, save_png

HistoryFigure = Callable[[History], Figure | None]


class FigureSink(Protocol):
    """Where figures are logged besides the PNGs (:class:`~pico.engine.loggers.RunLoggers`)."""

    def figure(self, tag: str, figure: Figure, step: int) -> None: ...


def history_figures() -> list[tuple[str, str, HistoryFigure]]:
    """(file stem, logger tag, builder) of each curve; a builder returns ``None`` when the
    history holds none of its values, so the partial-label curve appears only in runs
    that report ``train/disamb_acc``."""
    from pico.pll.plots import disambiguation_figure

    return [
        ("losses", "train/losses", loss_figure),
        ("accuracy", "eval/accuracy", accuracy_figure),
        ("disambiguation", "train/disambiguation", disambiguation_figure),
    ]


def _emit(fig: Figure, path: Path, tag: str, sink: FigureSink | None, step: int) -> Path:
    save_png(fig, path)
    if sink is not None:
        sink.figure(tag, fig, step)
    return path


def write_history_figures(
    folder: str | Path, history: History, sink: FigureSink | None = None, step: int = 0
) -> list[Path]:
    """Draw every curve the history supports into ``folder/<stem>.png`` (replacing the
    previous ones) and log them to ``sink`` at ``step``; returns the written paths."""
    written = []
    for stem, tag, build in history_figures():
        fig = build(history)
        if fig is not None:
            written.append(_emit(fig, Path(folder) / f"{stem}.png", tag, sink, step))
    return written


def write_confusion_figure(
    folder: str | Path,
    matrix: Tensor | np.ndarray,
    class_names: Sequence[str],
    epoch: int | None = None,
    sink: FigureSink | None = None,
    step: int = 0,
    split: str = "test",
) -> Path:
    """Draw the confusion matrix of ``split`` into ``folder/confusion.png`` (the newest one
    stays) and log it to ``sink`` as ``<split>/confusion``; returns the path."""
    fig = confusion_figure(matrix, class_names, split=split, epoch=epoch)
    return _emit(fig, Path(folder) / "confusion.png", f"{split}/confusion", sink, step)
