"""Deep InfoMax: its estimators against naive float64 loops, the method, config and resume."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_exact_resume,
    method_config,
    step_info,
    tiny_backbone,
    tiny_images,
    tiny_task,
)
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import Tensor

from pico.baselines.dim import DIM
from pico.core.losses import jsd_mi_loss
from pico.engine.method import Batch
from pico.models.convnet import SmallConvNet

DT = torch.float64
INFO = step_info()


def _method(estimator: str = "jsd", seed: int = 0) -> DIM:
    """SmallConvNet on 1x4x4 inputs: blocks.0 gives a 2x2 map of 4 channels."""
    torch.manual_seed(seed)
    return DIM(SmallConvNet(widths=(4, 8)), tiny_task(), embed_dim=6, estimator=estimator)


def _naive_jsd(local: Tensor, global_: Tensor, locations: int) -> Tensor:
    pos, neg = [], []
    for i in range(global_.shape[0]):
        for r in range(local.shape[0]):
            t = (global_[i] * local[r]).sum()
            if r // locations == i:
                pos.append(torch.log1p(torch.exp(-t)))
            else:
                neg.append(torch.log1p(torch.exp(t)))
    return sum(pos) / len(pos) + sum(neg) / len(neg)


def _naive_infonce(local: Tensor, global_: Tensor, locations: int) -> Tensor:
    total = 0.0
    for r in range(local.shape[0]):
        scores = [torch.exp((local[r] * global_[i]).sum()) for i in range(global_.shape[0])]
        total = total - torch.log(scores[r // locations] / sum(scores))
    return total / local.shape[0]


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
def test_step_matches_naive_loop_in_value_and_gradient(estimator: str) -> None:
    method = _method(estimator).double()
    x = tiny_images(5, seed=1).to(DT)
    loss = method.training_step(Batch(torch.arange(5), [x], torch.zeros(5)), INFO)["loss"]
    got = torch.autograd.grad(loss, list(method.parameters()))
    local, global_ = method.embeddings(x)
    naive = _naive_jsd if estimator == "jsd" else _naive_infonce
    want_loss = naive(local, global_, locations=4)
    want = torch.autograd.grad(want_loss, list(method.parameters()))
    torch.testing.assert_close(loss, want_loss)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    assert all(g.abs().sum() > 0 for g in got)


def test_local_rows_follow_images_and_locations() -> None:
    method = _method().eval()
    x = tiny_images(3, seed=2)
    local, global_ = method.embeddings(x)
    assert local.shape == (3 * 4, 6) and global_.shape == (3, 6)
    alone_local, alone_global = method.embeddings(x[1:2])
    torch.testing.assert_close(local[4:8], alone_local)
    torch.testing.assert_close(global_[1:2], alone_global)
    feature_map = method.backbone.blocks[0](x[1:2])
    want = method.local_head(feature_map)[0, :, 1, 0]  # location (row 1, column 0)
    torch.testing.assert_close(alone_local[2], want)


def test_wrong_pairing_is_a_higher_loss_after_training() -> None:
    """Train a few steps; matched (global, local) pairs then score better than the same
    features with the globals of another image."""
    method = _method()
    x = tiny_images(8, seed=3)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-2)
    for _ in range(30):
        loss = method.training_step(Batch(torch.arange(8), [x], torch.zeros(8)), INFO)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    local, global_ = (t.detach() for t in method.embeddings(x))
    same = torch.arange(8).repeat_interleave(4)[None, :] == torch.arange(8)[:, None]
    right = jsd_mi_loss(global_, local, same)
    wrong = jsd_mi_loss(global_.roll(1, dims=0), local, same)
    assert wrong > right + 0.5


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="estimator must be one of"):
        DIM(SmallConvNet(widths=(4, 8)), tiny_task(), estimator="dv")
    with pytest.raises(ValueError, match=r"local_layer='layer2' is no submodule.*blocks"):
        DIM(SmallConvNet(widths=(4, 8)), tiny_task(), local_layer="layer2")
    with pytest.raises(ValueError, match=r"must output a \(B, C, H, W\) feature map"):
        DIM(tiny_backbone(), tiny_task(), local_layer="1")
    with pytest.raises(ValueError, match="embed_dim must be >= 1"):
        DIM(SmallConvNet(widths=(4, 8)), tiny_task(), embed_dim=0)


def test_method_config_builds_the_paper_defaults() -> None:
    cfg = method_config("dim")
    assert cfg.eval.select_metric == "val/knn_top1" and cfg.eval.knn.enabled
    factory = instantiate(cfg.method, _partial_=True)
    method = factory(backbone=SmallConvNet(widths=(4, 8)), task=tiny_task())
    assert method.estimator == "jsd" and method.local_head[0].out_channels == 2048
    with initialize_config_module("pico.configs", version_base="1.3"):
        train = compose("train", overrides=["data=digits", "method=dim"])
    assert train.trainer.optimizer._target_ == "torch.optim.AdamW"
    assert train.trainer.optimizer.weight_decay == 0
    assert train.trainer.optimizer.lr == 1e-3 and train.method.embed_dim == 256  # tuning
    with initialize_config_module("pico.configs", version_base="1.3"):
        paper = compose("train", overrides=["data=digits", "method=dim", "~tuning"])
    assert paper.trainer.optimizer.lr == 1e-4 and paper.method.embed_dim == 2048


def test_resume_from_mid_run_checkpoint_matches_uninterrupted_run(make_config, tmp_path) -> None:
    common = [
        "method=dim",
        "method.embed_dim=32",
        "method.estimator=infonce",
    ]
    assert_exact_resume(make_config, tmp_path, *common)
