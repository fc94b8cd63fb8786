"""The small-image ViT backbone: patch sizes, grayscale input, the configs, every method
on it, and a PiCO run with evaluation and export."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, candidate_task, method_config, tiny_batch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from pico.cli import run_evaluation, run_export, run_training
from pico.engine.checkpoint import load_checkpoint
from pico.engine.method import StepInfo
from pico.models.dims import feature_dim
from pico.models.factory import build_backbone
from pico.models.vit import VisionTransformer, default_patch_size

TINY_VIT = ["model.width=16", "model.depth=1", "model.heads=2"]
#: methods that cannot run on a ViT, and why
NOT_ON_VIT = {
    "dim": "DIM reads a (B, C, H, W) feature map (method.local_layer); a ViT has tokens",
    # tests/test_cmc.py trains CMC's L*a*b* views on ViTs
    "cmc": "CMC's views of a grayscale image are its halves, not square as the ViT needs",
    # tests/test_cpc.py checks the error that names the fix
    "cpc": "CPC encodes patches, smaller than the images a ViT's position embeddings fit",
}
#: methods that train from another run's checkpoint, which this test does not make
NEEDS_A_RUN = {"distill": "its teacher is a checkpoint (tests/test_distill.py trains one)"}
METHODS = sorted(
    path.stem
    for path in (CONFIGS / "method").glob("*.yaml")
    if path.stem not in NOT_ON_VIT and path.stem not in NEEDS_A_RUN
)


def _model_config(name: str, *overrides: str):
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose("train", overrides=[f"model={name}", *overrides]).model


@pytest.mark.parametrize(("size", "patch"), [(8, 2), (32, 4), (28, 4), (96, 12), (7, 7), (1, 1)])
def test_default_patch_size_leaves_at_most_an_eight_by_eight_grid(size: int, patch: int) -> None:
    assert default_patch_size(size) == patch


def test_grayscale_input_gives_class_token_features() -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(in_channels=1, image_size=8, width=12, depth=2, heads=3)
    assert vit.patch_embed is vit.conv_proj and vit.conv_proj.in_channels == 1
    assert vit.patch_size == 2 and vit.seq_length == 4 * 4 + 1
    out = vit(torch.randn(5, 1, 8, 8))
    assert out.shape == (5, 12) and vit.out_dim == 12
    assert feature_dim(vit) == 12
    out.sum().backward()
    assert all(p.grad is not None for p in vit.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 8, "patch_size": 3}, "patch_size=3 must be a positive divisor"),
        ({"image_size": [8, 6]}, "needs square images"),
        ({"image_size": 8, "width": 10, "heads": 3}, "width divisible by heads"),
        ({"image_size": 8, "in_channels": 0}, "in_channels must be >= 1"),
    ],
)
def test_bad_sizes_are_clear_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VisionTransformer(**{"width": 8, "depth": 1, "heads": 2, **kwargs})


@pytest.mark.parametrize(
    ("name", "sizes"), [("vit_tiny", (192, 12, 3)), ("vit_small", (384, 12, 6))]
)
def test_configs_have_the_deit_sizes(name: str, sizes: tuple[int, int, int]) -> None:
    cfg = _model_config(name)
    assert (cfg.width, cfg.depth, cfg.heads) == sizes
    assert cfg.patch_size is None and cfg.mlp_ratio == 4.0


@pytest.mark.parametrize(("shape", "patch"), [((1, 8, 8), 2), ((3, 32, 32), 4), ((1, 28, 28), 4)])
def test_build_backbone_passes_channels_and_image_size(shape: tuple, patch: int) -> None:
    vit = build_backbone(_model_config("vit_tiny", *TINY_VIT), shape, "image")
    assert isinstance(vit, VisionTransformer) and vit.out_dim == 16
    assert vit.patch_size == patch and vit.conv_proj.in_channels == shape[0]
    assert vit.image_size == shape[1]
    assert vit.eval()(torch.zeros(2, *shape)).shape == (2, 16)
    with pytest.raises(ValueError, match="built for image data"):
        build_backbone(_model_config("vit_tiny", *TINY_VIT), (6,), "tabular")


@pytest.mark.parametrize("name", METHODS)
def test_every_method_trains_and_evaluates_on_a_vit(name: str) -> None:
    torch.manual_seed(0)
    task = candidate_task()
    backbone = VisionTransformer(1, 4, patch_size=2, width=8, depth=1, heads=2)
    method = instantiate(method_config(name).method, _partial_=True)(backbone=backbone, task=task)
    method.train()
    batch = tiny_batch(list(range(8)), num_views=len(method.views))
    info = StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1)
    loss = method.training_step(batch, info)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    method.after_optimizer_step(info)
    assert any(p.grad is not None for p in backbone.parameters())
    method.eval()
    assert method.features(batch.views[0]).shape == (8, 8)


@pytest.mark.slow
def test_pico_on_a_vit_trains_evaluates_and_exports(make_config, tmp_path) -> None:
    cfg = make_config(
        "model=vit_tiny",
        *TINY_VIT,
        "method=pico",
        "method.queue_size=128",
        "trainer.epochs=1",
        "trainer.embedding_figure=false",
        tiny_convnet=False,
    )
    result = run_training(cfg)
    assert 0.0 <= result["final"]["test/top1"] <= 1.0
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    metrics = run_evaluation(ckpt, device="cpu")
    assert metrics["test/top1"] == pytest.approx(result["final"]["test/top1"], abs=1e-6)
    state = torch.load(run_export(ckpt, tmp_path / "vit.pt", parts="backbone"), weights_only=True)
    method = load_checkpoint(ckpt)["method"]
    assert "conv_proj.weight" in state and state["conv_proj.weight"].shape == (16, 1, 2, 2)
    assert state.keys() == {
        k.removeprefix("backbone.") for k in method if k.startswith("backbone.")
    }
    vit = build_backbone(_model_config("vit_tiny", *TINY_VIT), (1, 8, 8), "image")
    vit.load_state_dict(state)
