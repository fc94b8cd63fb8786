"""Metric loggers behind ``trainer.loggers`` (default ``[tensorboard]``).

Every scalar goes against one step axis, the global optimizer step:

- ``train/<term>``, ``train/lr``, ``train/images_per_s``: every ``trainer.log_every``
  steps and at each epoch's last step (the running mean of the epoch so far);
- ``epoch/train/<term>``: the epoch's mean, once per epoch, at the epoch's last step;
- ``epoch/epoch``: the epoch number (1-based) at that step, to map steps to epochs;
- evaluation scalars (``val/...``, ``test/...``, ``train/disamb_acc``) and figures: once
  per evaluated epoch, at the epoch's last step.

Choices: ``tensorboard`` (``tensorboard/`` in the run directory), ``csv``
(``metrics.csv``: one ``step,epoch,tag,value`` row per scalar, flushed every epoch;
``pandas.read_csv(path).pivot_table(index="step", columns="tag", values="value")``
gives one column per tag), and, where their packages are installed, ``wandb`` and
``mlflow``, both offline, writing into the run directory.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.figure import Figure

#: logger name -> the package it needs (``None``: always available)
LOGGERS: dict[str, str | None] = {
    "tensorboard": None,
    "csv": None,
    "wandb": "wandb",
    "mlflow": "mlflow",
}


def resolve_logger_names(names: Iterable[str] | str | None) -> list[str]:
    """Check ``trainer.loggers``: known names whose packages are importable, no repeats.

    Raises ``ValueError`` naming the key and the choices, or the missing package."""
    if names is None:
        return ["tensorboard"]
    if isinstance(names, str):
        names = [names]
    names = [str(n) for n in names]
    for name in names:
        if name not in LOGGERS:
            raise ValueError(
                f"trainer.loggers: unknown logger {name!r}; choose from {list(LOGGERS)}, "
                "e.g. trainer.loggers=[tensorboard,csv]"
            )
        package = LOGGERS[name]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ValueError(
                f"trainer.loggers: {name!r} needs the {package} package, which is not "
                f"installed; pip install {package}, or drop {name} from trainer.loggers"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"trainer.loggers={names} names a logger twice")
    return names


class TensorBoardLogger:
    """Scalars and figures in ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def scalars(self, values: dict[str, float], step: int, epoch: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def figure(self, tag: str, figure: Figure, step: int) -> None:
        self.writer.add_figure(tag, figure, step, close=False)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CSVLogger:
    """``run_dir/metrics.csv``: long format, one ``step,epoch,tag,value`` row per scalar.

    A fresh run starts the file anew; a resumed run keeps the rows up to its checkpoint's
    step and appends after them."""

    FIELDS = ("step", "epoch", "tag", "value")

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.csv"
        kept: list[list[str]] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = list(csv.reader(f))[1:]
            kept = [r for r in rows if len(r) == 4 and r[0].isdigit() and int(r[0]) <= resume_step]
        self.file = self.path.open("w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.FIELDS)
        self.writer.writerows(kept)

    def scalars(self, values: dict[str, float], step: int, epoch: int) -> None:
        for name, value in values.items():
            self.writer.writerow((step, epoch, name, repr(float(value))))

    def figure(self, tag: str, figure: Figure, step: int) -> None:
        pass

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class WandbLogger:
    """Weights & Biases, offline (``wandb sync`` uploads later), into ``run_dir/wandb``."""

    def __init__(self, run_dir: Path) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(dir=str(run_dir), mode="offline", name=run_dir.name)

    def scalars(self, values: dict[str, float], step: int, epoch: int) -> None:
        self.run.log(dict(values), step=step)

    def figure(self, tag: str, figure: Figure, step: int) -> None:
        self.run.log({tag: self.wandb.Image(figure)}, step=step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


class MLflowLogger:
    """MLflow with a local file store in ``run_dir/mlruns``."""

    def __init__(self, run_dir: Path) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        self.run = mlflow.start_run(run_name=run_dir.name)

    def scalars(self, values: dict[str, float], step: int, epoch: int) -> None:
        # MLflow metric names may not hold every character TensorBoard tags do
        self.mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def figure(self, tag: str, figure: Figure, step: int) -> None:
        self.mlflow.log_figure(figure, f"{tag}_{step:08d}.png")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.mlflow.end_run()


class RunLoggers:
    """The loggers of ``trainer.loggers``, fed together; nothing on non-main ranks."""

    def __init__(
        self,
        run_dir: Path,
        names: Sequence[str] | None = None,
        enabled: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.loggers: list = []
        if not enabled:
            return
        for name in resolve_logger_names(names):
            if name == "tensorboard":
                self.loggers.append(TensorBoardLogger(run_dir))
            elif name == "csv":
                self.loggers.append(CSVLogger(run_dir, resume_step))
            elif name == "wandb":
                self.loggers.append(WandbLogger(run_dir))
            elif name == "mlflow":
                self.loggers.append(MLflowLogger(run_dir))

    def scalars(self, values: dict[str, float], step: int, epoch: int) -> None:
        """Log each ``name: value`` at global ``step``, during 1-based ``epoch``."""
        for logger in self.loggers:
            logger.scalars(values, step, epoch)

    def figure(self, tag: str, figure: Figure, step: int) -> None:
        """Log a matplotlib figure at global ``step`` (closed afterwards)."""
        import matplotlib.pyplot as plt

        for logger in self.loggers:
            logger.figure(tag, figure, step)
        plt.close(figure)

    def flush(self) -> None:
        """Write buffered rows and events out (once per epoch)."""
        for logger in self.loggers:
            logger.flush()

    def close(self) -> None:
        """Flush and close every logger."""
        for logger in self.loggers:
            logger.close()
