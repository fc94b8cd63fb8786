"""``trainer.compile``: compiled parts compute what the eager ones do (run on CPU here;
the CUDA-graph modes are timed in bench/step.py and bench/epoch.py)."""

import copy

import pytest
import torch
from conftest import build_method, method_config
from omegaconf import OmegaConf
from test_pico_method import batch, info, make_pico
from torch._dynamo.utils import counters

import pico.data.augment as A
from pico.engine.trainer import compile_mode


def _train(model, steps, lr=0.1):
    """``steps`` PiCO steps with SGD; the loss terms of each step."""
    optimizer = torch.optim.SGD(model.optim_parameters(), lr=lr)
    terms = []
    for step in range(steps):
        out = model.training_step(batch(list(range(8)), step), info(step))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        model.after_optimizer_step(info(step))
        terms.append({k: v.detach() for k, v in out.items()})
    return terms


def test_compiled_pico_matches_eager_through_warmup_and_after():
    eager, _ = make_pico()
    compiled = copy.deepcopy(eager)
    compiled.compile_parts()
    assert "step_tensors" in vars(compiled)  # the step runs as one compiled function
    steps = 4  # warm-up lasts 2 steps: both branches run
    counters.clear()
    got_terms = _train(compiled, steps)
    # one graph per branch (warm-up or not), none split by a graph break
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    for got, want in zip(got_terms, _train(eager, steps), strict=True):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    for (name, got), (_, want) in zip(
        compiled.state_dict().items(), eager.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.count_nonzero(compiled.prototypes) > 0  # the post-warm-up path ran


def test_methods_without_a_step_graph_compile_only_their_modules():
    method = build_method(method_config("simclr").method)
    method.compile_parts()
    assert method.step_graph is None and "training_step" not in vars(method)
    assert all(child._compiled_call_impl is not None for child in method.children())


def test_compiled_augmentation_matches_eager():
    ops = [
        A.RandomResizedCrop(scale=(0.2, 1.0)),
        A.RandomHorizontalFlip(p=0.5),
        A.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        A.RandomGrayscale(p=0.2),
        A.Cutout(max_frac=0.5, fill=0.5),
    ]
    eager = A.BatchAugment(ops, (0.5,) * 3, (0.25,) * 3)
    compiled = copy.deepcopy(eager)
    compiled.compile_transform()
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    got = compiled(x, torch.Generator().manual_seed(3))
    want = eager(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.equal(want, eager(x, torch.Generator().manual_seed(4)))


def test_sampled_params_follow_each_ops_output_shape():
    crop = A.RandomResizedCrop(size=4)
    aug = A.BatchAugment([crop, A.Cutout(max_frac=0.5)])
    params = aug.sample_params((5, 3, 8, 8), torch.Generator().manual_seed(0))
    assert crop.output_shape((5, 3, 8, 8)) == (5, 3, 4, 4)
    assert len(params) == 2 and params[0]["top"].shape == (5,)
    assert aug(torch.rand(5, 3, 8, 8)).shape == (5, 3, 4, 4)


def test_augment_rejects_ops_that_are_not_batch_ops():
    with pytest.raises(ValueError, match="not a BatchOp"):
        A.BatchAugment([torch.nn.Identity()])


def test_unknown_compile_mode_is_refused_with_the_choices():
    assert compile_mode(OmegaConf.create({"compile_mode": "reduce-overhead"})) == "reduce-overhead"
    with pytest.raises(ValueError, match="reduce-overhead"):
        compile_mode(OmegaConf.create({"compile_mode": "fastest"}))
