"""Command-line entry points: ``pico-train``, ``pico-eval``, ``pico-export`` and
``pico-predict`` (Hydra)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pico.core.distributed import broadcast_object, is_main_process
from pico.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temporaries,
)
from pico.engine.distributed_run import env_world_size, process_group
from pico.engine.fingerprint import check_allow_changes, check_resume, run_fingerprint
from pico.engine.run_dir import (
    RunDirError,
    clear_outputs,
    finished_outputs,
    refuse_overwrite,
    run_dir_lock,
)
from pico.engine.stop import RunStopped
from pico.engine.trainer import AUTO_RESUME, NonFiniteLossError, Trainer, set_determinism
from pico.engine.validate import validate_train_config
from pico.eval.embedding import save_embedding_png
from pico.experiment import Experiment, build_experiment
from pico.pll.candidates import candidate_summary
from pico.sweep import register_resolver

CONFIG_PATH = "pkg://pico.configs"
USER_ERRORS = (ValueError, FileNotFoundError, MissingMandatoryValue, NonFiniteLossError)
EVAL_PARTS = {
    "all": {"classifier", "knn", "linear"},
    "classifier": {"classifier"},
    "prototype": {"classifier"},
    "knn": {"knn"},
    "linear": {"linear"},
}


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
    """Train as configured by ``cfg`` (the composed ``train`` config); return the results.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this: the process group
    is set up from the environment for the run and destroyed after it (a group that
    already exists is used as it is), and every rank uses rank 0's ``run_dir``.
    """
    with process_group(cfg.trainer.device):
        return _train(cfg)


@contextlib.contextmanager
def _claimed_run_dir(cfg: DictConfig) -> Iterator[Path]:
    """Rank 0's ``cfg.run_dir`` on every rank, created and locked by rank 0 for the block
    (:func:`~pico.engine.run_dir.run_dir_lock`); a failure is raised on every rank.

    A non-zero rank whose own (Hydra-made) folder differs, as when ranks resolved the
    default timestamp a second apart, removes it when it is empty.
    """
    own = str(cfg.run_dir)
    cfg.run_dir = broadcast_object(own)
    run_dir = Path(cfg.run_dir)
    with contextlib.ExitStack() as stack:
        problem = None
        if is_main_process():
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(run_dir_lock(run_dir))
            except OSError as err:
                problem = (
                    f"run_dir={run_dir} is not writable ({err.strerror or err}); "
                    "pass run_dir=DIR for a folder you can write to"
                )
            except RunDirError as err:
                problem = str(err)
        elif own != cfg.run_dir:
            with contextlib.suppress(OSError):
                Path(own).rmdir()
        problem = broadcast_object(problem)
        if problem:
            raise RunDirError(problem)
        yield run_dir


def _resume_point(trainer: Trainer, cfg: DictConfig) -> Path | None:
    """The checkpoint to resume from, chosen by rank 0 for every rank; a fresh run in a
    directory holding an earlier run is refused unless ``overwrite=true``."""
    outcome: Path | ValueError | None = None
    if is_main_process():
        try:
            outcome = trainer.resume_path(cfg.resume)
            if outcome is None and cfg.resume not in AUTO_RESUME:
                refuse_overwrite(trainer.run_dir, bool(cfg.get("overwrite", False)))
        except ValueError as err:
            outcome = err
    outcome = broadcast_object(outcome)
    if isinstance(outcome, ValueError):
        raise outcome
    return outcome


def _short(target: str) -> str:
    return target.rsplit(".", 1)[-1]


def run_header(cfg: DictConfig, exp: Experiment, run_dir: Path) -> str:
    """The lines a run prints at its start: method, data, model, candidate sets, budget,
    device and run directory (``print_config=true`` prints the whole config instead)."""
    bundle, trainer = exp.bundle, cfg.trainer
    method = _short(cfg.method._target_)
    if HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("method"):
        method += f" (method={HydraConfig.get().runtime.choices['method']})"
    given = cfg.data.get("candidates")
    candidates = "none (the labels as they are)"
    if bundle.train.candidates is not None:
        stats = candidate_summary(bundle.train.candidates)
        made = "from the data" if given is None else " ".join(f"{k}={v}" for k, v in given.items())
        candidates = (
            f"{made}: mean set size {stats['mean_size']:.2f} of {bundle.num_classes} "
            f"(min {int(stats['min_size'])}, max {int(stats['max_size'])})"
        )
    parameters = sum(p.numel() for p in exp.method.parameters())
    steps = trainer.get("steps")
    budget = f"{steps} steps" if steps else f"{trainer.epochs} epoch{'s' * (trainer.epochs != 1)}"
    lines = {
        "method": method,
        "data": bundle.summary(),
        "candidates": candidates,
        "model": f"{_short(cfg.model._target_)}, {parameters:,} parameters with the heads",
        "training": f"{budget}, batch {trainer.batch_size}, seed {cfg.seed}",
        "device": str(exp.device),
        "run_dir": f"{run_dir} (config.yaml: the whole config; print_config=true prints it)",
    }
    return "\n".join(f"{key:<11} {value}" for key, value in lines.items()) + "\n"


def _train(cfg: DictConfig) -> dict[str, Any]:
    """Claim the run directory, check a resume against the checkpoint's fingerprint, and
    only then write into the directory and train."""
    validate_train_config(cfg)
    allowed = check_allow_changes(cfg.get("allow_changes") or [])
    set_determinism(cfg.trainer.deterministic)
    torch.manual_seed(cfg.seed)
    main = is_main_process()
    with _claimed_run_dir(cfg) as run_dir:
        trainer = Trainer(cfg.trainer, run_dir, cfg.seed)
        resume = _resume_point(trainer, cfg)
        exp = build_experiment(cfg)
        fingerprint = run_fingerprint(cfg, exp.bundle)
        if resume is not None:
            stored = load_checkpoint(resume).get("fingerprint")
            check_resume(resume, stored, fingerprint, allowed)
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        if main:
            if resume is None and finished_outputs(run_dir):
                clear_outputs(run_dir)  # overwrite=true, or resume=auto_or_new found none good
            remove_stale_temporaries(trainer.ckpt_dir)
            (run_dir / "config.yaml").write_text(config_yaml)
            print(config_yaml if cfg.get("print_config", False) else run_header(cfg, exp, run_dir))
        result = exp.fit(
            trainer,
            cfg.eval,
            config_yaml=config_yaml,
            resume=str(resume) if resume else None,
            fingerprint=fingerprint,
        )
    if not main:
        return result
    rows = {"final": result["final"]}
    if result["best"]:
        rows[f"best (epoch {result['best']['epoch']})"] = result["best"]
    print(f"\nrun directory: {run_dir}")
    print(f"best checkpoint chosen by {cfg.eval.select_metric} ({cfg.eval.select_mode})")
    print(f"{result['images_per_second']:.0f} images/s, {result['train_seconds']:.1f} s\n")
    print(format_table(rows))
    return result


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value


def apply_data_overrides(data: DictConfig, given: Mapping[str, Any], prefix: str = "data") -> None:
    """Set ``given`` (nested, as ``data.KEY=VALUE`` overrides arrive) on a run's stored
    ``data`` config; a key the stored config lacks is a ``ValueError``.

    The stored config is resolved, and the data configs hand their keys to the loader by
    interpolation (``source: {root: ${..root}}``): a ``data.source.KEY`` that held the
    same value as ``data.KEY`` follows the new value, unless it is given itself.
    """
    for key, value in given.items():
        name = f"{prefix}.{key}"
        if key not in data:
            raise ValueError(
                f"{name} is not a key of the checkpoint's data config; its keys there: "
                f"{', '.join(str(k) for k in data)}"
            )
        old = data[key]
        if isinstance(old, DictConfig) and isinstance(value, Mapping):
            apply_data_overrides(old, value, name)
            continue
        data[key] = value
        source = data.get("source") if prefix == "data" else None
        if (
            isinstance(source, DictConfig)  # follows data.KEY unless data.source.KEY is given
            and key in source
            and key != "source"
            and key not in given.get("source", {})
            and _plain(source[key]) == _plain(old)
        ):
            source[key] = value


def _data_overrides(cfg: DictConfig) -> dict[str, Any]:
    """The ``data.`` overrides of a pico-eval / pico-export / pico-predict config, plain."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)  # cfg.data is a mapping (``data: {}`` in the config)
    # keys from Hydra overrides are strings; OmegaConf types them as any DictKeyType
    return cast(dict[str, Any], data)


def _flat(given: Mapping[str, Any], prefix: str = "data") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in given.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def _write_reported(path: Path, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` with ``write`` and say so: ``replaced`` when a file was there."""
    existed = path.exists()
    write(path)
    print(f"{'replaced' if existed else 'written'} {path}")
    return path


def run_evaluation(
    checkpoint: str | Path,
    device: str = "auto",
    parts: str = "all",
    data: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
) -> dict[str, float]:
    """Rebuild the run of ``checkpoint`` from its stored config and evaluate it.

    ``parts`` is ``all`` or one of ``classifier`` (classifier head and label-free metrics),
    ``prototype`` (the same, for prototype accuracy), ``knn`` or ``linear``. ``all`` also
    writes the t-SNE figure ``embedding.png``. ``data`` changes the stored data config
    (:func:`apply_data_overrides`), e.g. ``{"root": DIR}`` after the data moved. Results
    go to ``eval.json`` in ``out`` (default: the run directory, beside ``checkpoints/``);
    a file already there is replaced, and the replacement is reported.
    """
    if parts not in EVAL_PARTS:
        raise ValueError(f"parts={parts} is unknown; choose one of {sorted(EVAL_PARTS)}")
    path = Path(checkpoint)
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), str) or not isinstance(state.get("method"), dict):
        raise CheckpointError(
            f"{path} is not a pico-train checkpoint (it holds no run config and method "
            "state; a pico-export output holds a model for inference, which pico-predict "
            "takes); pass run_dir/checkpoints/best.pt or last.pt"
        )
    cfg = OmegaConf.create(state["config"])
    cfg.trainer.device = device
    changed = _flat(data or {})
    apply_data_overrides(cfg.data, data or {})
    exp = build_experiment(cfg)
    exp.method.load_state_dict(state["method"])
    exp.method.to(exp.device)
    metrics = exp.evaluator.evaluate(exp.method, EVAL_PARTS[parts])
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    out_dir = Path(out) if out is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if parts == "all":
        print("t-SNE of the test features for embedding.png (parts=classifier skips it)")
        figure = exp.evaluator.embedding(exp.method, epoch=state["epoch"])
        _write_reported(out_dir / "embedding.png", lambda p: save_embedding_png(figure, p))
    record = {"checkpoint": str(path), "epoch": state["epoch"], "parts": parts}
    if changed:
        record["data_overrides"] = changed
    text = json.dumps({**record, **metrics}, indent=2)
    print(format_table({f"epoch {state['epoch']}": metrics}))
    print()
    _write_reported(out_dir / "eval.json", lambda p: p.write_text(text))
    return metrics


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
            sys.exit(2)

    return wrapper


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
    formats = _plain(cfg.formats)
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
