"""TensorBoard scalars and figures, written by the main process only."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


class RunLogger:
    """Thin TensorBoard writer that does nothing on non-main ranks."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log each ``name: value`` at ``step``."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def figure(self, tag: str, figure: Figure, step: int) -> None:
        """Log a matplotlib figure (closed afterwards)."""
        if self.writer is None:
            return
        self.writer.add_figure(tag, figure, step, close=True)

    def close(self) -> None:
        """Flush and close the writer."""
        if self.writer is not None:
            self.writer.close()
