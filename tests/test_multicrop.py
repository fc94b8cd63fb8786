"""Multi-crop: views of mixed sizes from the aug configs, encoded by size, through the
engine (eager and compiled), and the optimizer hooks methods use with them."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import CONFIGS
from omegaconf import OmegaConf
from torch import nn

from pico.baselines.swav import SwAV
from pico.cli import run_training
from pico.core.multicrop import encode_views, multicrop_views
from pico.data.augment import build_augment
from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.engine.optim import scale_weight_decay_
from pico.models.convnet import SmallConvNet


def test_multicrop_view_names():
    assert multicrop_views(3) == ("contrastive",) * 2 + ("local",) * 3
    assert multicrop_views(0, 1, "g", "l") == ("g",)
    with pytest.raises(ValueError, match="at least one global crop"):
        multicrop_views(2, num_global_crops=0)


def test_local_recipe_makes_smaller_views_of_the_same_images():
    aug = OmegaConf.load(CONFIGS / "aug" / "digits.yaml")
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    views = [build_augment(aug[name], (0.3,), (0.4,))(x, gen) for name in multicrop_views(2)]
    assert [tuple(v.shape) for v in views] == [(5, 1, 8, 8)] * 2 + [(5, 1, 4, 4)] * 2
    assert not torch.equal(views[2], views[3])  # each local crop draws its own boxes


class _Counting(nn.Module):
    """Per-row sum of squares minus the batch mean (so a pass depends on its batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        out = x.flatten(1).pow(2).sum(1, keepdim=True)
        return out - out.mean()


def test_encode_views_runs_one_pass_per_run_of_equal_shapes():
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(3, 1, s, s, generator=gen) for s in (8, 8, 4, 4, 4, 8)]
    encoder = _Counting()
    out = encode_views(encoder, views)
    assert encoder.shapes == [(6, 1, 8, 8), (9, 1, 4, 4), (3, 1, 8, 8)]
    groups = [torch.cat(views[:2]), torch.cat(views[2:5]), views[5]]
    want = [*encoder(groups[0]).chunk(2), *encoder(groups[1]).chunk(3), encoder(groups[2])]
    assert len(out) == 6
    for got, expected in zip(out, want, strict=True):
        torch.testing.assert_close(got, expected)


def _swav() -> SwAV:
    torch.manual_seed(0)
    task = TaskInfo(num_classes=3, num_train=16, input_shape=(1, 8, 8), kind="image")
    backbone = SmallConvNet(1, (4, 8))
    return SwAV(backbone, task, proj_hidden=8, proj_dim=4, num_prototypes=5, queue_size=0)


def test_compiled_method_takes_views_of_mixed_sizes():
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(6, 1, s, s, generator=gen) for s in (8, 8, 4, 4, 4, 4, 4, 4)]
    eager = _swav().train()
    compiled = copy.deepcopy(eager)
    compiled.compile_parts()
    info = StepInfo(epoch=1, step=0, epochs=2, steps_per_epoch=1)
    batch = Batch(torch.arange(6), views)
    got = compiled.training_step(batch, info)["loss"]
    want = eager.training_step(batch, info)["loss"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.backward()
    want.backward()
    for (name, a), b in zip(compiled.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_scale_weight_decay_scales_the_configured_value_and_resumes():
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD(
        [{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}],
        lr=0.1,
        weight_decay=0.04,
    )
    for factor in (3.0, 10.0):
        scale_weight_decay_(optimizer, factor)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.04 * factor, 0.0]
    restored = torch.optim.SGD(
        [{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=0.1
    )
    restored.load_state_dict(optimizer.state_dict())
    scale_weight_decay_(restored, 2.0)
    assert restored.param_groups[0]["weight_decay"] == pytest.approx(0.08)


@pytest.mark.slow
def test_trainer_runs_multicrop_views_and_schedules_weight_decay(make_config, tmp_path):
    """DINO on digits: 2 global 8 px crops and 2 local 4 px ones, weight decay x1 -> x5."""
    cfg = make_config(
        "method=dino", "method.num_local_crops=2", "method.out_dim=32",
        "method.hidden_dim=16", "method.bottleneck_dim=8", "method.weight_decay_end_ratio=5",
        "trainer.epochs=1", "trainer.embedding_figure=false", "eval.linear_probe=false",
    )  # fmt: skip
    run_training(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    group = ckpt["optimizer"]["param_groups"][0]
    base = cfg.trainer.optimizer.weight_decay
    assert group["initial_weight_decay"] == base
    assert group["weight_decay"] == pytest.approx(5 * base)  # the last step's value
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["final"]["test/knn_top1"] <= 1.0
