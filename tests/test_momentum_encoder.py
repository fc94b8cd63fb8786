"""Declared momentum pairs (Method.momentum_pairs / momentum) and the MomentumEncoder part."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import candidate_task, step_info, tiny_images, tiny_task
from torch import Tensor, nn

from pico.baselines.byol import BYOL
from pico.baselines.moco import MoCo
from pico.core.ema import cosine_momentum, ema_update_, momentum_copy
from pico.core.momentum_encoder import MomentumEncoder
from pico.core.queue import FeatureQueue
from pico.engine.method import Batch, Method, StepInfo
from pico.pll.pico import PiCO
from pico.pll.pico_plus import PiCOPlus


def _net() -> nn.Module:
    """Flatten -> Linear -> BatchNorm1d: parameters, float buffers and a long counter."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6))
    net.out_dim = 6
    return net


def _perturb_(module: nn.Module) -> None:
    """Move every online tensor, as an optimizer step and a forward pass would."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))
        for b in module.buffers():
            b.add_(1 if not b.is_floating_point() else torch.rand_like(b))


def _assert_state_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


class _Declared(Method):
    """Declares one pair and counts the coefficients it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.online = _net()
        self.target = momentum_copy(self.online)
        self.asked: list[int] = []

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.online, self.target)]

    def momentum(self, info: StepInfo) -> float:
        self.asked.append(info.step)
        return 0.5 + 0.1 * info.step


class _ByHand(Method):
    """The pre-declaration style: its own after_optimizer_step calls the EMA by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.online = _net()
        self.target = momentum_copy(self.online)

    def after_optimizer_step(self, info: StepInfo) -> None:
        self.momentum_update_([(self.online, self.target)], 0.75)


def test_declared_pairs_are_moved_by_the_base_once_per_step() -> None:
    torch.manual_seed(0)
    method = _Declared()
    naive_online, naive_target = copy.deepcopy(method.online), copy.deepcopy(method.target)
    for step in range(3):
        torch.manual_seed(step)
        _perturb_(method.online)
        torch.manual_seed(step)
        _perturb_(naive_online)
        method.after_optimizer_step(step_info(step, 3))
        ema_update_([(naive_online, naive_target)], 0.5 + 0.1 * step)
        _assert_state_equal(method.target, naive_target)
    assert method.asked == [0, 1, 2]
    assert not torch.equal(method.target[1].weight, method.online[1].weight)


def test_a_method_updating_by_hand_is_unaffected() -> None:
    torch.manual_seed(0)
    method = _ByHand()
    assert method.momentum_pairs() == ()
    _perturb_(method.online)
    naive = copy.deepcopy(method.target)
    method.after_optimizer_step(step_info())
    ema_update_([(method.online, naive)], 0.75)  # exactly one update, the method's own
    _assert_state_equal(method.target, naive)


def test_no_pairs_no_update_and_pairs_without_momentum_is_a_clear_error() -> None:
    Method().after_optimizer_step(step_info())  # nothing declared: a no-op

    class _NoMomentum(_ByHand):
        after_optimizer_step = Method.after_optimizer_step

        def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
            return [(self.online, self.target)]

    with pytest.raises(NotImplementedError, match=r"_NoMomentum declares momentum_pairs"):
        _NoMomentum().after_optimizer_step(step_info())


class _NaiveQueryKey(nn.Module):
    """What MoCo and PiCO held before the part: the same modules, assigned by hand."""

    def __init__(self, backbone: nn.Module, head: nn.Module, queue: FeatureQueue) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.key_backbone = copy.deepcopy(backbone)
        self.key_head = copy.deepcopy(head)
        self.queue = queue


class _Part(MomentumEncoder, Method):
    def __init__(self, backbone: nn.Module, head: nn.Module, queue: FeatureQueue) -> None:
        super().__init__()
        self.init_momentum_encoder(backbone, head, 0.9, queue)


def _part_and_naive() -> tuple[_Part, _NaiveQueryKey]:
    torch.manual_seed(0)
    backbone, head, queue = _net(), nn.Linear(6, 4), FeatureQueue(8, 4)
    naive = _NaiveQueryKey(copy.deepcopy(backbone), copy.deepcopy(head), copy.deepcopy(queue))
    return _Part(backbone, head, queue), naive


def test_part_encodes_like_the_naive_modules_and_keeps_their_names() -> None:
    part, naive = _part_and_naive()
    _assert_state_equal(part, naive)
    assert [n for n, _ in part.named_parameters()] == [n for n, _ in naive.named_parameters()]
    assert all(not p.requires_grad for p in part.key_backbone.parameters())
    assert all(not p.requires_grad for p in part.key_head.parameters())
    x = tiny_images(5, seed=1)
    query = part.query(x)
    torch.testing.assert_close(query, F.normalize(naive.head(naive.backbone(x)), dim=1))
    assert query.requires_grad
    key = part.key(x)
    torch.testing.assert_close(key, F.normalize(naive.key_head(naive.key_backbone(x)), dim=1))
    assert not key.requires_grad


def test_part_moves_its_keys_once_per_step_like_a_naive_lerp() -> None:
    part, naive = _part_and_naive()
    for step in range(2):
        x = tiny_images(5, seed=step)
        part.project_query(x).sum().backward()
        naive.head(naive.backbone(x)).sum().backward()
        for module in (part, naive):
            with torch.no_grad():
                for p in module.parameters():
                    if p.grad is not None:
                        p.sub_(0.1 * p.grad)
                        p.grad = None
        part.after_optimizer_step(step_info(step, 2))
        with torch.no_grad():
            for online, key in ((naive.backbone, naive.key_backbone), (naive.head, naive.key_head)):
                for (_, s), (_, d) in zip(
                    online.state_dict().items(), key.state_dict().items(), strict=True
                ):
                    d.copy_(0.9 * d + 0.1 * s if d.is_floating_point() else s)
        for name, value in naive.state_dict().items():
            torch.testing.assert_close(part.state_dict()[name], value, rtol=1e-6, atol=1e-7)


def test_old_checkpoints_load_strictly_into_moco_and_pico() -> None:
    task = tiny_task(64)
    torch.manual_seed(0)
    moco = MoCo(_net(), task, proj_dim=4, proj_hidden=8, queue_size=16)
    old = _NaiveQueryKey(
        copy.deepcopy(moco.backbone), copy.deepcopy(moco.head), copy.deepcopy(moco.queue)
    )
    _perturb_(old)
    moco.load_state_dict(old.state_dict())
    _assert_state_equal(moco, old)
    for cls in (PiCO, PiCOPlus):
        pico = cls(_net(), candidate_task(24, 4), proj_dim=4, queue_size=12)
        prefixes = {name.split(".")[0] for name in pico.state_dict()}
        want = {"backbone", "classifier", "head", "key_backbone", "key_head", "queue"}
        assert want <= prefixes
        assert {"candidates", "confidence", "prototypes", "phi"} <= prefixes


def test_moco_and_byol_momentum_schedules() -> None:
    task = tiny_task(64)
    cos = MoCo(_net(), task, proj_dim=4, queue_size=16, cosine_schedule=True)
    flat = MoCo(_net(), task, proj_dim=4, queue_size=16, key_momentum=0.9)
    info = StepInfo(epoch=0, step=2, epochs=1, steps_per_epoch=5)
    assert cos.momentum(info) == cosine_momentum(0.99, 3, 5)
    assert flat.momentum(info) == 0.9
    byol = BYOL(_net(), task, proj_hidden=8, proj_dim=4, pred_hidden=8)
    assert byol.momentum_pairs() == (
        (byol.backbone, byol.target_backbone),
        (byol.projector, byol.target_projector),
    )


def test_sync_key_bn_converts_only_the_key_encoder() -> None:
    task = tiny_task(64)
    moco = MoCo(_net(), task, proj_dim=4, queue_size=16, key_bn="sync")
    assert any(isinstance(m, nn.SyncBatchNorm) for m in moco.key_backbone.modules())
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in moco.backbone.modules())
    with pytest.raises(ValueError, match="key_momentum must lie in"):
        MoCo(_net(), task, proj_dim=4, queue_size=16, key_momentum=1.5)


def test_moco_training_step_then_base_update(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    moco = MoCo(_net(), tiny_task(64), proj_dim=4, queue_size=16, bn_groups=1)
    calls: list[float] = []
    original = Method.momentum_update_

    def spy(self: Method, pairs: list, momentum: float) -> None:
        calls.append(momentum)
        original(self, pairs, momentum)

    monkeypatch.setattr(Method, "momentum_update_", spy)
    views: list[Tensor] = [tiny_images(8, 0), tiny_images(8, 1)]
    moco.training_step(Batch(torch.arange(8), views), step_info())["loss"].backward()
    moco.after_optimizer_step(step_info())
    assert calls == [0.99]
