"""pico from plain Python: any nn.Module as backbone, a TaskInfo with only what the method
reads, Batches without true labels, and a hand-written training loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import candidate_task, tiny_backbone
from torch import nn
from torchvision.models import resnet18

import pico
from pico.models.dims import feature_dim

C, N, BATCH, SHAPE = 4, 16, 8, (3, 16, 16)


def plain_resnet18() -> nn.Module:
    """torchvision's ResNet-18 without its classifier: no ``out_dim`` attribute."""
    net = resnet18(num_classes=C)
    net.fc = nn.Identity()
    return net


def test_feature_dim_measures_a_plain_torchvision_backbone() -> None:
    net = plain_resnet18().train()
    stats = net.bn1.running_mean.clone()
    assert not hasattr(net, "out_dim")
    assert feature_dim(net, SHAPE) == 512
    assert net.training, "the measuring pass must give the backbone back in its mode"
    assert torch.equal(net.bn1.running_mean, stats), "the measuring pass moved BN statistics"
    assert feature_dim(tiny_backbone(7)) == 7  # out_dim wins, no forward pass needed


def test_feature_dim_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"no integer attribute 'out_dim'.*input_shape"):
        feature_dim(nn.Linear(3, 5))
    with pytest.raises(ValueError, match=r"must return \(batch, features\).*nn\.Identity"):
        feature_dim(nn.Conv2d(3, 4, 3), SHAPE)
    with pytest.raises(ValueError, match=r"forward pass of zeros of shape \(2, 3, 16, 16\)"):
        feature_dim(nn.Linear(3, 5), SHAPE)


def test_task_info_needs_only_what_the_method_reads() -> None:
    candidates = candidate_task(N, C).train_candidates
    task = pico.TaskInfo(C, N, input_shape=SHAPE, train_candidates=candidates)
    assert (task.kind, task.train_targets) == (None, None)
    with pytest.raises(ValueError, match=r"train_candidates has shape \(16, 4\).*\(15, 4\)"):
        pico.TaskInfo(C, N - 1, train_candidates=candidates)


def test_supervised_without_true_labels_says_so() -> None:
    task = pico.TaskInfo(C, N, train_candidates=candidate_task(N, C).train_candidates)
    with pytest.raises(ValueError, match=r"TaskInfo\.train_targets"):
        pico.Supervised(tiny_backbone(8), task)
    method = pico.Supervised(tiny_backbone(8), candidate_task(N, C))
    views = [torch.zeros(2, 1, 4, 4)]
    with pytest.raises(ValueError, match=r"Batch\(index, views, target\)"):
        method.training_step(pico.Batch(torch.arange(2), views), pico.StepInfo(0, 0, 1, 1))


def test_pico_trains_in_a_hand_written_loop_on_a_plain_torchvision_backbone() -> None:
    """The loop of :class:`pico.Method`'s docstring: on_epoch_start, training_step,
    optimizer step, after_optimizer_step; no engine, no Hydra, no true labels."""
    torch.manual_seed(0)
    candidates = candidate_task(N, C).train_candidates
    task = pico.TaskInfo(C, N, input_shape=SHAPE, train_candidates=candidates)
    method = pico.PiCO(plain_resnet18(), task, queue_size=8, warmup_epochs=0, warmup_min_steps=2)
    images = torch.randn(N, *SHAPE)
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.05, momentum=0.9)
    key_before = method.key_head[0].weight.clone()
    epochs, steps_per_epoch, step = 2, N // BATCH, 0
    method.train()
    for epoch in range(epochs):
        method.on_epoch_start(pico.StepInfo(epoch, step, epochs, steps_per_epoch))
        for index in torch.randperm(N).split(BATCH):
            views = [images[index] + 0.1 * torch.randn(len(index), *SHAPE) for _ in method.views]
            info = pico.StepInfo(epoch, step, epochs, steps_per_epoch)
            terms = method.training_step(pico.Batch(index, views), info)
            optimizer.zero_grad()
            terms["loss"].backward()
            optimizer.step()
            method.after_optimizer_step(info)
            assert torch.isfinite(terms["loss"]), f"step {step}: loss {terms}"
            step += 1
    assert method.head[0].in_features == 512
    assert not torch.equal(method.key_head[0].weight, key_before), "key encoder never moved"
    assert method.prototypes.norm(dim=1).gt(0).any(), "no prototype update after warm-up"
    assert float(method.phi) == pytest.approx(0.8), "on_epoch_start sets the last epoch's φ"
    uniform = candidates / candidates.sum(dim=1, keepdim=True)
    assert not torch.allclose(method.confidence, uniform), "confidences never updated"
    assert bool((method.confidence[~candidates] == 0).all()), "mass left the candidate sets"


def test_the_readme_python_loop_runs() -> None:
    """The code block of the README's "Using pico from Python" section, on random data."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Using pico from Python\n", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    torch.manual_seed(0)
    images = torch.randn(N, 3, 32, 32)
    rows = torch.arange(N).split(BATCH)
    scope = {
        "targets": torch.arange(N) % 10,
        "epochs": 1,
        "steps_per_epoch": len(rows),
        "batches": [(index, images[index], images[index].flip(3)) for index in rows],
    }
    exec(code, scope)
    assert scope["step"] == len(rows)
    assert torch.isfinite(scope["loss"])
