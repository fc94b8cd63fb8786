"""Train and evaluate from Python: :func:`train` runs what ``pico-train`` runs and
:func:`evaluate` what ``pico-eval`` runs, printing nothing themselves (``announce=print``
shows the run header); :mod:`pico.cli` is the command-line layer over them::

    import pico

    result = pico.train(["method=proden", "trainer.epochs=2", "run_dir=runs/proden"])
    scores = pico.evaluate("runs/proden/checkpoints/best.pt").metrics
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from pico.core.distributed import broadcast_object, is_main_process
from pico.engine.checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries
from pico.engine.distributed_run import process_group
from pico.engine.fingerprint import check_allow_changes, check_resume, run_fingerprint
from pico.engine.run_dir import (
    RunDirError,
    clear_outputs,
    finished_outputs,
    refuse_overwrite,
    run_dir_lock,
)
from pico.engine.trainer import AUTO_RESUME, Trainer, set_determinism
from pico.engine.validate import validate_train_config
from pico.eval.embedding import save_embedding_png
from pico.experiment import Experiment, build_experiment
from pico.pll.candidates import candidate_summary

#: the package holding ``train.yaml`` and the config groups (``configs/`` in the source tree)
CONFIG_MODULE = "pico.configs"
#: ``parts`` of :func:`evaluate` and the evaluator parts each one computes
EVAL_PARTS = {
    "all": {"classifier", "knn", "linear"},
    "classifier": {"classifier"},
    "prototype": {"classifier"},
    "knn": {"knn"},
    "linear": {"linear"},
}

Announce = Callable[[str], None]


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The ``train`` config of ``pico-train OVERRIDES...`` (e.g. ``["method=proden",
    "trainer.epochs=2"]``), with ``run_dir`` resolved as pico-train resolves it (default
    ``runs/METHOD-DATA/TIMESTAMP``)."""
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    hydra = HydraConfig.instance()
    previous = hydra.cfg
    hydra.set_config(cfg)  # for ${hydra:runtime.choices.method}, then as it was
    try:
        run_dir = str(cfg.run_dir)
    finally:
        hydra.cfg = previous
    with open_dict(cfg):
        del cfg["hydra"]
    cfg.run_dir = run_dir
    return cfg


def train(
    config: DictConfig | Sequence[str] = (), announce: Announce | None = None
) -> dict[str, Any]:
    """Train as ``pico-train`` does; ``config`` is the composed ``train`` config or the
    overrides of a pico-train command line (:func:`compose_config`). Returns what the
    run's ``metrics.json`` holds (``final``, ``best``, ``history``, ...) and ``run_dir``.

    The run directory is claimed and checked (a fresh run into an earlier run's directory
    needs ``overwrite=true``), ``config.yaml`` written there, and ``announce`` (e.g.
    ``print``) is called on the main process with the run header (with
    ``print_config=true`` the whole config) before training starts.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this: the process group
    is set up from the environment for the run and destroyed after it (a group that
    already exists is used as it is), and every rank uses rank 0's ``run_dir``.
    """
    if isinstance(config, DictConfig):
        cfg = config
    else:
        cfg = compose_config([config] if isinstance(config, str) else config)
    with process_group(cfg.trainer.device):
        return _train(cfg, announce)


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
    """The lines a run announces at its start: method, data, model, candidate sets,
    budget, device and run directory (``print_config=true`` announces the whole config
    instead)."""
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


def _train(cfg: DictConfig, announce: Announce | None) -> dict[str, Any]:
    """Claim the run directory, check a resume against the checkpoint's fingerprint, and
    only then write into the directory and train."""
    validate_train_config(cfg)
    allowed = check_allow_changes(cfg.get("allow_changes") or [])
    set_determinism(cfg.trainer.deterministic)
    torch.manual_seed(cfg.seed)
    with _claimed_run_dir(cfg) as run_dir:
        trainer = Trainer(cfg.trainer, run_dir, cfg.seed)
        resume = _resume_point(trainer, cfg)
        exp = build_experiment(cfg)
        fingerprint = run_fingerprint(cfg, exp.bundle)
        if resume is not None:
            stored = load_checkpoint(resume).get("fingerprint")
            check_resume(resume, stored, fingerprint, allowed)
        config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        if is_main_process():
            if resume is None and finished_outputs(run_dir):
                clear_outputs(run_dir)  # overwrite=true, or resume=auto_or_new found none good
            remove_stale_temporaries(trainer.ckpt_dir)
            (run_dir / "config.yaml").write_text(config_yaml)
            if announce is not None:
                print_config = cfg.get("print_config", False)
                announce(config_yaml if print_config else run_header(cfg, exp, run_dir))
        result = exp.fit(
            trainer,
            cfg.eval,
            config_yaml=config_yaml,
            resume=str(resume) if resume else None,
            fingerprint=fingerprint,
        )
    return {**result, "run_dir": str(run_dir)}


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


def _flat(given: Mapping[str, Any], prefix: str = "data") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in given.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


@dataclass
class Evaluation:
    """What :func:`evaluate` computed and wrote."""

    #: metric name (``test/top1``, ``val/knn_top1``, ...) to value
    metrics: dict[str, float]
    #: the checkpoint's epoch
    epoch: int
    #: ``eval.json``, and ``embedding.png`` for ``parts="all"``: file name to path
    files: dict[str, Path] = field(default_factory=dict)


def eval_dir(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Where :func:`evaluate` writes: ``out``, or the run directory of ``checkpoint``
    (beside ``checkpoints/``)."""
    if out is not None:
        return Path(out)
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def evaluate(
    checkpoint: str | Path,
    device: str = "auto",
    parts: str = "all",
    data: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    announce: Announce | None = None,
) -> Evaluation:
    """Rebuild the run of ``checkpoint`` from its stored config and evaluate it.

    ``parts`` is ``all`` or one of ``classifier`` (classifier head and label-free metrics),
    ``prototype`` (the same, for prototype accuracy), ``knn`` or ``linear``. ``all`` also
    writes the t-SNE figure ``embedding.png`` (``announce`` is called before it, a slow
    step). ``data`` changes the stored data config (:func:`apply_data_overrides`), e.g.
    ``{"root": DIR}`` after the data moved. Results go to ``eval.json`` in
    :func:`eval_dir`; a file already there is replaced.
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
    exp = build_experiment(cfg, trained=state["method"])
    exp.method.load_state_dict(state["method"])
    exp.method.to(exp.device)
    metrics = exp.evaluator.evaluate(exp.method, EVAL_PARTS[parts])
    out_dir = eval_dir(path, out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = Evaluation(metrics, state["epoch"])
    if parts == "all":
        if announce is not None:
            announce("t-SNE of the test features for embedding.png (parts=classifier skips it)")
        figure = exp.evaluator.embedding(exp.method, epoch=state["epoch"])
        result.files["embedding.png"] = out_dir / "embedding.png"
        save_embedding_png(figure, result.files["embedding.png"])
    record = {"checkpoint": str(path), "epoch": state["epoch"], "parts": parts}
    if changed:
        record["data_overrides"] = changed
    result.files["eval.json"] = out_dir / "eval.json"
    result.files["eval.json"].write_text(json.dumps({**record, **metrics}, indent=2))
    return result
