"""Self-distillation: the loss against a naive float64 loop, the frozen teacher outside the
method's state, its errors, exact resume, config composition, and evaluation of a
distilled run without its teacher."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_CONVNET, assert_exact_resume
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from pico.cli import run_evaluation, run_export, run_training
from pico.engine.method import Batch, TaskInfo
from pico.experiment import build_experiment
from pico.models import SmallConvNet
from pico.pll.distill import Distill, distill_loss, teacher_targets

B, C = 6, 5


def _logits(seed: int, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(B, C, generator=gen, dtype=torch.float64)


def _candidates(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    cands = torch.rand(B, C, generator=gen) < 0.4
    cands[torch.arange(B), torch.randint(0, C, (B,), generator=gen)] = True
    cands[0] = True  # a row holding every class: the full distribution
    return cands


def _naive(student, teacher, t, cands=None):
    """Mean over rows of -sum_j P_T(j) log P_S(j), P = softmax(logits / t), the teacher's
    restricted to the row's candidates and renormalised, one element at a time."""
    total = 0.0
    for i in range(B):
        weights = [
            math.exp(teacher[i, j].item() / t) if cands is None or cands[i, j] else 0.0
            for j in range(C)
        ]
        norm = torch.logsumexp(student[i] / t, dim=0)
        for j in range(C):
            total = total - weights[j] / sum(weights) * (student[i, j] / t - norm)
    return total / B


@pytest.mark.parametrize("t", [1.0, 0.5, 4.0])
@pytest.mark.parametrize("restricted", [False, True])
def test_loss_matches_naive_loop_in_value_and_gradient(t: float, restricted: bool) -> None:
    student = _logits(1).requires_grad_()
    teacher = _logits(2).requires_grad_()
    cands = _candidates(3) if restricted else None
    got = distill_loss(student, teacher, t, cands)
    want = _naive(student, teacher.detach(), t, cands)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    (g_got,) = torch.autograd.grad(got, student, retain_graph=True)
    (g_want,) = torch.autograd.grad(want, student)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)
    assert teacher.grad is None and not torch.autograd.grad(got, teacher, allow_unused=True)[0]


def test_teacher_targets_restrict_to_the_candidates_and_renormalise() -> None:
    teacher, cands = _logits(4), _candidates(5)
    full = teacher_targets(teacher, 2.0)
    restricted = teacher_targets(teacher, 2.0, cands)
    torch.testing.assert_close(full, torch.softmax(teacher.float() / 2.0, dim=1))
    torch.testing.assert_close(restricted.sum(1), torch.ones(B))
    assert torch.all(restricted[~cands] == 0)
    masked = full * cands
    torch.testing.assert_close(restricted, masked / masked.sum(1, keepdim=True))
    torch.testing.assert_close(restricted[0], full[0])  # every class a candidate
    # a student equal to the teacher minimises the unrestricted loss (zero KL)
    same = distill_loss(teacher, teacher, 2.0)
    entropy = -(full * full.log()).sum(1).mean()
    torch.testing.assert_close(same, entropy)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        teacher_targets(teacher, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        distill_loss(teacher, teacher[:, :3])


def _compose(root: Path, *overrides: str) -> DictConfig:
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose("train", overrides=[*TINY, *TINY_CONVNET, f"run_dir={root}", *overrides])


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """One epoch of PRODEN (a teacher) and of SimCLR (no classifier head)."""
    root = tmp_path_factory.mktemp("teachers")
    common = ["trainer.epochs=1", "trainer.embedding_figure=false"]
    run_training(_compose(root / "proden", "method=proden", *common))
    run_training(_compose(root / "simclr", "method=simclr", "method.proj_hidden=16",
                          "eval.linear_probe=false", *common))  # fmt: skip
    return {name: root / name / "checkpoints" / "last.pt" for name in ("proden", "simclr")}


def test_teacher_is_frozen_in_eval_mode_and_outside_the_state(teachers, tmp_path) -> None:
    cfg = _compose(tmp_path, "method=distill", f"method.teacher={teachers['proden']}")
    method = build_experiment(cfg).method.train()
    assert isinstance(method, Distill) and method.uses_candidates
    teacher = method.teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    own = {id(p) for p in method.parameters()}
    assert not own & {id(p) for p in teacher.parameters()}  # not in the optimizer
    assert {id(p) for p in method.optim_parameters()} == own
    assert {key.split(".")[0] for key in method.state_dict()} == {
        "backbone", "classifier", "candidates", "teacher_digest"
    }  # fmt: skip
    # the teacher's weights are the checkpoint's
    proden = torch.load(teachers["proden"], weights_only=True)["method"]
    torch.testing.assert_close(teacher[1].weight, proden["classifier.weight"])
    for key, value in teacher[0].state_dict().items():
        assert torch.equal(value, proden[f"backbone.{key}"]), key
    # the step's loss is the distillation loss of the student against the teacher
    x = torch.randn(8, 1, 8, 8)
    batch = Batch(torch.arange(8), [x])
    loss = method.training_step(batch, None)["loss"]  # type: ignore[arg-type]
    with torch.no_grad():
        want_teacher = teacher(x)
    want = distill_loss(method.classifier(method.backbone(x)), want_teacher, 1.0,
                        method.candidates[:8])  # fmt: skip
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    method.double()  # casts and moves reach the teacher
    assert next(teacher.parameters()).dtype == torch.float64


def test_bad_teachers_are_clear_errors(teachers, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"method\.teacher=PATH, which is not set"):
        build_experiment(_compose(tmp_path, "method=distill"))
    simclr = _compose(tmp_path, "method=distill", f"method.teacher={teachers['simclr']}")
    with pytest.raises(ValueError, match="SimCLR, which has no classifier head"):
        build_experiment(simclr)
    three = TaskInfo(num_classes=3, num_train=8, input_shape=(1, 8, 8), kind="image")
    with pytest.raises(ValueError, match="predicts 10 classes, but this data has 3"):
        Distill(SmallConvNet(widths=(8, 16, 16)), three, teacher=str(teachers["proden"]))
    wide = TaskInfo(num_classes=10, num_train=8, input_shape=(3, 8, 8), kind="image")
    with pytest.raises(ValueError, match="does not fit this data's inputs"):
        Distill(SmallConvNet(widths=(8, 16, 16)), wide, teacher=str(teachers["proden"]))


def test_resume_is_exact_and_refuses_another_teacher(teachers, make_config, tmp_path) -> None:
    teacher = f"method.teacher={teachers['proden']}"
    assert_exact_resume(make_config, tmp_path, "method=distill", teacher, "method.temperature=2")
    method = build_experiment(make_config("method=distill", teacher)).method
    state = method.state_dict()
    state["teacher_digest"] = state["teacher_digest"] + 1
    with pytest.raises(ValueError, match="other weights than the teacher"):
        method.load_state_dict(state)


def test_distilled_run_evaluates_and_exports_without_its_teacher(teachers, make_config, tmp_path):
    teacher = tmp_path / "teacher.pt"
    shutil.copy(teachers["proden"], teacher)
    cfg = make_config("method=distill", f"method.teacher={teacher}", "trainer.epochs=1",
                      "trainer.embedding_figure=false")  # fmt: skip
    result = run_training(cfg)
    teacher.unlink()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    metrics = run_evaluation(last, "cpu", "classifier")
    assert metrics["test/top1"] == pytest.approx(result["final"]["test/top1"], abs=1e-6)
    exported = run_export(last, tmp_path / "student.pt", formats=["state"])
    assert exported.is_file()


def test_a_pico_export_file_teaches_like_its_checkpoint(teachers, tmp_path) -> None:
    exported = run_export(teachers["proden"], tmp_path / "proden.pt", formats=["state"])
    nets = []
    for source in (teachers["proden"], exported):
        cfg = _compose(tmp_path, "method=distill", f"method.teacher={source}")
        nets.append(build_experiment(cfg).method)
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(nets[0].teacher(x), nets[1].teacher(x))
    assert torch.equal(nets[0].teacher_digest, nets[1].teacher_digest)


def test_config_composes_with_the_paper_loss_and_label_free_selection() -> None:
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=["method=distill", "method.teacher=t.pt"])
    assert cfg.method._target_ == "pico.pll.distill.Distill"
    assert cfg.method.temperature == 1.0 and cfg.method.teacher == "t.pt"
    assert cfg.eval.select_metric == "val/approx_acc"
