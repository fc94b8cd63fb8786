"""bench/plain_proden.py: PRODEN's loss and weight update against a naive loop, and a
tiny end-to-end run on a generated .mat file."""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_pll_mat

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


plain = _load("plain_proden")


def _toy_batch(seed: int = 0, rows: int = 6, features: int = 4, classes: int = 5):
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(rows, features, generator=gen)
    candidates = (torch.rand(rows, classes, generator=gen) < 0.5).float()
    candidates[torch.arange(rows), torch.arange(rows) % classes] = 1.0
    weights = torch.rand(rows, classes, generator=gen) * candidates
    return inputs, candidates, weights / weights.sum(dim=1, keepdim=True)


def _naive_loss(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for i in range(logits.shape[0]):
        norm = sum(torch.exp(logits[i, k]) for k in range(logits.shape[1]))
        for j in range(logits.shape[1]):
            total = total - weights[i, j] * torch.log(torch.exp(logits[i, j]) / norm)
    return total / logits.shape[0]


def _naive_weights(logits: torch.Tensor, candidates: torch.Tensor) -> list[list[float]]:
    out = []
    for i in range(logits.shape[0]):
        probs = [math.exp(v) for v in logits[i].tolist()]
        kept = [p * c for p, c in zip(probs, candidates[i].tolist(), strict=True)]
        out.append([k / sum(kept) for k in kept])
    return out


def test_train_step_matches_a_naive_reference_loop() -> None:
    inputs, candidates, weights = _toy_batch()
    torch.manual_seed(0)
    model = plain.mlp(inputs.shape[1], candidates.shape[1])
    reference = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=plain.LR, weight_decay=plain.WEIGHT_DECAY)
    loss, new_weights = plain.train_step(model, optimizer, inputs, candidates, weights)

    # the reference: loops, one optimiser step, weights from the forward before the step
    ref_optimizer = torch.optim.Adam(
        reference.parameters(), lr=plain.LR, weight_decay=plain.WEIGHT_DECAY
    )
    logits = reference(inputs)
    ref_loss = _naive_loss(logits, weights)
    ref_weights = _naive_weights(logits.detach(), candidates)
    ref_optimizer.zero_grad()
    ref_loss.backward()
    ref_optimizer.step()

    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    assert new_weights.tolist() == pytest.approx(np.asarray(ref_weights), abs=1e-6)
    assert not new_weights.requires_grad
    assert torch.all(new_weights[candidates == 0] == 0)
    for param, ref in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(param, ref)
    # the returned weights come from the forward before the step, not after it
    after = plain.refreshed_weights(model(inputs), candidates)
    assert not torch.allclose(after, new_weights)


def test_loss_is_cross_entropy_for_one_hot_weights() -> None:
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1, 1, 0])
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    expected = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(plain.proden_loss(logits, one_hot), expected)


def test_main_tabulates_reproducible_runs_and_records(tmp_path: Path, capsys) -> None:
    path = write_pll_mat(tmp_path / "toy.mat", n=90, d=5, q=0.4)
    results = tmp_path / "RESULTS.md"
    argv = [str(path), "--seeds", "0", "1", "--epochs", "3", "--record", "--results", str(results)]
    first = plain.main(argv)
    out = capsys.readouterr().out
    assert "| file | test top-1, final epoch (%) | seeds 0, 1 (%) |" in out
    (row,) = [line for line in out.splitlines() if line.startswith("| toy |")]
    assert row.split(" | ")[2] == ", ".join(f"{100 * v:.2f}" for v in first[path]) + " |"
    text = results.read_text()
    assert text.startswith("\n## Plain PRODEN MLP on .mat data, ")
    assert f"- command: `python bench/plain_proden.py {path} --seeds 0 1 --epochs 3" in text
    assert plain.main([str(path), "--seeds", "0", "1", "--epochs", "3"]) == first


def test_main_names_a_missing_file(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        plain.main([str(tmp_path / "nope.mat")])
    assert "nope.mat: no such file" in capsys.readouterr().err
