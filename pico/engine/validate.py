"""One pass over the ``train`` config before anything is loaded or written: the type and
range of every trainer, eval and data key pico reads, each error naming its key."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from pico.engine.trainer import AUTO_RESUME, COMPILE_MODES

#: metrics the evaluator reports per split (``val/...``, ``test/...``)
SPLIT_METRICS = (
    "top1",
    "top5",
    "covering_rate",
    "approx_acc",
    "proto_acc",
    "knn_top1",
    "knn_top1_features",
)
#: every metric name ``eval.select_metric`` may take, besides a method's own
#: ``train/<loss term>``
METRICS = (
    *(f"{split}/{name}" for split in ("val", "test") for name in SPLIT_METRICS),
    "test/linear_top1",
    "train/disamb_acc",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _whole(low: int) -> Callable[[Any], bool]:
    return lambda v: _is_int(v) and v >= low


def _number(low: float, high: float = math.inf, open_low: bool = False) -> Callable[[Any], bool]:
    return lambda v: _is_number(v) and (v > low if open_low else v >= low) and v <= high


def _one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_BOOL = _one_of(True, False)
#: trainer keys: (check, what a valid value is)
TRAINER: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": (_whole(1), "a whole number >= 1"),
    "steps": (_optional(_whole(1)), "null or a whole number of steps >= 1"),
    "max_steps": (_optional(_whole(1)), "null or a whole number of steps >= 1"),
    "batch_size": (_whole(1), "a whole number >= 1"),
    "lr_warmup_epochs": (_number(0), "a number >= 0"),
    "final_lr_ratio": (_number(0, 1), "a number in [0, 1]"),
    "threads": (lambda v: v == "auto" or _whole(1)(v), "auto or a whole number >= 1"),
    "eval_every": (_whole(1), "a whole number of epochs >= 1"),
    "figure_every": (_whole(1), "a whole number of epochs >= 1"),
    "log_every": (_whole(1), "a whole number of steps >= 1"),
    "keep_last": (_whole(0), "a whole number >= 0"),
    "checkpoint_every_steps": (_whole(0), "a whole number of steps >= 0 (0: off)"),
    "nonfinite": (_one_of("stop", "skip"), "stop or skip"),
    "compile_mode": (_one_of(*COMPILE_MODES), f"one of {list(COMPILE_MODES)}"),
    **{
        key: (_BOOL, "true or false")
        for key in (
            "amp",
            "channels_last",
            "compile",
            "sync_bn",
            "embedding_figure",
            "progress",
            "deterministic",
        )
    },
}
OPTIMIZER: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (_number(0, open_low=True), "a number > 0"),
    "weight_decay": (_number(0), "a number >= 0"),
    "momentum": (_number(0, 1), "a number in [0, 1]"),
}


def validate_train_config(cfg: DictConfig) -> None:
    """Raise ``ValueError`` naming the first key of ``cfg`` whose value is of the wrong
    type or out of range, and what it should be."""
    for problem in _problems(cfg):
        raise ValueError(problem)


def _problems(cfg: DictConfig) -> Iterator[str]:
    checks = [
        *((f"trainer.{k}", cfg.trainer, k, rule) for k, rule in TRAINER.items()),
        *((f"trainer.optimizer.{k}", cfg.trainer.optimizer, k, r) for k, r in OPTIMIZER.items()),
        ("seed", cfg, "seed", (_is_int, "a whole number")),
        ("overwrite", cfg, "overwrite", (_BOOL, "true or false")),
        ("eval.select_mode", cfg.eval, "select_mode", (_one_of("max", "min"), "max or min")),
    ]
    for name, node, key, (check, valid) in checks:
        if key in node and not check(node[key]):
            yield f"{name}={node[key]!r} is not valid: it must be {valid}"
    yield from _resume_problems(cfg)
    yield from _metric_problems(str(cfg.eval.select_metric))
    yield from _fraction_problems(cfg.data, "data")
    device = _device_problem(str(cfg.trainer.device))
    if device:
        yield device


def _resume_problems(cfg: DictConfig) -> Iterator[str]:
    resume = cfg.get("resume")
    if resume is not None and not isinstance(resume, str):
        yield f"resume={resume!r} is not valid: use {' or '.join(AUTO_RESUME)} or a checkpoint path"
    allowed = cfg.get("allow_changes")
    if allowed is not None and not isinstance(allowed, ListConfig | list):
        yield f"allow_changes={allowed!r} is not valid: it must be a list, e.g. [trainer.epochs]"


def _metric_problems(metric: str) -> Iterator[str]:
    if metric in METRICS or (metric.startswith("train/") and len(metric) > len("train/")):
        return
    yield (
        f"eval.select_metric={metric} is not a metric pico reports; choose one of "
        f"{list(METRICS)} or train/<a loss term of the method>"
    )


def _fraction_problems(node: DictConfig, prefix: str) -> Iterator[str]:
    """Every ``*fraction`` key under ``data`` must be a share in [0, 1)."""
    for key in node:
        if OmegaConf.is_missing(node, key):
            continue  # reported by name where it is read
        name, value = f"{prefix}.{key!s}", node[key]  # !s: a key may be bytes
        if isinstance(value, DictConfig):
            yield from _fraction_problems(value, name)
        elif str(key).endswith("fraction") and not (_is_number(value) and 0 <= value < 1):
            yield f"{name}={value!r} is not valid: it must be a share in [0, 1), e.g. 0.1"


def _device_problem(name: str) -> str | None:
    """Why ``trainer.device`` cannot be used here, or ``None``."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"trainer.device={name} is not a device; use auto, cpu, cuda or cuda:N"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return (
                f"trainer.device={name}, but torch sees no CUDA device here; use "
                "trainer.device=auto or cpu"
            )
        if device.index is not None and device.index >= count:
            return (
                f"trainer.device={name}, but torch sees {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return f"trainer.device={name}, but MPS is not available here; use auto or cpu"
    elif device.type not in ("cpu", "cuda", "mps"):
        return f"trainer.device={name} is not supported; use auto, cpu, cuda or cuda:N"
    return None
