"""CandidateRows: the candidate matrix and per-row state of the partial-label methods."""

from __future__ import annotations

import pytest
import torch
from conftest import candidate_task, tiny_backbone, tiny_images

from pico.engine.method import Batch, StepInfo, TaskInfo
from pico.pll import CAVL, CC, LWS, PRODEN, RC, CandidateError, PiCO, PiCOPlus
from pico.pll.candidates_buffer import uniform_confidence

#: method class -> name of its per-row state buffer
STATE = {
    PRODEN: "confidence",
    RC: "confidence",
    CAVL: "targets",
    LWS: "label_weights",
    CC: "label_estimate",
    PiCO: "confidence",
    PiCOPlus: "confidence",
}
PICO_KW = dict(proj_dim=4, queue_size=12, warmup_epochs=0, warmup_min_steps=1)


def _build(cls: type, task: TaskInfo) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = PICO_KW if cls in (PiCO, PiCOPlus) else {}
    return cls(tiny_backbone(8), task, **kwargs)


def _with_empty_rows(rows: list[int]) -> TaskInfo:
    task = candidate_task(24, 4)
    task.train_candidates[rows] = False
    return task


@pytest.mark.parametrize("cls", list(STATE), ids=lambda c: c.__name__)
def test_an_empty_candidate_row_is_a_clear_error(cls: type) -> None:
    task = _with_empty_rows([3, 17])
    with pytest.raises(CandidateError, match=r"2 rows \(first: 3, 17\).*add the known label"):
        _build(cls, task)
    assert issubclass(CandidateError, ValueError)


def test_uniform_confidence_rejects_empty_rows_instead_of_nan() -> None:
    candidates = torch.tensor([[True, False], [False, False]])
    with pytest.raises(CandidateError, match=r"1 rows \(first: 1\)"):
        uniform_confidence(candidates)
    torch.testing.assert_close(uniform_confidence(candidates[:1]), torch.tensor([[1.0, 0.0]]))


@pytest.mark.parametrize("cls", list(STATE), ids=lambda c: c.__name__)
def test_state_keys_and_checkpoint_round_trip(cls: type) -> None:
    task = candidate_task(24, 4)
    method = _build(cls, task)
    name = STATE[cls]
    assert method.row_state_name == name
    assert method.row_state() is getattr(method, name)
    assert {"candidates", name} <= set(method.state_dict())
    assert torch.equal(method.candidates, task.train_candidates.bool())
    views = [tiny_images(8, seed) for seed in range(len(method.views))]
    info = StepInfo(epoch=0, step=3, epochs=1, steps_per_epoch=4)
    before = getattr(method, name).clone()
    for _ in range(2):  # PiCO's first step sets the prototypes its updates need
        method.training_step(Batch(torch.arange(8), views), info)
    assert not torch.equal(getattr(method, name), before), "the step wrote no row"
    restored = _build(cls, task)
    restored.load_state_dict(method.state_dict())
    for key in ("candidates", name):
        assert torch.equal(getattr(restored, key), getattr(method, key))


def test_write_rows_sets_exactly_the_given_rows() -> None:
    method = _build(PRODEN, candidate_task(24, 4))
    before = method.confidence.clone()
    index = torch.tensor([5, 0, 9])
    values = torch.rand(3, 4)
    method.write_rows_(index, values)
    want = before.clone()
    for row, value in zip(index.tolist(), values, strict=True):
        want[row] = value
    assert torch.equal(method.confidence, want)
