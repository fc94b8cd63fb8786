"""InvaSpread: its loss against a naive float64 loop, the method, its config and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import (
    assert_exact_resume,
    build_method,
    method_config,
    noisy_views,
    step_info,
    tiny_backbone,
    tiny_batch,
    tiny_task,
)
from hydra import compose, initialize_config_module
from torch import Tensor, nn

from pico.baselines.invaspread import InvaSpread
from pico.core.losses import invaspread_loss
from pico.engine.method import Batch

DT = torch.float64
INFO = step_info()
WORLD = 2


def _unit(rows: int, dim: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=gen, dtype=DT), dim=1).requires_grad_(True)


def _naive_invaspread(z1: Tensor, z2: Tensor, t: float) -> Tensor:
    """Per view a of the 2N: -log P(a'|a) - sum_{b not in {a, a'}} log(1 - P(b|a)), with
    P(b|a) = exp(z_a.z_b/t) / sum_{c != a} exp(z_a.z_c/t)."""
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for a in range(n2):
        partner = (a + n) % n2
        denom = sum(torch.exp((z[a] * z[c]).sum() / t) for c in range(n2) if c != a)

        def prob(b, a=a, denom=denom):
            return torch.exp((z[a] * z[b]).sum() / t) / denom

        total = total - torch.log(prob(partner))
        for b in range(n2):
            if b not in (a, partner):
                total = total - torch.log(1 - prob(b))
    return total / n2


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_loss_matches_naive_loop_in_value_and_gradient(t: float) -> None:
    z1, z2 = _unit(5, 4, seed=1), _unit(5, 4, seed=2)
    got = invaspread_loss(z1, z2, t)
    want = _naive_invaspread(z1, z2, t)
    torch.testing.assert_close(got, want)
    for g, w in zip(
        torch.autograd.grad(got, [z1, z2]), torch.autograd.grad(want, [z1, z2]), strict=True
    ):
        torch.testing.assert_close(g, w)


def test_wrong_pairing_changes_the_loss() -> None:
    z1, z2 = _unit(6, 4, seed=3), _unit(6, 4, seed=4)
    z2 = (z1 + 0.2 * z2).detach()  # views close to their partners
    right = invaspread_loss(z1, z2)
    wrong = invaspread_loss(z1, z2.roll(1, dims=0))
    assert wrong > right + 1.0
    # the negative term counts: the loss is more than the positive-pair cross-entropy
    z = torch.cat([z1, z2])
    logits = (z @ z.T / 0.1).masked_fill(torch.eye(12, dtype=torch.bool), float("-inf"))
    positive_only = F.cross_entropy(logits, torch.cat([torch.arange(6) + 6, torch.arange(6)]))
    assert right > positive_only


def test_loss_stays_finite_when_one_view_takes_all_the_probability() -> None:
    z1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    z2 = z1.detach().clone()
    loss = invaspread_loss(z1, z2, temperature=0.01)  # P(a'|a) rounds to 1 in float32
    (grad,) = torch.autograd.grad(loss, z1)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_bad_loss_input_is_a_clear_error() -> None:
    z = _unit(4, 3, seed=5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        invaspread_loss(z, z, 0.0)
    with pytest.raises(ValueError, match="same rows, got 4 and 3"):
        invaspread_loss(z, z[:3])
    with pytest.raises(ValueError, match="z2 must have width 3"):
        invaspread_loss(z, z[:, :2])


def _method(seed: int = 0, temperature: float = 0.1) -> InvaSpread:
    torch.manual_seed(seed)
    return InvaSpread(tiny_backbone(), tiny_task(), proj_dim=8, temperature=temperature)


def test_method_is_one_encoder_with_a_linear_embedding_and_no_bank() -> None:
    method = _method()
    assert isinstance(method.head, nn.Linear) and method.head.out_features == 8
    assert InvaSpread.views == ("contrastive", "contrastive")
    assert not list(method.buffers())  # no memory bank, no momentum encoder
    assert {k.split(".")[0] for k in method.state_dict()} == {"backbone", "head"}
    assert InvaSpread(tiny_backbone(), tiny_task()).head.out_features == 128


def test_step_is_the_loss_of_normalised_embeddings() -> None:
    method = _method()
    batch = tiny_batch()
    loss = method.training_step(batch, INFO)["loss"]
    a, b = batch.views
    z_a = F.normalize(method.head(method.backbone(a)), dim=1)
    z_b = F.normalize(method.head(method.backbone(b)), dim=1)
    torch.testing.assert_close(loss, invaspread_loss(z_a, z_b, 0.1))
    torch.testing.assert_close(method.embed(a), z_a.detach())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.optim_parameters())


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
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        _method(temperature=0.0)
    with pytest.raises(ValueError, match="proj_dim must be >= 1"):
        InvaSpread(tiny_backbone(), tiny_task(), proj_dim=0)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        method = _method()
        views = noisy_views(4, seed=60 + rank)
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
    """Negatives from the global batch: two ranks of 4 images give the gradient of the
    loss over all 8 images in one process."""
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    method = _method()
    parts = [[method.embed_views(v) for v in noisy_views(4, seed=60 + r)] for r in range(WORLD)]
    z_a = torch.cat([p[0] for p in parts])
    z_b = torch.cat([p[1] for p in parts])
    invaspread_loss(z_a, z_b, 0.1).backward()
    want = [p.grad for p in method.optim_parameters()]
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)


def test_method_config_builds_and_runs_on_tiny_data() -> None:
    cfg = method_config("invaspread")
    assert cfg.eval.select_metric == "val/knn_top1" and cfg.eval.knn.enabled
    method = build_method(cfg.method)
    assert isinstance(method, InvaSpread) and method.temperature == 0.1
    assert torch.isfinite(method.training_step(tiny_batch(), INFO)["loss"])


def test_digits_run_composes_with_knn_linear_probe_the_paper_optimizer_and_tuning() -> None:
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=["data=digits", "method=invaspread"])
    assert cfg.eval.linear_probe and cfg.eval.knn.enabled
    assert cfg.trainer.epochs == 100 and cfg.trainer.batch_size == 64
    assert cfg.trainer.optimizer.lr == pytest.approx(0.03 * 64 / 128)
    assert cfg.trainer.optimizer.weight_decay == 5e-4
    assert cfg.method.temperature == 0.2  # configs/tuning/invaspread_digits.yaml
    with initialize_config_module("pico.configs", version_base="1.3"):
        paper = compose("train", overrides=["data=digits", "method=invaspread", "~tuning"])
    assert paper.method.temperature == 0.1


def test_resume_from_mid_run_checkpoint_matches_uninterrupted_run(make_config, tmp_path) -> None:
    common = ["method=invaspread"]
    assert_exact_resume(make_config, tmp_path, *common)
