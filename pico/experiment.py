"""Build everything a run needs (data, model, method, augmentation, evaluation) from config."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from pico.data.augment import BatchAugment, build_augment
from pico.data.bundle import DataBundle
from pico.data.sources import load_data
from pico.engine.distributed_run import resolve_device
from pico.engine.method import Method, TaskInfo
from pico.eval.evaluator import Evaluator
from pico.models.factory import build_backbone, check_pretrained
from pico.models.transfer import BACKBONE_PREFIX, sub_state
from pico.pll.candidates import candidate_summary, format_candidate_summary

if TYPE_CHECKING:
    from pico.engine.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class Experiment:
    """The pieces of one run, built from a resolved config (``config``, the ``train``
    config of :func:`build_experiment`)."""

    bundle: DataBundle
    method: Method
    augmenters: dict[str, BatchAugment]
    evaluator: Evaluator
    device: torch.device
    config: DictConfig | None = None

    def fit(self, trainer: Trainer, eval_cfg: DictConfig, **kwargs: Any) -> dict[str, Any]:
        """Train with ``trainer`` on these pieces, the best checkpoint chosen by
        ``eval_cfg.select_metric`` and ``select_mode``; ``kwargs`` go to
        :meth:`~pico.engine.trainer.Trainer.fit` (``config_yaml``, ``resume``).

        Without ``config_yaml``, the checkpoints carry :meth:`run_config_yaml`, so
        ``pico-eval`` takes them."""
        if "config_yaml" not in kwargs and self.config is not None:
            kwargs["config_yaml"] = self.run_config_yaml(trainer)
        return trainer.fit(
            self.method,
            self.bundle,
            self.augmenters,
            self.evaluator,
            select_metric=eval_cfg.select_metric,
            select_mode=eval_cfg.select_mode,
            **kwargs,
        )

    def run_config_yaml(self, trainer: Trainer) -> str:
        """``config`` resolved as YAML, as the run with ``trainer`` used it: its
        ``trainer`` node, ``run_dir`` and ``seed`` are the trainer's."""
        assert self.config is not None, "an Experiment without its config"
        cfg = OmegaConf.create(OmegaConf.to_container(self.config))  # interpolations kept
        cfg.run_dir = str(trainer.run_dir)  # before resolving: ${hydra:...} needs a Hydra app
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        cfg.trainer = trainer.cfg.to_dict()
        cfg.seed = trainer.seed
        return OmegaConf.to_yaml(cfg)


def _method_config(method: DictConfig, rebuild: bool) -> DictConfig:
    """``method``, its :attr:`~pico.engine.method.Method.training_files` set to ``None``
    for a ``rebuild``; for training, a missing one is an error."""
    try:
        names = getattr(get_object(method._target_), "training_files", ())
    except Exception:  # a bad _target_: instantiate reports it
        return method
    if rebuild:
        return cast(DictConfig, OmegaConf.merge(method, {name: None for name in names}))
    for name in names:
        if method.get(name) is None:
            raise ValueError(
                f"method {method._target_} trains with method.{name}=PATH, which is not "
                f"set; pass method.{name}=CHECKPOINT"
            )
    return method


def build_experiment(cfg: DictConfig, trained: Mapping[str, Tensor] | None = None) -> Experiment:
    """Load data, build backbone and method, augmentation recipes and the evaluator.

    ``trained`` is the method state of a checkpoint the run is rebuilt from (``pico-eval``,
    ``pico-export``), which the caller loads: the backbone is shaped after it without
    reading ``model.init_from``, and the method is built without the files only training
    reads (its :attr:`~pico.engine.method.Method.training_files`, e.g. Distill's teacher).
    A training run must name those files; a missing one is refused before the data load.
    """
    method_cfg = _method_config(cfg.method, rebuild=trained is not None)
    queue_size = cfg.method.get("queue_size")
    if queue_size is not None and queue_size < cfg.trainer.batch_size:
        raise ValueError(
            f"method.queue_size={queue_size} is smaller than trainer.batch_size="
            f"{cfg.trainer.batch_size}; a queue must hold at least one batch of keys: raise "
            "method.queue_size or lower trainer.batch_size"
        )
    check_pretrained(cfg.model)  # refuse before the data is decoded, not after
    bundle = load_data(cfg.data)
    log.info("%s", bundle.summary())
    if not len(bundle.test) and cfg.data.get("test") != "none":
        raise ValueError(
            f"the test split of data={bundle.name} is empty, so no test metrics would be "
            "reported; give it examples (image folders: ROOT/test/<class>/*.jpg), or pass "
            "+data.test=none to train without a test split"
        )
    if bundle.train.candidates is not None:
        stats = candidate_summary(bundle.train.candidates, bundle.train.targets)
        log.info("train candidates: %s", format_candidate_summary(stats))
    backbone_trained = None if trained is None else sub_state(trained, BACKBONE_PREFIX)
    backbone = build_backbone(cfg.model, bundle.input_shape, bundle.kind, backbone_trained)
    task = TaskInfo(
        num_classes=bundle.num_classes,
        num_train=len(bundle.train),
        input_shape=bundle.input_shape,
        kind=bundle.kind,
        train_targets=bundle.train.targets,
        train_candidates=bundle.train.candidates,
        mean=bundle.mean,
        std=bundle.std,
        make_backbone=lambda shape: build_backbone(cfg.model, shape, bundle.kind),
    )
    method = instantiate(method_cfg, _partial_=True)(backbone=backbone, task=task)
    recipes = [*dict.fromkeys(method.views), "test"]
    missing = [name for name in recipes if name not in cfg.aug]
    if missing:
        raise ValueError(
            f"augmentation config has no recipe {missing} needed by the method "
            f"(it has {sorted(cfg.aug)}); add them to the aug config or pick another aug=..."
        )
    augmenters = {name: build_augment(cfg.aug[name], bundle.mean, bundle.std) for name in recipes}
    device = resolve_device(cfg.trainer.device)
    for augmenter in augmenters.values():
        augmenter.to(device)
    evaluator = Evaluator(cfg.eval, bundle, augmenters["test"], device)
    return Experiment(bundle, method, augmenters, evaluator, device, cfg)
