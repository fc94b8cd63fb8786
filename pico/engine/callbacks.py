"""Callbacks: what a run does besides training, at fixed points of
:meth:`~pico.engine.trainer.Trainer.fit`.

The trainer calls its default callbacks (:meth:`~pico.engine.trainer.Trainer.default_callbacks`:
the figures, :class:`BestCheckpoint` and :class:`MetricsFile`), then those passed as
``Trainer(..., callbacks=[...])``, in that order. Every hook receives the trainer (its
``cfg``, ``run_dir``, ``ckpt_dir`` and ``main``, true on the process that writes files)
and the :class:`~pico.engine.trainer.Run` (method, evaluator, loggers, ``state`` with
``epoch``, ``step``, ``history`` and ``best``).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from pico.engine.checkpoint import save_checkpoint

if TYPE_CHECKING:
    from pico.engine.trainer import Run, Trainer

# what a run prints stays under the trainer's name (hydra.verbose=pico.engine.trainer)
log = logging.getLogger("pico.engine.trainer")


class Callback:
    """Base of the callbacks; every hook does nothing. Hooks run on every process, except
    :meth:`on_save_checkpoint`, which runs where checkpoints are written (rank 0)."""

    def on_fit_start(self, trainer: Trainer, run: Run) -> None:
        """Before the first epoch, after a resume has restored the run."""

    def on_epoch_end(self, trainer: Trainer, run: Run, record: dict[str, float]) -> None:
        """After the epoch's evaluation and logging, before its checkpoint; ``record`` is
        the epoch's entry of ``run.state["history"]`` (``epoch``, the mean loss terms
        ``train/<term>`` and, in an evaluated epoch, the metrics)."""

    def on_save_checkpoint(
        self, trainer: Trainer, run: Run, checkpoint: dict[str, Any], epoch: int | None
    ) -> None:
        """Before ``last.pt`` is written from ``checkpoint`` (with its checksum): at the end
        of ``epoch`` (1-based), or inside an epoch when ``epoch`` is ``None``."""

    def on_fit_end(self, trainer: Trainer, run: Run, result: dict[str, Any]) -> None:
        """After the last epoch, the loggers closed; ``result`` is what ``fit`` returns. A
        run stopped early (signal, error) does not get here."""


class BestCheckpoint(Callback):
    """Model selection on ``metric`` (``eval.select_metric``; ``mode`` ``max`` or ``min``):
    an epoch whose record holds it, at least as good as the best so far, becomes
    ``run.state["best"]`` and its checkpoint is written as ``best.pt``, before ``last.pt``
    (a kill between the writes leaves ``last.pt`` one epoch behind; resuming redoes that
    epoch and rewrites both). Ties go to the later epoch: same score, more training. The
    first evaluated epoch without ``metric`` logs a warning that no ``best.pt`` will be
    written."""

    def __init__(self, metric: str, mode: str = "max") -> None:
        self.metric = metric
        self.sign = 1.0 if mode == "max" else -1.0
        #: whether the epoch that just ended became the best
        self.improved = False
        self._reported = False

    def on_epoch_end(self, trainer: Trainer, run: Run, record: dict[str, float]) -> None:
        metric, best = self.metric, run.state["best"]
        evaluated = trainer.evaluates(int(record["epoch"]), run.epochs)
        if evaluated and not self._reported and metric not in record:
            log.warning(
                "eval.select_metric=%s is not among this run's metrics %s: no best.pt will be "
                "written",
                metric,
                sorted(k for k in record if k != "epoch"),
            )
        self._reported = self._reported or evaluated
        self.improved = metric in record and (
            best is None or self.sign * record[metric] >= self.sign * best[metric]
        )
        if self.improved:
            run.state["best"] = record

    def on_save_checkpoint(
        self, trainer: Trainer, run: Run, checkpoint: dict[str, Any], epoch: int | None
    ) -> None:
        if epoch is not None and self.improved:
            save_checkpoint(checkpoint, trainer.ckpt_dir / "best.pt")


class MetricsFile(Callback):
    """``run_dir/metrics.json``: the result of ``fit`` (final and best records, the
    selection metric, training time and throughput, per-epoch history), from rank 0."""

    def on_fit_end(self, trainer: Trainer, run: Run, result: dict[str, Any]) -> None:
        if trainer.main:
            (trainer.run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
