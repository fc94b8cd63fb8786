from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import (
    build_method,
    method_config,
    noisy_views,
    step_info,
    tiny_backbone,
    tiny_batch,
    tiny_task,
)
from torch import nn

from pico.baselines.simclr import SimCLR
from pico.core.losses import nt_xent
from pico.engine.method import Batch

INFO = step_info()
WORLD = 2


def _method(seed: int = 0, temperature: float = 0.5) -> SimCLR:
    torch.manual_seed(seed)
    return SimCLR(tiny_backbone(), tiny_task(), proj_hidden=24, proj_dim=8, temperature=temperature)


def test_projector_is_two_layer_mlp_with_batch_norm() -> None:
    layers = [type(m) for m in _method().projector]
    assert layers == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert SimCLR.views == ("contrastive", "contrastive")


def test_loss_equals_nt_xent_of_projected_views() -> None:
    method = _method(temperature=0.3)
    batch = tiny_batch()
    loss = method.training_step(batch, INFO)["loss"]
    a, b = batch.views
    z_a = method.projector(method.backbone(a))
    z_b = method.projector(method.backbone(b))
    want = nt_xent(z_a / z_a.norm(dim=1, keepdim=True), z_b / z_b.norm(dim=1, keepdim=True), 0.3)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is not None for p in method.optim_parameters())


def test_loss_decreases_on_fixed_batch() -> None:
    method = _method()
    batch = tiny_batch(16)
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.2, momentum=0.9)
    losses = []
    for _ in range(25):
        loss = method.training_step(batch, INFO)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(INFO)
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


def test_bad_temperature_raises_value_error() -> None:
    with pytest.raises(ValueError, match="temperature"):
        _method(temperature=0.0)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        method = _method()
        views = noisy_views(4, seed=50 + rank)
        method.training_step(Batch(torch.arange(4), views, torch.zeros(4)), INFO)["loss"].backward()
        grads = [p.grad.clone() for p in method.optim_parameters()]
        for g in grads:  # what DDP does: average the gradients over ranks
            dist.all_reduce(g)
            g /= WORLD
        torch.save(grads, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradient_equals_single_process_gradient_of_global_loss(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    # Reference: one process, each rank's views projected separately (per-rank BN
    # statistics), NT-Xent over the concatenation of all ranks' projections.
    method = _method()
    parts = [[method.project(v) for v in noisy_views(4, seed=50 + r)] for r in range(WORLD)]
    z_a = torch.cat([p[0] for p in parts])
    z_b = torch.cat([p[1] for p in parts])
    nt_xent(z_a, z_b, 0.5).backward()
    want = [p.grad for p in method.optim_parameters()]
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)


def test_method_config_builds_and_runs_on_tiny_data() -> None:
    cfg = method_config("simclr")
    assert cfg.eval.select_metric == "val/knn_top1" and cfg.eval.knn.enabled
    method = build_method(cfg.method)
    assert isinstance(method, SimCLR) and method.temperature == cfg.method.temperature
    assert torch.isfinite(method.training_step(tiny_batch(), INFO)["loss"])
