"""MoCo's shuffled BN groups, and the digits settings of the unsupervised baselines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import step_info, tiny_images, tiny_task
from hydra import compose, initialize_config_module
from torch import nn

from pico.baselines.moco import MoCo
from pico.data.augment import build_augment
from pico.engine.method import Batch
from pico.experiment import build_experiment

INFO = step_info()


class _Net(nn.Module):
    """Flatten -> Linear -> BatchNorm1d -> ReLU: an encoder whose output uses batch stats."""

    out_dim = 6

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _moco(bn_groups: int, seed: int = 0) -> MoCo:
    torch.manual_seed(seed)
    return MoCo(
        _Net(), tiny_task(64), proj_dim=4, proj_hidden=8, queue_size=16, bn_groups=bn_groups
    )


def _naive_query(method: MoCo, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Reference: encode each group of rows in its own forward pass, in a Python loop."""
    size = -(-len(x) // groups)
    rows = []
    for start in range(0, len(x), size):
        rows.append(method.head(method.backbone(x[start : start + size])))
    return F.normalize(torch.cat(rows), dim=1)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_query_normalises_each_group_separately(groups: int) -> None:
    method = _moco(groups).train()
    x = tiny_images(12, seed=1)
    got = method._query(x)
    want = _naive_query(method, x, groups)
    torch.testing.assert_close(got, want)
    whole = F.normalize(method.head(method.backbone(x)), dim=1)
    assert (groups == 1) == torch.allclose(got, whole, atol=1e-5)


def test_keys_use_shuffled_groups_and_come_back_in_batch_order() -> None:
    method = _moco(4).train()
    x = tiny_images(16, seed=2)
    torch.manual_seed(5)
    got = method._key(x)
    torch.manual_seed(5)
    order = torch.randperm(16)
    want = torch.zeros(16, 4)
    for group in order.chunk(4):  # each group: its rows alone through the key encoder
        want[group] = F.normalize(method.key_head(method.key_backbone(x[group])), dim=1)
    torch.testing.assert_close(got, want)
    # the shuffle matters: the same rows grouped in batch order give other keys
    plain = F.normalize(
        torch.cat([method.key_head(method.key_backbone(c)) for c in x.chunk(4)]), dim=1
    )
    assert not torch.allclose(got, plain, atol=1e-4)


def test_eval_mode_encodes_the_whole_batch_at_once() -> None:
    method = _moco(4).eval()
    x = tiny_images(8, seed=3)
    want = F.normalize(method.key_head(method.key_backbone(x)), dim=1)
    torch.testing.assert_close(method._key(x), want)
    torch.testing.assert_close(
        method._query(x), F.normalize(method.head(method.backbone(x)), dim=1)
    )


def test_grouped_step_gives_every_online_parameter_a_gradient() -> None:
    method = _moco(2).train()
    x = tiny_images(16, seed=4)
    views = [x + 0.1 * tiny_images(16, seed=5), x + 0.1 * tiny_images(16, seed=6)]
    batch = Batch(torch.arange(16), views, torch.zeros(16))
    method.training_step(batch, INFO)  # fills the queue with negatives
    loss = method.training_step(batch, INFO)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    online = [*method.backbone.parameters(), *method.head.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in online)
    assert all(p.grad is None for p in method.key_backbone.parameters())


def test_bad_bn_groups_raises_value_error() -> None:
    with pytest.raises(ValueError, match="bn_groups"):
        _moco(0)


def test_bad_key_bn_raises_value_error() -> None:
    with pytest.raises(ValueError, match=r"key_bn='bogus' is unknown"):
        MoCo(_Net(), tiny_task(64), proj_dim=4, key_bn="bogus")


def test_sync_key_bn_encodes_keys_in_one_pass_over_the_batch() -> None:
    torch.manual_seed(0)
    method = MoCo(_Net(), tiny_task(64), 4, 8, bn_groups=4, key_bn="sync").train()
    assert any(isinstance(m, nn.SyncBatchNorm) for m in method.key_backbone.modules())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in method.backbone.modules())
    x = tiny_images(16, seed=7)
    state = torch.random.get_rng_state()
    got = method._key(x)
    assert torch.equal(torch.random.get_rng_state(), state)  # no shuffle drawn
    # one process: SyncBatchNorm is BN over the whole batch, in a plain BN copy
    plain = _moco(4)
    plain.key_backbone.load_state_dict(method.key_backbone.state_dict())
    plain.key_head.load_state_dict(method.key_head.state_dict())
    want = F.normalize(plain.key_head(plain.key_backbone(x)), dim=1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("method", ["moco", "simclr", "byol", "instdisc", "simsiam", "mocov3"])
def test_digits_runs_compose_with_knn_and_linear_probe(method: str) -> None:
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=["data=digits", f"method={method}"])
    assert cfg.eval.linear_probe and cfg.eval.knn.enabled
    assert cfg.eval.select_metric == "val/knn_top1"
    assert cfg.trainer.epochs == 100


def test_digits_contrastive_views_keep_digits_upright_and_in_range() -> None:
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=["data=digits", "method=simclr"])
    ops = {op._target_.rsplit(".", 1)[1] for op in cfg.aug.contrastive}
    assert not ops & {"RandomHorizontalFlip", "RandAugment"}  # a mirrored digit is another
    augment = build_augment(cfg.aug.contrastive)
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    views = augment(x, torch.Generator().manual_seed(0))
    assert views.shape == (32, 1, 8, 8)
    assert float(views.min()) >= 0.0 and float(views.max()) <= 1.0
    assert not torch.equal(views, augment(x, torch.Generator().manual_seed(1)))


def _bench_module():
    """bench/baselines.py, loaded under another name (``baselines`` is the package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "baselines.py"
    spec = importlib.util.spec_from_file_location("bench_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(knn: float, linear: float, seconds: float) -> dict:
    final = {"test/knn_top1": knn, "test/linear_top1": linear}
    return {"final": final, "best": final, "wall_seconds": seconds}


def test_bench_verdicts_need_every_seed_above_each_reference() -> None:
    bench = _bench_module()
    refs = [
        {"raw pixels": {"knn": 0.98, "linear": 0.97}, "random init": {"knn": 0.96, "linear": 0.9}},
        {"raw pixels": {"knn": 0.99, "linear": 0.97}, "random init": {"knn": 0.95, "linear": 0.9}},
    ]
    results = {
        "good": [_run(0.99, 0.99, 100), _run(0.995, 0.96, 170)],
        "bad": [_run(0.99, 0.99, 100), _run(0.985, 0.94, 200)],  # seed 1 below raw pixels
    }
    lines = bench.verdicts(refs, results, limit_s=180).splitlines()
    assert lines[0] == (
        "- good: kNN > raw pixels: yes, kNN > random init: yes, linear >= 95%: yes, "
        "under 180 s: yes"
    )
    assert lines[1] == (
        "- bad: kNN > raw pixels: NO, kNN > random init: yes, linear >= 95%: NO, under 180 s: NO"
    )
    table = bench.table(refs, results).splitlines()
    assert table[2] == "| raw pixels | 98.50 ± 0.71 | - | 97.00 ± 0.00 | - |"
    assert table[4].startswith("| good | 99.25 ± 0.35 | 99.25 ± 0.35 | 97.50 ± 2.12 | 135 |")


def test_bench_references_keep_only_data_model_aug_eval_overrides() -> None:
    bench = _bench_module()
    cfg = bench.compose_config(
        3, ["method.temperature=0.1", "eval.knn.k=5", "data.val_fraction=0.2"]
    )
    assert cfg.seed == 3 and cfg.eval.knn.k == 5 and cfg.data.val_fraction == 0.2


def test_bench_method_reference_reads_the_random_init_method_through_its_features() -> None:
    bench = _bench_module()
    small = ["model.widths=[8,16,16]"]
    assert bench.method_reference(0, "simclr", small) == {}  # its features are the backbone's
    (name, row), *rest = bench.method_reference(0, "cpc", small).items()
    assert name == "random init, cpc features" and not rest
    assert 0.5 < row["knn"] <= 1 and 0.5 < row["linear"] <= 1
    # the same number as the random-init CPC built as a run builds it, read by hand
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=["method=cpc", "data=digits", "seed=0", *small])
    torch.manual_seed(0)
    exp = build_experiment(cfg)
    again = bench.score(exp.method.eval().features, exp.bundle, exp.augmenters["test"], cfg)
    assert again == row
