"""The figures of a run, written as PNGs into ``run_dir/figures`` and handed to the
metric loggers (TensorBoard, ...): the test confusion matrix and the curves of the
run's history, and after the last epoch the t-SNE ``embedding.png``. :class:`RunFigures`
is the trainer's callback that draws them; ``write_history_figures(folder,
metrics["history"])`` redraws the curves of a finished run from its ``metrics.json``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from pico.engine.callbacks import Callback
from pico.eval.embedding import save_embedding_png
from pico.eval.plots import History, accuracy_figure, confusion_figure, loss_figure, save_png

if TYPE_CHECKING:
    from pico.engine.trainer import Run, Trainer

# what a run prints stays under the trainer's name (hydra.verbose=pico.engine.trainer)
log = logging.getLogger("pico.engine.trainer")

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


class RunFigures(Callback):
    """The figures of a run (rank 0): every ``every`` epochs and after the last, the test
    confusion matrix and the history curves into ``run_dir/figures`` and the loggers
    (replacing the previous ones); after the last epoch, with ``embedding``, the t-SNE of
    the test features as ``run_dir/embedding.png``. A figure that cannot be written is a
    warning, not the end of the run."""

    def __init__(self, every: int, embedding: bool = True) -> None:
        self.every = every
        self.embedding = embedding

    def on_epoch_end(self, trainer: Trainer, run: Run, record: dict[str, float]) -> None:
        if not trainer.main:
            return
        epoch, step = run.state["epoch"], run.state["step"]
        last = epoch == run.epochs
        if epoch % self.every == 0 or last:
            self._figures(trainer.run_dir / "figures", run, epoch, step)
        if last and self.embedding:
            log.info(
                "t-SNE of the test features for embedding.png "
                "(trainer.embedding_figure=false skips it)"
            )
            figure = run.evaluator.embedding(run.method, epoch=epoch)
            save_embedding_png(figure, trainer.run_dir / "embedding.png")
            run.logger.figure("test/embedding", figure, step)

    @staticmethod
    def _figures(folder: Path, run: Run, epoch: int, step: int) -> None:
        """Test confusion matrix and history curves of ``epoch`` at global ``step``."""
        matrix = run.evaluator.test_confusion(run.method)
        try:
            if matrix is not None:
                write_confusion_figure(
                    folder, matrix, run.bundle.class_names, epoch, run.logger, step
                )
            write_history_figures(folder, run.state["history"], run.logger, step)
        except OSError as err:  # a figure is not worth the run: the checkpoint decides
            log.warning("figures of epoch %d not written to %s: %s", epoch, folder, err)
