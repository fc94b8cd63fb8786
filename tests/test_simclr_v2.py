"""SimCLR v2: the 3-layer projector, the loss, its config and exact resume."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_exact_resume,
    build_method,
    method_config,
    step_info,
    tiny_backbone,
    tiny_batch,
    tiny_task,
)
from hydra import compose, initialize_config_module
from torch import nn

from pico.baselines import SimCLR, SimCLRv2
from pico.core.losses import nt_xent

INFO = step_info()


def test_projector_has_three_layers_as_wide_as_the_features_with_batch_norm() -> None:
    method = SimCLRv2(tiny_backbone(32), tiny_task())
    layers = [type(m) for m in method.projector]
    assert layers == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    linears = [m for m in method.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 32), (32, 32), (32, 128)]
    assert [m.bias is None for m in linears] == [True, True, False]  # BN follows the hidden
    assert all(m.num_features == 32 for m in method.projector if isinstance(m, nn.BatchNorm1d))
    assert method.temperature == 0.1 and SimCLRv2.views == SimCLR.views


def test_simclr_takes_the_projector_depth_and_a_feature_wide_hidden_layer() -> None:
    v1 = SimCLR(tiny_backbone(32), tiny_task(), proj_hidden=24)
    assert [type(m) for m in v1.projector] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    deep = SimCLR(tiny_backbone(32), tiny_task(), proj_hidden=None, proj_layers=4)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in deep.projector) == 3
    assert deep.projector[0].out_features == 32
    with pytest.raises(ValueError, match="proj_layers must be >= 2"):
        SimCLRv2(tiny_backbone(), tiny_task(), proj_layers=1)
    with pytest.raises(ValueError, match="SimCLRv2 temperature must be > 0"):
        SimCLRv2(tiny_backbone(), tiny_task(), temperature=0.0)


def test_loss_is_nt_xent_of_the_normalised_projections_and_reaches_every_layer() -> None:
    torch.manual_seed(0)
    method = SimCLRv2(tiny_backbone(16), tiny_task(), proj_dim=8)
    batch = tiny_batch()
    loss = method.training_step(batch, INFO)["loss"]
    a, b = (method.projector(method.backbone(v)) for v in batch.views)
    want = nt_xent(a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True), 0.1)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.optim_parameters())


def test_method_config_composes_the_paper_values() -> None:
    cfg = method_config("simclr_v2")
    assert cfg.method.proj_layers == 3 and cfg.method.proj_hidden is None
    assert cfg.method.temperature == 0.1 and cfg.method.proj_dim == 128
    assert cfg.eval.select_metric == "val/knn_top1" and cfg.eval.linear_probe
    method = build_method(cfg.method)
    assert isinstance(method, SimCLRv2)
    assert torch.isfinite(method.training_step(tiny_batch(), INFO)["loss"])
    with initialize_config_module("pico.configs", version_base="1.3"):
        run = compose("train", overrides=["method=simclr_v2", "data=digits"])
    assert run.method.temperature == 0.1  # no digits tuning: the paper's values
    assert run.model.init_head_layers == 0 and run.model.init_from is None


def test_resume_from_mid_run_checkpoint_matches_uninterrupted_run(make_config, tmp_path) -> None:
    assert_exact_resume(make_config, tmp_path, "method=simclr_v2")
