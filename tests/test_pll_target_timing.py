"""PRODEN, RC and CAVL refresh their targets from the model before the optimizer step.

Their docstrings state it: the official PRODEN code does the same, the official RC and
CAVL codes run a second forward pass of the updated model instead.
"""

import pytest
import torch
from conftest import candidate_task, tiny_backbone

from pico.engine.method import Batch, StepInfo
from pico.pll.candidates_buffer import softmax_within
from pico.pll.cavl import CAVL, cav_targets
from pico.pll.proden import PRODEN
from pico.pll.rc import RC

N, C = 24, 4
METHODS = {
    "proden": (PRODEN, "confidence", softmax_within),
    "rc": (RC, "confidence", softmax_within),
    "cavl": (CAVL, "targets", cav_targets),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_targets_come_from_the_logits_before_the_optimizer_step(name):
    cls, buffer_name, rule = METHODS[name]
    torch.manual_seed(0)
    task = candidate_task(N, C)
    method = cls(tiny_backbone(8, relu=True), task)
    optimizer = torch.optim.SGD(method.parameters(), lr=1.0)
    index = torch.tensor([3, 0, 7, 11, 5, 2])
    x = torch.randn(len(index), 1, 4, 4, generator=torch.Generator().manual_seed(1))
    candidates = task.train_candidates[index]

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return method.classifier(method.backbone(x))

    before = logits()
    loss = method.training_step(Batch(index, [x], torch.full((6,), -1)), StepInfo(0, 0, 1, 1))
    optimizer.zero_grad()
    loss["loss"].backward()
    optimizer.step()
    after = logits()
    targets = getattr(method, buffer_name)[index]
    torch.testing.assert_close(targets, rule(before, candidates))
    if name != "cavl":  # a one-hot arg-max need not move in one step
        assert not torch.allclose(targets, rule(after, candidates), atol=1e-3)
