"""CPC: its loss against a naive float64 loop, the patch grid against slicing, the causality
of the context networks, the method, its config and resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import (
    assert_exact_resume,
    method_config,
    step_info,
    tiny_images,
    tiny_task,
)
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import Tensor, nn

from pico.baselines.cpc import (
    CPC,
    GRUContext,
    MaskedConvContext,
    RowCausalConv2d,
    patch_grid,
)
from pico.core.losses import cpc_loss
from pico.engine.method import Batch, TaskInfo
from pico.export import export_model
from pico.models.convnet import SmallConvNet
from pico.models.vit import VisionTransformer

DT = torch.float64
INFO = step_info()
WORLD = 2


def _randn(*shape: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=DT).requires_grad_(True)


def _naive_cpc(predictions: Tensor, z: Tensor) -> Tensor:
    """Per offset k, the mean over every (b, r, c) with r + k < Gh of
    -log(exp(p.z_target) / sum over all B*Gh*Gw encodings exp(p.z)); then the mean over k."""
    b, gh, gw, _ = z.shape
    steps = predictions.shape[1]
    everything = [(i, r, c) for i in range(b) for r in range(gh) for c in range(gw)]
    per_offset = []
    for k in range(1, steps + 1):
        terms = []
        for i in range(b):
            for r in range(gh - k):
                for c in range(gw):
                    p = predictions[i, k - 1, r, c]
                    denom = sum(torch.exp((p * z[j, s, t]).sum()) for j, s, t in everything)
                    terms.append(-torch.log(torch.exp((p * z[i, r + k, c]).sum()) / denom))
        per_offset.append(sum(terms) / len(terms))
    return sum(per_offset) / steps


@pytest.mark.parametrize(("b", "gh", "gw", "steps"), [(2, 3, 2, 2), (3, 4, 3, 1), (1, 4, 2, 3)])
def test_loss_matches_naive_loop_in_value_and_gradient(b, gh, gw, steps) -> None:
    z = _randn(b, gh, gw, 3, seed=1)
    predictions = _randn(b, steps, gh, gw, 3, seed=2)
    got = cpc_loss(predictions, z)
    want = _naive_cpc(predictions, z)
    torch.testing.assert_close(got, want)
    for g, w in zip(
        torch.autograd.grad(got, [predictions, z]),
        torch.autograd.grad(want, [predictions, z]),
        strict=True,
    ):
        torch.testing.assert_close(g, w)


def test_predictions_past_the_grid_are_ignored() -> None:
    z = _randn(2, 3, 2, 4, seed=3)
    predictions = _randn(2, 2, 3, 2, 4, seed=4)
    loss = cpc_loss(predictions, z)
    (grad,) = torch.autograd.grad(loss, predictions)
    used = torch.zeros(2, 2, 3, 2, dtype=torch.bool)
    used[:, 0, :2] = True  # k = 1: rows 0 and 1 predict rows 1 and 2
    used[:, 1, :1] = True  # k = 2: row 0 predicts row 2
    assert (grad[~used] == 0).all() and (grad[used].abs().sum(dim=-1) > 0).all()
    changed = predictions.detach().clone()
    changed[~used] = 100.0
    torch.testing.assert_close(cpc_loss(changed, z), loss.detach())


def test_matching_predictions_score_better_than_shifted_ones() -> None:
    z = F.normalize(_randn(4, 3, 3, 16, seed=5).detach(), dim=-1)
    exact = torch.stack([z.roll(-k, dims=1) for k in (1, 2)], dim=1)  # p[:, k-1, r] = z[:, r+k]
    right = cpc_loss(20 * exact, z)
    wrong = cpc_loss(20 * exact.roll(1, dims=0), z)  # predictions of another image
    assert right < 0.01 and wrong > 10


def test_bad_loss_input_is_a_clear_error() -> None:
    z = torch.zeros(2, 3, 2, 4)
    with pytest.raises(ValueError, match=r"encodings must be a \(B, Gh, Gw, D\) grid"):
        cpc_loss(torch.zeros(2, 1, 3, 2, 4), z.flatten(1, 2))
    with pytest.raises(ValueError, match=r"shape \(B, K, Gh, Gw, D\) = \(2, K, 3, 2, 4\)"):
        cpc_loss(torch.zeros(2, 1, 3, 3, 4), z)
    with pytest.raises(ValueError, match=r"K = 1..2 offsets for a grid of 3 rows.*K=3"):
        cpc_loss(torch.zeros(2, 3, 3, 2, 4), z)


@pytest.mark.parametrize(
    ("shape", "size", "stride", "grid"),
    [((2, 1, 8, 8), 4, 2, (3, 3)), ((1, 3, 32, 32), 8, 4, (7, 7)), ((2, 2, 6, 10), 2, 2, (3, 5))],
)
def test_patch_grid_matches_naive_slicing(shape, size, stride, grid) -> None:
    x = torch.randn(shape)
    patches = patch_grid(x, size, stride)
    assert patches.shape == (shape[0], *grid, shape[1], size, size)
    for i in range(grid[0]):
        for j in range(grid[1]):
            rows = slice(i * stride, i * stride + size)
            cols = slice(j * stride, j * stride + size)
            assert torch.equal(patches[:, i, j], x[:, :, rows, cols])


def _leaks_from_below(fn: Callable[[Tensor], Tensor], x: Tensor, row: int) -> bool:
    """Whether ``fn``'s output rows up to ``row`` change when the input rows below it do;
    rows are dim 1 of ``(B, Gh, Gw, D)`` grids."""
    changed = x.clone()
    changed[:, row + 1 :] = torch.randn_like(changed[:, row + 1 :])
    return not torch.allclose(fn(x)[:, : row + 1], fn(changed)[:, : row + 1])


def _channels_first(conv: nn.Module) -> Callable[[Tensor], Tensor]:
    """A convolution read as a function of ``(B, Gh, Gw, D)`` grids."""
    return lambda x: conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@torch.no_grad()
def test_context_networks_do_not_read_rows_below() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 6)
    contexts = {
        "row-causal conv": _channels_first(RowCausalConv2d(6, 6, 3)),
        "masked_conv": MaskedConvContext(6, 8, blocks=3),
        "gru": GRUContext(6, 8, layers=2),
    }
    for name, fn in contexts.items():
        for row in range(4):
            assert not _leaks_from_below(fn, x, row), (name, row)
        # every row above still reaches the last row within the receptive field
        assert not torch.allclose(
            fn(x)[:, 3], fn(x + (torch.arange(5) == 2).view(1, 5, 1, 1))[:, 3]
        )
    # the check can fail: a plain 3x3 convolution reads the row below
    assert _leaks_from_below(_channels_first(nn.Conv2d(6, 6, 3, padding=1)), x, 1)


@torch.no_grad()
def test_row_causal_conv_is_the_masked_square_convolution() -> None:
    torch.manual_seed(1)
    causal = RowCausalConv2d(3, 4, kernel_size=5)
    assert causal.weight.shape == (4, 3, 3, 5)
    masked = nn.Conv2d(3, 4, 5, padding=2)
    masked.weight.zero_()
    masked.weight[:, :, :3] = causal.weight  # kernel rows below the centre stay zero
    masked.bias.copy_(causal.bias)
    x = torch.randn(2, 3, 6, 7)
    torch.testing.assert_close(causal(x), masked(x))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        RowCausalConv2d(3, 4, kernel_size=2)


def _method(context: str = "masked_conv", seed: int = 0, **kwargs) -> CPC:
    """CPC on 1x4x4 inputs: a 3x3 grid of 2 px patches at stride 1, SmallConvNet(4, 8)."""
    torch.manual_seed(seed)
    args = {"patch_size": 2, "patch_stride": 1, "prediction_steps": 2, "context_layers": 1}
    args = {**args, "context_dim": 6, **kwargs}
    return CPC(SmallConvNet(widths=(4, 8)), tiny_task(), context=context, **args)


def test_patch_encodings_are_the_backbone_on_each_patch() -> None:
    method = _method().eval()
    x = tiny_images(3, seed=6)
    z = method.patch_encodings(x)
    assert z.shape == (3, 3, 3, 8)
    for r in range(3):
        for c in range(3):
            torch.testing.assert_close(z[:, r, c], method.backbone(x[:, :, r : r + 2, c : c + 2]))
    torch.testing.assert_close(method.features(x), z.mean(dim=(1, 2)))
    torch.testing.assert_close(method.embed(x).norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("context", ["masked_conv", "gru"])
def test_step_is_the_loss_of_the_predictions_and_trains_every_part(context: str) -> None:
    method = _method(context)
    x = tiny_images(4, seed=7)
    loss = method.training_step(Batch(torch.arange(4), [x]), INFO)["loss"]
    z = method.patch_encodings(x)
    c = method.context(z)
    for k, predict in enumerate(method.predictors):
        torch.testing.assert_close(method.predictions(z)[:, k], predict(c))
    torch.testing.assert_close(loss, cpc_loss(method.predictions(z), z))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())


def test_loss_decreases_on_a_fixed_batch() -> None:
    method = _method()
    batch = Batch(torch.arange(16), [tiny_images(16, seed=8)])
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = method.training_step(batch, INFO)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="context must be one of"):
        _method("lstm")
    with pytest.raises(ValueError, match=r"patch_size=3, patch_stride=2 do not tile 4x4"):
        _method(patch_size=3, patch_stride=2)
    with pytest.raises(ValueError, match=r"prediction_steps must be 1..2 on a grid of 3 rows"):
        _method(prediction_steps=3)
    with pytest.raises(ValueError, match="context_layers and context_dim must be >= 1"):
        _method(context_dim=0)
    with pytest.raises(ValueError, match=r"needs TaskInfo.input_shape = \(C, H, W\)"):
        CPC(SmallConvNet(), TaskInfo(3, 8, input_shape=(16,)))
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))  # takes whole 1x4x4 images only
    vit = VisionTransformer(1, 4, patch_size=2, width=8, depth=1, heads=2)  # built for 4x4
    for backbone in (linear, vit):
        with pytest.raises(ValueError, match=r"patches of shape \(1, 2, 2\).*model=convnet"):
            CPC(backbone, tiny_task(), patch_size=2, patch_stride=1, prediction_steps=1)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        method = _method().eval()  # BatchNorm on its running statistics, as in one process
        x = tiny_images(4, seed=60 + rank)
        method.training_step(Batch(torch.arange(4), [x]), INFO)["loss"].backward()
        grads = [p.grad.clone() for p in method.parameters()]
        for g in grads:  # what DDP does: average the gradients over ranks
            dist.all_reduce(g)
            g /= WORLD
        torch.save(grads, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradient_equals_single_process_gradient_of_global_loss(tmp_path: Path) -> None:
    """Negatives from the global batch: two ranks of 4 images give the gradient of the
    loss over the patches of all 8 images in one process."""
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    method = _method().eval()
    x = torch.cat([tiny_images(4, seed=60 + r) for r in range(WORLD)])
    method.training_step(Batch(torch.arange(8), [x]), INFO)["loss"].backward()
    want = [p.grad for p in method.parameters()]
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)


def test_method_config_builds_the_paper_defaults() -> None:
    cfg = method_config("cpc")
    assert cfg.eval.select_metric == "val/knn_top1" and cfg.eval.knn.enabled
    factory = instantiate(cfg.method, _partial_=True)
    method = factory(backbone=SmallConvNet(widths=(4, 8)), task=TaskInfo(3, 8, (1, 32, 32)))
    assert method.patch_encodings(torch.zeros(2, 1, 32, 32)).shape == (2, 7, 7, 8)
    assert isinstance(method.context, MaskedConvContext) and len(method.context.blocks) == 5
    assert len(method.predictors) == 5


def test_digits_run_composes_with_the_paper_optimizer_and_tuning() -> None:
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=["data=digits", "method=cpc"])
    assert cfg.eval.linear_probe and cfg.eval.knn.enabled
    assert cfg.trainer.optimizer._target_ == "torch.optim.Adam"
    assert cfg.trainer.optimizer.lr == 2e-4 and cfg.trainer.optimizer.weight_decay == 0
    assert (cfg.method.patch_size, cfg.method.patch_stride) == (6, 1)  # tuning/cpc_digits
    assert cfg.method.prediction_steps == 2 and cfg.method.context == "masked_conv"
    with initialize_config_module("pico.configs", version_base="1.3"):
        paper = compose("train", overrides=["data=digits", "method=cpc", "~tuning"])
    assert (paper.method.patch_size, paper.method.patch_stride) == (8, 4)
    assert paper.method.prediction_steps == 5 and paper.method.context_layers == 5


@pytest.mark.parametrize("context", ["masked_conv", "gru"])
def test_resume_from_mid_run_checkpoint_matches_uninterrupted_run(
    make_config, tmp_path, context: str
) -> None:
    assert_exact_resume(make_config, tmp_path, "method=cpc", f"method.context={context}")
    # the export of a whole model would encode whole images: only the patch encoder goes out
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(
        ValueError, match=r"features of CPC .* are not backbone\(x\).*parts=backbone"
    ):
        export_model(last, tmp_path / "model.pt")
    assert export_model(last, tmp_path / "encoder.pt", parts="backbone").output == "features"
