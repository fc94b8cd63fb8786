"""Time of one training step against its compute floor, for PiCO and the contrastive baselines.

The step is what the trainer runs per batch once the augmented views exist:
``method.training_step`` (under bf16 autocast on CUDA), ``zero_grad``, ``backward``, the
optimizer step and ``method.after_optimizer_step`` (momentum encoders). The floor is the
network work no implementation of the method can avoid, on the same modules, shapes and
optimizer: the online encoder's forward and backward with one cheap loss on its outputs,
plus the forward of the key / target encoder without gradient, then the same optimizer
step. Per method:

* pico: backbone + classifier + projection head on the weak view (fwd + bwd), key
  backbone + head on the strong view (fwd);
* moco (symmetric, the default): backbone + head on both views (fwd + bwd), key
  encoder on both views (fwd); its shuffled-BN groups run in the step only;
* simclr: backbone + projector on both views (fwd + bwd);
* byol: backbone + projector + predictor on both views (fwd + bwd), target backbone +
  projector on both views (fwd).

Everything else the step does (pseudo-labels, prototype and confidence updates, the
contrastive losses over the queue, enqueueing, EMA updates) is the method's overhead,
shown by the ratio step / floor. Queues keep their configured length (PiCO 8192, MoCo
4096): the synthetic task has 45,000 training rows (CIFAR-10's train split), so no
queue is capped; PiCO is timed after warm-up (SupCon with pseudo-label positives).

Methods are built through the training configs (``configs/train.yaml`` composed with
``method=NAME model=...``) on random inputs and candidate sets (uniform, q = 0.3, 10
classes), so no dataset is needed. Views are fixed random tensors; times are the median
of ``--iters`` iterations after ``--warmup`` untimed ones, with ``torch.cuda.synchronize``
around each on CUDA. Step and floor iterations alternate, so load changes hit both.
With ``--compile`` the floor is compiled as the step is: one graph where the method
compiles its step as one (``Method.step_graph``, PiCO), its modules one by one otherwise.

Example::

    python bench/step.py                                  # every method and model
    python bench/step.py --models resnet18 --methods pico --device cuda --record
    python bench/step.py --models convnet-digits --batch-size 64 --iters 50 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from pico.engine.method import Batch, Method, StepInfo, TaskInfo
from pico.engine.optim import build_optimizer
from pico.engine.trainer import resolve_device
from pico.models.factory import build_backbone
from pico.pll.candidates import uniform_candidates

# bench/ is not a package. Python puts a script's folder first on sys.path, where
# bench/baselines.py would shadow the `baselines` package: the folder is taken off the
# path (every entry of it) right after the shared helpers (bench/common.py) are imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

BENCH = common.BENCH
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

NUM_CLASSES = 10
NUM_TRAIN = 45_000  # CIFAR-10's train split: PiCO's 8192 queue is not capped
EPOCHS = 800  # the paper's schedule; the timed step lies well past PiCO's warm-up
METHODS = ("pico", "moco", "simclr", "byol")


@dataclass(frozen=True)
class ModelSpec:
    """A ``configs/model`` entry and the input shape it is timed on."""

    config: str
    input_shape: tuple[int, int, int]


MODELS = {
    "resnet18": ModelSpec("resnet18", (3, 32, 32)),
    "resnet18-narrow": ModelSpec("resnet18_narrow", (3, 32, 32)),
    "convnet": ModelSpec("convnet", (3, 32, 32)),
    "convnet-digits": ModelSpec("convnet", (1, 8, 8)),
}


@dataclass(frozen=True)
class Row:
    """Median milliseconds of one step and of its floor."""

    method: str
    model: str
    input_shape: tuple[int, int, int]
    queue: int | None
    step_ms: float
    floor_ms: float

    @property
    def ratio(self) -> float:
        """Step time over floor time."""
        return self.step_ms / self.floor_ms


def _pico_floor(method: Method, views: list[Tensor]) -> list[Tensor]:
    weak, strong = views
    features = method.backbone(weak)
    with torch.no_grad():
        method.key_head(method.key_backbone(strong))
    return [method.classifier(features), method.head(features)]


def _moco_floor(method: Method, views: list[Tensor]) -> list[Tensor]:
    queries = views if method.symmetric else views[:1]
    keys = views if method.symmetric else views[1:]
    with torch.no_grad():
        for view in keys:
            method.key_head(method.key_backbone(view))
    return [method.head(method.backbone(view)) for view in queries]


def _simclr_floor(method: Method, views: list[Tensor]) -> list[Tensor]:
    return [method.projector(method.backbone(view)) for view in views]


def _byol_floor(method: Method, views: list[Tensor]) -> list[Tensor]:
    with torch.no_grad():
        for view in views:
            method.target_projector(method.target_backbone(view))
    return [method.predictor(method.projector(method.backbone(view))) for view in views]


#: the unavoidable network work of each method: outputs of the online encoder passes
FLOORS: dict[str, Callable[[Method, list[Tensor]], list[Tensor]]] = {
    "pico": _pico_floor,
    "moco": _moco_floor,
    "simclr": _simclr_floor,
    "byol": _byol_floor,
}


def compose_config(method: str, model: str) -> DictConfig:
    """The ``train`` config of ``method`` with the ``configs/model`` entry ``model``."""
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose("train", overrides=[f"method={method}", f"model={model}"])


def synthetic_task(input_shape: tuple[int, ...]) -> TaskInfo:
    """A CIFAR-10-sized task with random labels and uniform (q = 0.3) candidate sets."""
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, NUM_CLASSES, (NUM_TRAIN,), generator=gen)
    candidates = uniform_candidates(targets, NUM_CLASSES, q=0.3, seed=0)
    return TaskInfo(NUM_CLASSES, NUM_TRAIN, tuple(input_shape), "image", targets, candidates)


def fill_queue(method: Method, gen: torch.Generator) -> None:
    """Fill the method's feature queue, if any, with random unit rows and class labels.

    A training run fills it within ``size / batch`` steps; an empty queue would leave
    most contrastive logits masked, which is not the steady state (and masked logits
    underflow in ``exp``, a slow path on some CPUs).
    """
    queue = getattr(method, "queue", None)
    if queue is None:
        return
    device = queue.features.device
    rows = torch.randn(queue.size, queue.dim, generator=gen, device=device)
    columns = {
        name: torch.randint(0, NUM_CLASSES, (queue.size,), generator=gen, device=device)
        for name in queue.column_names
    }
    queue.enqueue(F.normalize(rows, dim=1), **columns)


def time_pair(
    step: Callable[[], None], floor: Callable[[], None], iters: int, warmup: int, sync: Callable
) -> tuple[float, float]:
    """Median seconds of ``step`` and of ``floor`` over ``iters`` alternating calls each."""
    for _ in range(warmup):
        step()
        floor()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(iters):
        for fn, out in ((step, times[0]), (floor, times[1])):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


class StepBench:
    """One method set up as the trainer sets up a run, with fixed views of one batch.

    :meth:`step` is the trainer's step, :meth:`floor` the compute floor of the method
    (see the module docstring); both update the same parameters with the same optimizer.
    """

    def __init__(
        self,
        method_name: str,
        model_name: str,
        batch_size: int = 256,
        device: torch.device | str = "cpu",
        compile_mode: str | None = None,
    ) -> None:
        if method_name not in FLOORS or model_name not in MODELS:
            raise ValueError(
                f"unknown method {method_name!r} or model {model_name!r}; choose methods from "
                f"{list(FLOORS)} and models from {list(MODELS)}"
            )
        self.method_name, self.model_name = method_name, model_name
        self.device = torch.device(device)
        self.spec = MODELS[model_name]
        cfg = compose_config(method_name, self.spec.config)
        torch.manual_seed(0)
        backbone = build_backbone(cfg.model, self.spec.input_shape, "image")
        task = synthetic_task(self.spec.input_shape)
        method: Method = instantiate(cfg.method, _partial_=True)(backbone=backbone, task=task)
        self.method = method.to(self.device).train()
        cuda = self.device.type == "cuda"
        channels_last = cuda and cfg.trainer.channels_last
        if channels_last:
            method.to(memory_format=torch.channels_last)
        self.compiled = compile_mode is not None
        self.floor_loss = self._floor_loss
        if self.compiled:
            method.compile_parts(compile_mode)
            if method.step_graph is not None:  # the step is one graph: so is the floor
                self.floor_loss = torch.compile(self._floor_loss, mode=compile_mode)
        self.optimizer = build_optimizer(method.optim_parameters(), cfg.trainer.optimizer)
        self.amp = cuda and cfg.trainer.amp
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)

        gen = torch.Generator(device=self.device).manual_seed(0)
        shape = (batch_size, *self.spec.input_shape)
        views = [torch.randn(shape, generator=gen, device=self.device) for _ in method.views]
        if channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        fill_queue(method, gen)
        index = torch.randperm(NUM_TRAIN, generator=gen, device=self.device)[:batch_size]
        self.batch = Batch(index, views, task.train_targets.to(self.device)[index])
        steps_per_epoch = NUM_TRAIN // batch_size
        self.info = StepInfo(EPOCHS // 2, EPOCHS // 2 * steps_per_epoch, EPOCHS, steps_per_epoch)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _begin(self) -> None:
        if self.compiled and self.device.type == "cuda":  # as the trainer: CUDA-graph modes
            torch.compiler.cudagraph_mark_step_begin()

    def step(self) -> None:
        """``training_step``, backward, optimizer step, ``after_optimizer_step``."""
        self._begin()
        with self._autocast():
            terms = self.method.training_step(self.batch, self.info)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()
        self.method.after_optimizer_step(self.info)

    def _floor_loss(self, views: list[Tensor]) -> Tensor:
        outputs = FLOORS[self.method_name](self.method, views)
        return sum(out.float().mean() for out in outputs)

    def floor(self) -> None:
        """Online encoder forward + backward, key / target encoder forward, optimizer step."""
        self._begin()
        with self._autocast():
            loss = self.floor_loss(self.batch.views)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def measure(self, iters: int = 20, warmup: int = 3) -> Row:
        """Median step and floor times over ``iters`` alternating calls after ``warmup``."""
        step_s, floor_s = time_pair(self.step, self.floor, iters, warmup, self.sync)
        queue = self.method.queue.size if hasattr(self.method, "queue") else None
        return Row(
            self.method_name,
            self.model_name,
            self.spec.input_shape,
            queue,
            step_s * 1e3,
            floor_s * 1e3,
        )


def table(rows: list[Row]) -> str:
    """Markdown table: method, model, input, queue, step ms, floor ms, ratio."""
    header = ["method", "model", "input", "queue", "step ms", "floor ms", "step / floor"]
    cells = [
        [row.method, row.model, "x".join(map(str, row.input_shape)), row.queue or "-"]
        + [f"{v:.2f}" for v in (row.step_ms, row.floor_ms, row.ratio)]
        for row in rows
    ]
    return common.markdown_table(header, cells)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    common.add_compile_option(
        parser, "compile as trainer.compile=true does (MODE: default, reduce-overhead, ...)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--record", action="store_true", help="append a dated section to --results")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    for name in ("batch_size", "iters", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    """Time every (method, model) pair, print the table and optionally record it."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows: list[Row] = []
    print(table(rows), flush=True)
    for model in args.models:
        for method in args.methods:
            bench = StepBench(method, model, args.batch_size, device, args.compile)
            rows.append(bench.measure(args.iters, args.warmup))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    header = (
        f"batch {args.batch_size}, device {device}, median of {args.iters} iterations "
        f"after {args.warmup}, {torch.get_num_threads()} CPU thread(s)"
        f"{f', torch.compile mode {args.compile}' if args.compile else ''}"
    )
    print(f"\n{header}\n\n{table(rows)}")
    if args.record:
        facts = [f"machine: {common.machine(torch.get_num_threads(), 1)}"]
        if device.type == "cuda":
            facts.append(
                f"GPU: {torch.cuda.get_device_name(device)} (bf16 autocast, channels_last)"
            )
        facts.append(
            f"command: `{common.command_line('step.py', sys.argv[1:] if argv is None else argv)}`"
        )
        intro = (
            f"One training step against its compute floor (online encoder forward + "
            f"backward, key/target encoder forward, same optimizer step; see "
            f"bench/step.py); {header}."
        )
        common.record(
            common.section("Training step vs compute floor", facts, table(rows), intro),
            args.results,
        )
        print(f"\nrecorded in {args.results}")
    return rows


if __name__ == "__main__":
    main()
