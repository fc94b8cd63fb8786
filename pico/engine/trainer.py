"""The one training loop every method runs on."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from pico.core.distributed import (
    all_reduce_sum,
    broadcast_object,
    get_rank,
    get_world_size,
    is_main_process,
)
from pico.data.augment import BatchAugment
from pico.data.bundle import DataBundle
from pico.engine.callbacks import BestCheckpoint, Callback, MetricsFile
from pico.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    newest_loadable,
    save_checkpoint,
    with_checksum,
)
from pico.engine.distributed_run import (
    average_bn_statistics_,
    convert_sync_bn,
    resolve_device,
    wrap_training_step,
)
from pico.engine.loader import TensorLoader
from pico.engine.loggers import RunLoggers, resolve_logger_names
from pico.engine.method import Batch, Method, StepInfo
from pico.engine.optim import build_optimizer, scale_weight_decay_, warmup_cosine
from pico.engine.stop import RunStopped, StopRequest
from pico.engine.trainer_config import TrainerConfig
from pico.eval.evaluator import Evaluator
from pico.eval.run_figures import RunFigures

log = logging.getLogger(__name__)


def epoch_line(record: dict[str, float], epochs: int, select_metric: str, improved: bool) -> str:
    """The console line of an epoch: its training losses, the selection metric, test
    top-1 and (partial-label runs) the disambiguation accuracy, marked ``(best)`` when
    ``best.pt`` was written; ``metrics.json`` and the loggers hold every metric."""
    shown = [k for k in record if k.startswith("train/") and k != "train/disamb_acc"]
    for key in (select_metric, "test/top1", "train/disamb_acc"):
        if key in record and key not in shown:
            shown.append(key)
    cells = " ".join(f"{key}={record[key]:.4f}" for key in shown)
    return f"epoch {int(record['epoch'])}/{epochs}: {cells}" + (" (best)" if improved else "")


@dataclass
class Run:
    """Everything one call of :meth:`Trainer.fit` works with; the callbacks receive it.

    ``state`` is what every checkpoint carries besides the method, optimizer and RNG
    states (:data:`FRESH_STATE`: ``epoch`` and ``step`` done, ``history``, ``best``, ...).
    """

    method: Method
    step: torch.nn.Module
    bundle: DataBundle
    augmenters: dict[str, BatchAugment]
    evaluator: Evaluator
    loader: TensorLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    logger: RunLoggers
    generator: torch.Generator
    state: dict[str, Any]
    epochs: int
    stop: StopRequest
    callbacks: Sequence[Callback] = ()
    select_metric: str = ""
    config_yaml: str = ""
    fingerprint: dict[str, str] | None = None
    images_seen: int = 0


# Run state saved in every checkpoint. ``batch`` > 0 marks a checkpoint inside an epoch,
# with the loss sums (averaged over the processes) of that point.
FRESH_STATE: dict[str, Any] = {
    "epoch": 0,
    "step": 0,
    "batch": 0,
    "skipped": 0,
    "best": None,
    "sums": {},
    "history": [],
}


def augmentation_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Seed of the augmentation generator for one optimizer step of one process.

    The generator is reseeded before every step from ``(seed, epoch, step, rank)``, so
    no generator state needs saving and a run resumed at any step, with any process
    count, draws the augmentations an uninterrupted run with that count would draw.
    """
    key = f"{seed}/{epoch}/{step}/{rank}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def set_determinism(enabled: bool) -> None:
    """Deterministic algorithms everywhere (``trainer.deterministic``).

    On CPU, training is already bit-reproducible for a seed. On CUDA this also makes
    cuBLAS and cuDNN deterministic (slower); ops without a deterministic CUDA kernel then
    raise an error instead of running.
    """
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def _rank_mean(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each summed loss term averaged over the processes (the sums themselves in one)."""
    world = get_world_size()
    if world == 1 or not sums:
        return sums
    names = sorted(sums)
    flat = all_reduce_sum(torch.stack([sums[k] for k in names])) / world
    return dict(zip(names, flat.unbind(), strict=True))


#: ``resume`` values that pick the newest good checkpoint of the run directory
AUTO_RESUME = ("auto", "auto_or_new")

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(cfg: TrainerConfig | DictConfig) -> str:
    """The ``torch.compile`` mode of ``trainer.compile_mode``, checked."""
    mode = str(getattr(cfg, "compile_mode", "default"))
    if mode not in COMPILE_MODES:
        raise ValueError(
            f"trainer.compile_mode={mode!r} is not a torch.compile mode; choose one of "
            f"{list(COMPILE_MODES)}"
        )
    return mode


def planned_epochs(cfg: TrainerConfig | DictConfig, steps_per_epoch: int) -> int:
    """Epochs of the run: ``cfg.epochs``, or with a step budget ``cfg.steps`` as many
    epochs as it takes to make that many optimizer steps; ``cfg.max_steps`` caps either
    (the run ends with the epoch that reaches it). The last epoch is always completed."""
    epochs = int(cfg.epochs)
    for key in ("steps", "max_steps"):
        value = getattr(cfg, key, None)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"trainer.{key}={value!r} must be a positive number of optimizer steps, or "
                "null to count the budget in trainer.epochs"
            )
        needed = max(1, math.ceil(value / steps_per_epoch))
        epochs = needed if key == "steps" else min(epochs, needed)
    return epochs


#: model size (parameters) from which ``trainer.threads=auto`` uses every core
AUTO_THREADS_PARAMS = 2_000_000
#: torch's own thread count (one per core, or OMP_NUM_THREADS), before any run set it
DEFAULT_THREADS = torch.get_num_threads()


def resolve_threads(threads: int | str, method: torch.nn.Module, device: torch.device) -> int:
    """Intra-op CPU threads for ``trainer.threads``: a number, or ``auto``.

    ``auto`` keeps torch's default (one thread per core) for models of at least
    ``AUTO_THREADS_PARAMS`` parameters and on accelerators, and takes one thread for
    smaller models, whose kernels are too short to gain from more threads and lose badly
    to them on a busy machine (bench/RESULTS.md, "CPU threads", which also lists what is
    not yet measured).
    """
    if threads == "auto":
        if device.type != "cpu":
            return DEFAULT_THREADS
        size = sum(p.numel() for p in method.parameters())
        return DEFAULT_THREADS if size >= AUTO_THREADS_PARAMS else 1
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(
            f"trainer.threads={threads!r} must be a positive number of CPU threads or auto"
        )
    return threads


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term becomes NaN or infinite."""


class Trainer:
    """Runs a :class:`~pico.engine.method.Method` over a :class:`DataBundle`.

    Handles device placement, bf16 autocast and channels_last (CUDA only), optional
    ``torch.compile``, the optimizer and warm-up cosine schedule, evaluation, atomic
    checkpoints, resume, the metric loggers of ``cfg.loggers`` (every scalar against the
    global optimizer step, epoch means once per epoch at its last step: see
    :mod:`pico.engine.loggers`) and a progress bar. ``cfg`` is a
    :class:`~pico.engine.trainer_config.TrainerConfig`, or a dict or OmegaConf node (the
    ``trainer`` config node) of some of its keys, the others at their defaults.

    The rest is callbacks (:mod:`pico.engine.callbacks`): :meth:`default_callbacks` draw
    the figures, select ``best.pt`` and write ``metrics.json``; ``callbacks`` run after
    them, in order.

    Under a process group (``torchrun``) every rank runs ``fit``: ``cfg.batch_size`` is
    the global batch, split over the ranks; the training step is DDP-wrapped (gradients
    averaged), losses are averaged over the ranks for logging, BN statistics are averaged
    before evaluation and checkpoints, evaluation is sharded, and rank 0 alone writes
    checkpoints, TensorBoard, figures and ``metrics.json``.
    """

    def __init__(
        self,
        cfg: TrainerConfig | Mapping[str, Any],
        run_dir: str | Path,
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.cfg = cfg = TrainerConfig.from_config(cfg)
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.callbacks = list(callbacks)
        self.device = resolve_device(cfg.device)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.main = is_main_process()
        # refused here, before any data is loaded or anything written
        self.logger_names = resolve_logger_names(cfg.loggers)

    def default_callbacks(self, select_metric: str, select_mode: str) -> list[Callback]:
        """The callbacks of every run, called before ``callbacks``: the figures
        (``cfg.figure_every``, ``cfg.embedding_figure``), the selection of ``best.pt`` on
        ``select_metric`` and ``metrics.json``. A subclass may leave some out."""
        return [
            RunFigures(self.cfg.figure_every, self.cfg.embedding_figure),
            BestCheckpoint(select_metric, select_mode),
            MetricsFile(),
        ]

    def evaluates(self, epoch: int, epochs: int) -> bool:
        """Whether epoch ``epoch`` (1-based) of ``epochs`` ends with an evaluation: every
        ``cfg.eval_every`` epochs and the last."""
        return epoch % self.cfg.eval_every == 0 or epoch == epochs

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _views(
        self, method: Method, augmenters: dict[str, BatchAugment], inputs, gen
    ) -> list[torch.Tensor]:
        views = [augmenters[name](inputs, gen) for name in method.views]
        if self.device.type == "cuda" and self.cfg.channels_last and inputs.dim() == 4:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views

    def resume_path(self, resume: str | None) -> Path | None:
        """Checkpoint to resume from: a path, ``"auto"``, ``"auto_or_new"`` or none.

        ``"auto"`` takes the newest checkpoint of the run directory that loads, falling
        back from a corrupt ``last.pt`` to the kept epoch checkpoints, and raises
        :class:`CheckpointError` when none loads; ``"auto_or_new"`` then means a fresh
        start.
        """
        if not resume:
            return None
        if resume not in AUTO_RESUME:
            return Path(resume)
        epochs = sorted(self.ckpt_dir.glob("epoch_*.pt"), reverse=True)
        candidates = [p for p in (self.ckpt_dir / "last.pt", *epochs) if p.is_file()]
        path = newest_loadable(candidates)
        if path is None and resume == "auto":
            found = "no checkpoint there loads" if candidates else "it holds no checkpoint"
            raise CheckpointError(
                f"resume=auto has nothing to resume in {self.ckpt_dir}: {found}; pass "
                "resume=auto_or_new to start a new run when there is none, or resume=PATH"
            )
        return path

    def fit(
        self,
        method: Method,
        bundle: DataBundle,
        augmenters: dict[str, BatchAugment],
        evaluator: Evaluator,
        select_metric: str,
        select_mode: str = "max",
        config_yaml: str = "",
        resume: str | None = None,
        fingerprint: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Train for the budget of :func:`planned_epochs` and return final and best
        metrics; every checkpoint carries ``fingerprint`` (see
        :mod:`pico.engine.fingerprint`).

        SIGINT or SIGTERM ends the step in progress, writes a checkpoint (inside the
        epoch, or the epoch's own when it was the last step) and raises
        :class:`~pico.engine.stop.RunStopped`.
        """
        run = self._setup(method, bundle, augmenters, evaluator, resume)
        run.callbacks = [*self.default_callbacks(select_metric, select_mode), *self.callbacks]
        run.select_metric = select_metric
        run.config_yaml = config_yaml
        run.fingerprint = fingerprint
        for callback in run.callbacks:
            callback.on_fit_start(self, run)
        started = time.perf_counter()
        try:
            with run.stop.catching():
                for epoch in range(run.state["epoch"], run.epochs):
                    sums = self._train_epoch(run, epoch)
                    self._end_epoch(run, epoch, sums)
                    if epoch + 1 < run.epochs and self._stop_agreed(run, at_sync=True):
                        raise self._stopped(run, epoch)
        finally:
            run.logger.close()
        elapsed = time.perf_counter() - started
        result = {
            "final": run.state["history"][-1] if run.state["history"] else {},
            "best": run.state["best"],
            "select_metric": select_metric,
            "train_seconds": elapsed,
            "images_per_second": run.images_seen / elapsed if elapsed > 0 else 0.0,
            "history": run.state["history"],
        }
        for callback in run.callbacks:
            callback.on_fit_end(self, run, result)
        return result

    def _setup(
        self,
        method: Method,
        bundle: DataBundle,
        augmenters: dict[str, BatchAugment],
        evaluator: Evaluator,
        resume: str | None,
    ) -> Run:
        """Place the method, build loader, optimizer and schedule, restore a checkpoint."""
        cfg = self.cfg
        torch.set_num_threads(resolve_threads(cfg.threads, method, self.device))
        log.info("%d CPU threads", torch.get_num_threads())
        method.to(self.device)
        if self.device.type == "cuda" and cfg.channels_last and bundle.kind == "image":
            method.to(memory_format=torch.channels_last)
        if cfg.compile:
            mode = compile_mode(cfg)
            method.compile_parts(mode)
            if self.device.type == "cuda":
                for name in set(method.views):
                    augmenters[name].compile_transform(mode)
        if cfg.sync_bn:
            method = convert_sync_bn(method, self.device)
        loader = TensorLoader(
            bundle.train,
            cfg.batch_size,
            self.device,
            seed=self.seed,
            rank=get_rank(),
            world_size=get_world_size(),
        )
        epochs = planned_epochs(cfg, len(loader))
        optimizer = build_optimizer(method.optim_parameters(), cfg.optimizer)
        scheduler = warmup_cosine(
            optimizer,
            warmup_steps=round(cfg.lr_warmup_epochs * len(loader)),
            total_steps=epochs * len(loader),
            final_ratio=cfg.final_lr_ratio,
        )
        state: dict[str, Any] = dict(FRESH_STATE, history=[])
        # rank 0 picks the file, so every rank resumes from the same one
        path = broadcast_object(self.resume_path(resume) if self.main else None)
        if path is not None:
            ckpt = load_checkpoint(path, map_location=self.device)
            method.load_state_dict(ckpt["method"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng_cpu"].cpu())
            self._restore_cuda_rng(ckpt.get("rng_cuda"))
            state = {k: ckpt.get(k, default) for k, default in FRESH_STATE.items()}
            state["history"] = ckpt["history"]
            log.info(
                "resumed from %s at epoch %d, batch %d", path, state["epoch"] + 1, state["batch"]
            )
        return Run(
            method=method,
            step=wrap_training_step(method, self.device),
            bundle=bundle,
            augmenters=augmenters,
            evaluator=evaluator,
            loader=loader,
            optimizer=optimizer,
            scheduler=scheduler,
            logger=RunLoggers(
                self.run_dir,
                self.logger_names,
                enabled=self.main,
                resume_step=state["step"] if path is not None else None,
            ),
            generator=torch.Generator(device=self.device),
            state=state,
            epochs=epochs,
            stop=StopRequest(),
        )

    def _stop_agreed(self, run: Run, at_sync: bool) -> bool:
        """Whether to stop now on a signal. Under a process group every rank must agree,
        so the flags are reduced, only at points that synchronise anyway (``at_sync``)."""
        if get_world_size() == 1:
            return run.stop.requested
        if not at_sync:
            return False
        flag = torch.tensor([float(run.stop.requested)], device=self.device)
        return bool(all_reduce_sum(flag).item())

    def _stopped(self, run: Run, epoch: int) -> RunStopped:
        signum = run.stop.signum or signal.SIGTERM  # a rank told by the others
        return RunStopped(signum, epoch + 1, run.state["step"], self.run_dir)

    def _train_epoch(self, run: Run, epoch: int) -> dict[str, torch.Tensor]:
        """One pass over the training split; returns the loss terms summed over its steps
        (each step's terms averaged over the processes)."""
        cfg, method, state = self.cfg, run.method, run.state
        steps, rank, world = len(run.loader), get_rank(), get_world_size()
        method.train()
        method.on_epoch_start(StepInfo(epoch, state["step"], run.epochs, steps))
        start = state["batch"]
        sums = {k: v.to(self.device) for k, v in state["sums"].items()} if start else {}
        epoch_start = time.perf_counter()
        checked = state["step"]  # steps up to here are known to have finite losses
        averaged = sums  # the sums averaged over the processes, as of the last log
        bar = tqdm(
            run.loader.epoch(epoch, start_batch=start),
            total=steps,
            initial=start,
            desc=f"epoch {epoch + 1}/{run.epochs}",
            disable=not (self.main and cfg.progress),
            leave=False,
        )
        compiled_on_cuda = cfg.compile and self.device.type == "cuda"
        for i, (index, inputs, targets) in enumerate(bar, start=start):
            if compiled_on_cuda:  # CUDA-graph modes: this step may reuse the last one's outputs
                torch.compiler.cudagraph_mark_step_begin()
            info = StepInfo(epoch, state["step"], run.epochs, steps)
            run.generator.manual_seed(augmentation_seed(self.seed, epoch, state["step"], rank))
            views = self._views(method, run.augmenters, inputs, run.generator)
            with self._autocast():
                terms = run.step(Batch(index, views, targets), info)
            run.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            skip = cfg.nonfinite == "skip" and not self._finite_step(terms, method)
            if skip:  # drop this update; its terms count as zero in the logged means
                state["skipped"] += 1
                log.warning("step %d skipped: non-finite loss or gradient", state["step"])
            else:
                method.before_optimizer_step(info)
                factor = method.weight_decay_factor(info)
                if factor is not None:
                    scale_weight_decay_(run.optimizer, factor)
                run.optimizer.step()
                method.after_optimizer_step(info)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0) + value.detach().float()
            run.scheduler.step()
            state["step"] += 1
            run.images_seen += len(index) * world
            every = cfg.checkpoint_every_steps
            log_now = (i + 1) % cfg.log_every == 0 or i + 1 == steps
            stop = i + 1 < steps and self._stop_agreed(run, at_sync=log_now)
            save_now = stop or (bool(every) and state["step"] % every == 0 and i + 1 < steps)
            if save_now or log_now:
                # the only host-device synchronisation of the loop (besides nonfinite=skip);
                # every checkpoint is preceded by this check, so none holds a NaN
                averaged = _rank_mean(sums)
                means = {k: v.item() / (i + 1) for k, v in averaged.items()}
                self._check_finite(means, checked + 1, state["step"])
                checked = state["step"]
                images = len(index) * world * (i + 1 - start)
                rate = images / (time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{rate:.0f}")
                lr = float(run.scheduler.get_last_lr()[0])  # typed float | Tensor; a float here
                run.logger.scalars(
                    {
                        **{f"train/{k}": v for k, v in means.items()},
                        "train/lr": lr,
                        "train/images_per_s": rate,
                    },
                    state["step"],
                    epoch + 1,
                )
            if save_now:
                average_bn_statistics_(method)
                state["batch"] = i + 1
                state["sums"] = {k: v.cpu() for k, v in averaged.items()}
                self._require_finite_state(run)
                if self.main:
                    self._save(run, epoch=None)
            if stop:
                bar.close()
                raise self._stopped(run, epoch)
        state["batch"], state["sums"] = 0, {}
        return averaged  # the last step always logs, so this is the epoch's final sum

    def _finite_step(self, terms: dict[str, torch.Tensor], method: Method) -> bool:
        """Whether the loss and every gradient are finite on every process (synchronises
        host and device)."""
        grads = [p.grad for p in method.parameters() if p.grad is not None]
        finite = torch.isfinite(terms["loss"]).all()
        if grads:
            norms = torch._foreach_norm(grads)
            finite = finite & torch.isfinite(torch.stack(norms)).all()
        bad = all_reduce_sum((~finite).float().reshape(1))
        return not bool(bad.item())

    def _end_epoch(self, run: Run, epoch: int, sums: dict[str, torch.Tensor]) -> None:
        """Evaluate, log, run the callbacks' epoch end and write checkpoints."""
        state, done = run.state, epoch + 1
        state["epoch"] = done
        steps = len(run.loader)
        record = {"epoch": done, **{f"train/{k}": v.item() / steps for k, v in sums.items()}}
        average_bn_statistics_(run.method)
        if self.evaluates(done, run.epochs):
            record.update(run.evaluator(run.method, final=done == run.epochs))
        state["history"].append(record)
        run.logger.scalars(self._epoch_scalars(record, sums), state["step"], done)
        run.logger.flush()
        for callback in run.callbacks:
            callback.on_epoch_end(self, run, record)
        self._require_finite_state(run)
        if self.main:
            self._save(run, done)
        improved = state["best"] is record  # BestCheckpoint made this epoch the best
        log.info("%s", epoch_line(record, run.epochs, run.select_metric, improved))
        log.debug("epoch %d: %s", done, ", ".join(f"{k}={v:.4f}" for k, v in record.items()))

    def _require_finite_state(self, run: Run) -> None:
        """Refuse (``NonFiniteLossError``) a method state holding NaN or Inf, so no
        checkpoint ever carries one (checked on every process: their states agree)."""
        floats = [v for v in run.method.state_dict().values() if v.is_floating_point()]
        if floats and not bool(torch.isfinite(torch.stack(torch._foreach_norm(floats))).all()):
            raise NonFiniteLossError(
                f"the model state became non-finite by step {run.state['step']}; nothing was "
                f"saved: lower the learning rate and {self._restart_hint()}"
            )

    def _restart_hint(self) -> str:
        """Where to continue from after a stop on a non-finite value."""
        last = self.ckpt_dir / "last.pt"
        if last.is_file():
            return f"resume from the last good checkpoint ({last}, written before these steps)"
        return "start the run again (no checkpoint was written yet)"

    def _checkpoint(self, run: Run) -> dict[str, Any]:
        """Everything needed to continue the run exactly where it stands, with any number
        of processes (the RNG states are rank 0's; every rank restores them)."""
        cuda = self.device.type == "cuda"
        return {
            "method": run.method.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            **({"rng_cuda": torch.cuda.get_rng_state(self.device)} if cuda else {}),
            "config": run.config_yaml,
            "fingerprint": run.fingerprint,
            **run.state,
        }

    def _restore_cuda_rng(self, state: torch.Tensor | list[torch.Tensor] | None) -> None:
        """Set the training GPU's RNG from a checkpoint (older ones hold a list, one state per
        GPU of the writing process: the first is taken)."""
        if state is None or self.device.type != "cuda":
            return
        if isinstance(state, list | tuple):
            state = state[0]
        torch.cuda.set_rng_state(state.cpu(), self.device)

    def _save(self, run: Run, epoch: int | None) -> None:
        """Write the run's checkpoint: the callbacks' extra files first (``best.pt``), then
        ``last.pt``, and at epoch ends the newest epoch files (``epoch`` is ``None`` for a
        checkpoint inside an epoch)."""
        ckpt = with_checksum(self._checkpoint(run))
        for callback in run.callbacks:
            callback.on_save_checkpoint(self, run, ckpt, epoch)
        save_checkpoint(ckpt, self.ckpt_dir / "last.pt")
        if epoch is not None and self.cfg.keep_last > 0:
            save_checkpoint(ckpt, self.ckpt_dir / f"epoch_{epoch:04d}.pt")
            for old in sorted(self.ckpt_dir.glob("epoch_*.pt"))[: -self.cfg.keep_last]:
                old.unlink()

    def _check_finite(self, means: dict[str, float], first: int, last: int) -> None:
        """Stop on a non-finite loss, naming the steps (1-based) and the loss terms."""
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss in steps {first}-{last} (epoch means {means}); lower the "
                f"learning rate or check the inputs, then {self._restart_hint()}, or set "
                "trainer.nonfinite=skip to drop such steps"
            )

    @staticmethod
    def _epoch_scalars(record: dict[str, Any], sums: dict[str, torch.Tensor]) -> dict[str, float]:
        """The epoch record as logged at the epoch's last global step: the epoch's mean
        loss terms as ``epoch/train/<term>`` (``train/<term>`` is the per-step running
        mean, see :mod:`pico.engine.loggers`), ``epoch/epoch``, and the evaluation as is."""
        terms = {f"train/{k}" for k in sums}
        out: dict[str, float] = {"epoch/epoch": float(record["epoch"])}
        for key, value in record.items():
            if key != "epoch":
                out[f"epoch/{key}" if key in terms else key] = value
        return out
