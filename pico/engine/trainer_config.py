"""The trainer's settings as a typed config: :class:`TrainerConfig`, whose defaults are
``configs/trainer/default.yaml`` (``tests/test_trainer_config.py`` checks it)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: ``trainer.optimizer`` of ``configs/trainer/default.yaml`` (``trainer/optimizer=sgd``)
DEFAULT_OPTIMIZER: dict[str, Any] = {
    "_target_": "torch.optim.SGD",
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.001,
}


@dataclass
class TrainerConfig:
    """What :class:`~pico.engine.trainer.Trainer` reads: the ``trainer`` config node of
    ``pico-train``, one field per key of ``configs/trainer/default.yaml`` (whose comments
    say what each does). ``optimizer`` is a partial optimizer config with ``_target_``."""

    epochs: int = 30
    steps: int | None = None
    max_steps: int | None = None
    batch_size: int = 64
    lr_warmup_epochs: float = 0
    final_lr_ratio: float = 0.0
    device: str = "auto"
    threads: int | str = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    compile_mode: str = "default"
    sync_bn: bool = False
    eval_every: int = 1
    figure_every: int = 10
    embedding_figure: bool = True
    log_every: int = 20
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    progress: bool = True
    keep_last: int = 2
    checkpoint_every_steps: int = 0
    nonfinite: str = "stop"
    deterministic: bool = False
    optimizer: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_OPTIMIZER))

    @classmethod
    def from_config(cls, cfg: TrainerConfig | Mapping[str, Any] | None = None) -> TrainerConfig:
        """``cfg`` as a :class:`TrainerConfig`: one as it is, or a dict or OmegaConf node
        (resolved) of some of its keys, the others keeping their defaults. An
        ``optimizer`` with ``_target_`` replaces the default SGD; one without changes the
        default SGD's values (``{"optimizer": {"lr": 0.1}}``). An unknown key is a
        ``ValueError`` naming it."""
        if isinstance(cfg, TrainerConfig):
            return cfg
        values = _plain(cfg or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(str(key) for key in values if key not in known)
        if unknown:
            raise ValueError(
                f"unknown trainer config key{'s' * (len(unknown) > 1)} {unknown}; the keys "
                f"of TrainerConfig (configs/trainer/default.yaml) are {known}"
            )
        optimizer = values.get("optimizer")
        if isinstance(optimizer, Mapping) and "_target_" not in optimizer:
            values["optimizer"] = {**DEFAULT_OPTIMIZER, **optimizer}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (the ``trainer`` node of a run's config)."""
        return dataclasses.asdict(self)


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A dict of ``cfg``: an OmegaConf node resolved to plain containers."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)  # a DictConfig gives a dict
        return {str(key): value for key, value in container.items()}
    return dict(cfg)
