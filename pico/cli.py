"""Command-line entry points: ``pico-train``, ``pico-eval``, ``pico-export`` and
``pico-predict`` (Hydra), over the Python entry points of :mod:`pico.api`,
:mod:`pico.export` and :mod:`pico.predict`: argument handling, what each prints, exit
codes."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pico import api
from pico.core.distributed import is_main_process
from pico.engine.checkpoint import load_checkpoint
from pico.engine.distributed_run import env_world_size, process_group
from pico.engine.stop import RunStopped
from pico.engine.trainer import NonFiniteLossError
from pico.sweep import register_resolver

CONFIG_PATH = "pkg://pico.configs"
USER_ERRORS = (ValueError, FileNotFoundError, MissingMandatoryValue, NonFiniteLossError)


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Metrics as a plain-text table: one row per metric, one column per result."""
    columns = list(rows)
    names = sorted({name for values in rows.values() for name in values if name != "epoch"})
    width = max([len(n) for n in names] + [6])
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{c:>10}" for c in columns)]
    for name in names:
        cells = []
        for column in columns:
            value = rows[column].get(name)
            cells.append(f"{value:>10.4f}" if value is not None else f"{'-':>10}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """:func:`pico.api.train` with what ``pico-train`` prints: the run header before
    training, and at the end (rank 0) the run directory, speed and the final and best
    metrics."""
    with process_group(cfg.trainer.device):
        result = api.train(cfg, announce=print)
        if not is_main_process():
            return result
    rows = {"final": result["final"]}
    if result["best"]:
        rows[f"best (epoch {result['best']['epoch']})"] = result["best"]
    print(f"\nrun directory: {result['run_dir']}")
    print(f"best checkpoint chosen by {cfg.eval.select_metric} ({cfg.eval.select_mode})")
    print(f"{result['images_per_second']:.0f} images/s, {result['train_seconds']:.1f} s\n")
    print(format_table(rows))
    return result


def run_evaluation(
    checkpoint: str | Path,
    device: str = "auto",
    parts: str = "all",
    data: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
) -> dict[str, float]:
    """:func:`pico.api.evaluate` with what ``pico-eval`` prints: the metrics table and
    each file written (``replaced`` where one was there); returns the metrics."""
    out_dir = api.eval_dir(checkpoint, out)
    existed = {name: (out_dir / name).exists() for name in ("embedding.png", "eval.json")}
    result = api.evaluate(checkpoint, device, parts, data, out, announce=print)

    def report(name: str) -> None:
        if name in result.files:
            print(f"{'replaced' if existed[name] else 'written'} {result.files[name]}")

    report("embedding.png")
    print(format_table({f"epoch {result.epoch}": result.metrics}))
    print()
    report("eval.json")
    return result.metrics


def _data_overrides(cfg: DictConfig) -> dict[str, Any]:
    """The ``data.`` overrides of a pico-eval / pico-export / pico-predict config, plain."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)  # cfg.data is a mapping (``data: {}`` in the config)
    # keys from Hydra overrides are strings; OmegaConf types them as any DictKeyType
    return cast(dict[str, Any], data)


def run_export(
    checkpoint: str | Path,
    out: str | Path,
    parts: str = "all",
    formats: str | Sequence[str] = "all",
    data: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``checkpoint`` for inference (:func:`pico.export.export_model`): with
    ``parts="all"`` the backbone, classifier head and preprocessing as a state dict at
    ``out``, as TorchScript at ``out`` with suffix ``.ts`` and as ONNX (``.onnx``, where
    onnx is installed); with ``parts="backbone"`` the backbone's plain state dict alone at
    ``out`` (what ``model.init_from`` reads). ``data`` changes the stored data config as
    for ``pico-eval``. Files already there are replaced, and each replacement is reported.
    Returns ``out``."""
    from pico.export import export_model, export_paths

    load_checkpoint(checkpoint)  # refuses a missing, corrupt or code-carrying file first
    before = {path: path.exists() for path in export_paths(out).values()}
    result = export_model(checkpoint, out, parts, formats, data)
    for name, path in result.files.items():
        print(f"{'replaced' if before.get(path) else 'written'} {path} ({name})")
    if parts == "backbone":
        print(f"{len(torch.load(out, weights_only=True))} tensors of the backbone")
    else:
        print(f"outputs: {result.output} (raw inputs in, preprocessing included)")
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}")
    return Path(out)


def exit_on_user_error(fn: Callable[[DictConfig], None]) -> Callable[[DictConfig], None]:
    """Report a user error (bad config value, missing file, bad data or checkpoint,
    non-finite loss) as one line on stderr and exit with status 2, without a traceback
    (``HYDRA_FULL_ERROR=1`` shows it). A run stopped by SIGINT or SIGTERM prints where it
    stopped and how to continue, and exits with 130 or 143."""

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> None:
        full = os.environ.get("HYDRA_FULL_ERROR") == "1"
        try:
            fn(cfg)
        except RunStopped as stop:
            if is_main_process():
                print(f"pico: {stop}", file=sys.stderr)
            sys.exit(stop.exit_code)
        except KeyboardInterrupt:
            if full:
                raise
            print("pico: interrupted before training started; nothing was saved", file=sys.stderr)
            sys.exit(130)
        except (*USER_ERRORS, InstantiationException) as err:
            # config-built objects arrive wrapped by Hydra: report the original error
            cause = err.__cause__ if isinstance(err, InstantiationException) else err
            if full or not isinstance(cause, USER_ERRORS):
                raise
            message = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
            print(f"pico: error: {message}", file=sys.stderr)
            remove_failed_start(cfg.get("run_dir"))
            sys.exit(2)

    return wrapper


#: what Hydra writes into a run folder before pico's code runs
HYDRA_START_FILES = frozenset({".hydra", "cli.log"})


def remove_failed_start(run_dir: str | None) -> None:
    """Remove ``run_dir`` when it holds nothing but Hydra's start files (``.hydra/``,
    ``cli.log``): a run refused before training leaves no folder behind."""
    if not run_dir or not is_main_process():
        return
    folder = Path(run_dir)
    if not folder.is_dir() or not {p.name for p in folder.iterdir()} <= HYDRA_START_FILES:
        return
    hydra = folder / ".hydra"
    if hydra.is_dir() and any(p.suffix != ".yaml" or p.is_dir() for p in hydra.iterdir()):
        return
    shutil.rmtree(folder, ignore_errors=True)


def require_writable_run_dir(overrides: list[str]) -> None:
    """Create the ``run_dir=...`` of the command line up front and check that files can be
    written there, or exit with one line.

    Hydra creates the run folder and its log file before pico's code runs and would
    report a failure with a traceback; this check runs first. Interpolated values are
    left to Hydra.
    """
    given = [arg.split("=", 1)[1] for arg in overrides if arg.startswith("run_dir=")]
    if not given or "${" in given[-1]:
        return
    try:
        Path(given[-1]).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(
            f"pico: error: run_dir={given[-1]} cannot be created ({err.strerror or err}); "
            "pass run_dir=DIR for a folder you can write to",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        with tempfile.TemporaryFile(dir=given[-1]):
            pass
    except OSError as err:
        print(
            f"pico: error: run_dir={given[-1]} is not writable ({err.strerror or err}); "
            "pass run_dir=DIR for a folder you can write to",
            file=sys.stderr,
        )
        sys.exit(2)


def train() -> None:
    """``pico-train``: train any method on any data, chosen by config overrides.

    Under ``torchrun`` the non-zero ranks keep Hydra from writing into the run
    directory (no ``.hydra/`` folder, no log file; they log warnings only).
    """
    args = sys.argv[1:]
    if env_world_size() > 1:
        if {"-m", "--multirun"} & set(args):
            print(
                "pico: error: pico-train -m (multirun) cannot run under torchrun; "
                "start one torchrun per run",
                file=sys.stderr,
            )
            sys.exit(2)
        if int(os.environ.get("RANK", "0")) > 0:
            sys.argv += [
                "hydra.output_subdir=null",
                "hydra/job_logging=none",
                "hydra/hydra_logging=none",
            ]
    require_writable_run_dir(args)
    register_resolver()
    train_main()


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
@exit_on_user_error
def train_main(cfg: DictConfig) -> None:
    """The Hydra application behind ``pico-train``."""
    # single runs write to run_dir; multirun jobs to their own sweep subdirectory
    cfg.run_dir = HydraConfig.get().runtime.output_dir
    run_training(cfg)


def evaluate() -> None:
    """``pico-eval checkpoint=PATH [parts=...] [data.KEY=VALUE ...] [out=DIR]``.

    ``data.KEY=VALUE`` changes the checkpoint's stored data config: the command line's
    ``data.`` overrides are handed to Hydra as ``++data.`` (added to ``evaluate.yaml``'s
    empty ``data``), as the keys are the checkpoint's, not the entry config's.
    """
    sys.argv[1:] = [f"++{arg}" if arg.startswith("data.") else arg for arg in sys.argv[1:]]
    evaluate_main()


@hydra.main(config_path=CONFIG_PATH, config_name="evaluate", version_base="1.3")
@exit_on_user_error
def evaluate_main(cfg: DictConfig) -> None:
    """The Hydra application behind ``pico-eval``."""
    data = _data_overrides(cfg)
    run_evaluation(cfg.checkpoint, cfg.device, cfg.parts, data, cfg.get("out"))


def export() -> None:
    """``pico-export checkpoint=PATH out=FILE [parts=all|backbone] [formats=...]
    [data.KEY=VALUE ...]``; ``data.`` overrides reach Hydra as ``++data.`` (as for pico-eval)."""
    sys.argv[1:] = [f"++{arg}" if arg.startswith("data.") else arg for arg in sys.argv[1:]]
    export_main()


@hydra.main(config_path=CONFIG_PATH, config_name="export", version_base="1.3")
@exit_on_user_error
def export_main(cfg: DictConfig) -> None:
    """The Hydra application behind ``pico-export``."""
    data = _data_overrides(cfg)
    formats = cfg.formats
    if isinstance(formats, ListConfig):
        formats = [str(name) for name in formats]
    run_export(cfg.checkpoint, cfg.out, cfg.parts, formats, data)


def predict() -> None:
    """``pico-predict checkpoint=PATH input=FOLDER_OR_FILE [out=predictions.csv]``."""
    sys.argv[1:] = [f"++{arg}" if arg.startswith("data.") else arg for arg in sys.argv[1:]]
    predict_main()


@hydra.main(config_path=CONFIG_PATH, config_name="predict", version_base="1.3")
@exit_on_user_error
def predict_main(cfg: DictConfig) -> None:
    """The Hydra application behind ``pico-predict``."""
    from pico.predict import run_prediction

    data = _data_overrides(cfg)
    run_prediction(cfg.checkpoint, cfg.input, cfg.out, cfg.batch_size, data)
