"""Shared fixtures and helpers: small Hydra configs, and tiny backbones, tasks and batches
for the method tests (1x4x4 inputs, a few rows), importable with ``from conftest import``."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from pico.configs import method_defaults
from pico.engine.method import Batch, Method, StepInfo, TaskInfo

TINY = ["trainer.epochs=2", "trainer.progress=false", "trainer.batch_size=64"]
TINY_CONVNET = ["model.widths=[8,16,16]"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: shape of one tiny input image
TINY_SHAPE = (1, 4, 4)


@pytest.fixture
def make_config(tmp_path):
    """Compose the packaged ``train`` config with small-run overrides."""

    def make(*overrides: str, run_dir: str = "run", tiny_convnet: bool = True):
        base = TINY + (TINY_CONVNET if tiny_convnet else [])
        with initialize_config_module("pico.configs", version_base="1.3"):
            return compose("train", overrides=[*base, f"run_dir={tmp_path / run_dir}", *overrides])

    return make


def assert_same_tensors(a, b, where=""):
    """Every tensor in two nested checkpoint structures is identical."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_exact_resume(make_config, tmp_path: Path, *overrides: str) -> dict:
    """Train 4 epochs with ``overrides``, resume a copy of the epoch-2 checkpoint into
    another run directory, and check that both runs end with identical method, optimizer,
    scheduler and RNG state, step, history and best record; returns the uninterrupted
    run's final checkpoint."""
    from pico.cli import run_training
    from pico.engine.checkpoint import load_checkpoint

    common = [*overrides, "trainer.epochs=4", "trainer.embedding_figure=false"]
    run_training(make_config(*common, "trainer.keep_last=4"))
    mid = tmp_path / "mid.pt"
    shutil.copy(tmp_path / "run" / "checkpoints" / "epoch_0002.pt", mid)
    run_training(make_config(*common, f"resume={mid}", run_dir="resumed"))
    a = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    for key in ("method", "optimizer", "scheduler", "rng_cpu", "step", "history", "best"):
        assert_same_tensors(a[key], b[key], key)
    return a


def tiny_backbone(
    out_dim: int = 32, relu: bool = False, shape: tuple[int, ...] = TINY_SHAPE
) -> nn.Module:
    """Flatten -> Linear (-> ReLU): a backbone for inputs of ``shape`` (1x4x4 images by
    default) with ``out_dim`` features."""
    layers = [nn.Flatten(), nn.Linear(math.prod(shape), out_dim)]
    net = nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)
    net.out_dim = out_dim
    return net


def tiny_task(num_train: int = 8, num_classes: int = 3) -> TaskInfo:
    """TaskInfo of an image train split of ``num_train`` 1x4x4 rows (all labels 0)."""
    return TaskInfo(
        num_classes=num_classes,
        num_train=num_train,
        input_shape=TINY_SHAPE,
        kind="image",
        train_targets=torch.zeros(num_train, dtype=torch.long),
    )


def candidate_task(num_train: int = 24, num_classes: int = 4, seed: int = 0) -> TaskInfo:
    """TaskInfo of ``num_train`` 1x4x4 rows labelled ``row % num_classes`` with seeded
    candidate sets: the true label, and every other label with probability 0.4."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.arange(num_train) % num_classes
    candidates = torch.rand(num_train, num_classes, generator=gen) < 0.4
    candidates[torch.arange(num_train), targets] = True
    return TaskInfo(num_classes, num_train, TINY_SHAPE, "image", targets, candidates)


def step_info(step: int = 0, steps_per_epoch: int = 1) -> StepInfo:
    """Step ``step`` of a one-epoch run of ``steps_per_epoch`` steps."""
    return StepInfo(epoch=0, step=step, epochs=1, steps_per_epoch=steps_per_epoch)


def tiny_images(rows: int, seed: int) -> Tensor:
    """``rows`` standard-normal 1x4x4 images drawn from a generator seeded with ``seed``."""
    return torch.randn(rows, *TINY_SHAPE, generator=torch.Generator().manual_seed(seed))


def noisy_views(rows: int, seed: int, num_views: int = 2, noise: float = 0.3) -> list[Tensor]:
    """``num_views`` views ``x + noise * N(0, 1)`` of the same ``rows`` images ``x``; one
    generator seeded with ``seed`` draws the images, then each view's noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, *TINY_SHAPE, generator=gen)
    return [x + noise * torch.randn(x.shape, generator=gen) for _ in range(num_views)]


def tiny_batch(
    index: int | list[int] = 8, seed: int = 1, num_views: int = 2, noise: float = 0.3
) -> Batch:
    """A Batch of :func:`noisy_views` for train rows ``index`` (an int ``n``: rows 0..n-1)."""
    rows = torch.arange(index) if isinstance(index, int) else torch.tensor(index)
    views = noisy_views(len(rows), seed, num_views, noise)
    return Batch(rows, views, torch.zeros(len(rows), dtype=torch.long))


def method_config(name: str) -> DictConfig:
    """``configs/method/NAME.yaml`` with its ``method`` node completed, as composing the file
    completes it, by the constructor defaults it includes (``method_defaults/NAME``): every
    constructor argument, at its default unless the file sets it (no tuning applied);
    ``eval`` and ``trainer`` as the file sets them."""
    cfg = OmegaConf.load(CONFIGS / "method" / f"{name}.yaml")
    cfg.pop("defaults", None)
    cfg.method = OmegaConf.merge(method_defaults(cfg.method._target_), cfg.method)
    return cfg


def build_method(method_cfg: DictConfig, num_train: int = 8) -> Method:
    """Instantiate a ``method`` config node on :func:`tiny_backbone` and :func:`tiny_task`."""
    factory = instantiate(method_cfg, _partial_=True)
    return factory(backbone=tiny_backbone(), task=tiny_task(num_train))


def write_pll_mat(
    path: Path,
    n: int = 120,
    d: int = 6,
    c: int = 3,
    q: float = 0.3,
    seed: int = 0,
    sparse: bool = False,
) -> Path:
    """A partial-label ``.mat`` file in the real-world layout (``data`` N x D, ``target`` and
    ``partial_target`` C x N): Gaussian classes of equal size, each candidate set the true
    label plus every other class with probability ``q`` (stored scipy-sparse with
    ``sparse``)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % c
    data = rng.normal(0, 3, size=(c, d))[labels] + rng.normal(size=(n, d))
    target = np.zeros((c, n))
    target[labels, np.arange(n)] = 1
    partial = (rng.random((c, n)) < q).astype(float)
    partial[labels, np.arange(n)] = 1
    stored = scipy.sparse.csc_matrix(partial) if sparse else partial
    scipy.io.savemat(path, {"data": data, "target": target, "partial_target": stored})
    return path
