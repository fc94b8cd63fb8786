from __future__ import annotations

import random

import pytest
import torch

from pico.core.queue import FeatureQueue


class _RingReference:
    """Naive ring buffer: rows written one at a time, plus a Python list FIFO."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.slots: list[tuple[list[float], int, float] | None] = [None] * size
        self.ptr = 0
        self.fifo: list[tuple[list[float], int, float]] = []

    def push(self, row: tuple[list[float], int, float]) -> None:
        self.slots[self.ptr] = row
        self.ptr = (self.ptr + 1) % self.size
        self.fifo.append(row)
        if len(self.fifo) > self.size:
            self.fifo.pop(0)


@pytest.mark.parametrize("size", [1, 7, 16])
def test_enqueue_matches_ring_and_fifo_reference(size: int) -> None:
    rng = random.Random(size)
    q = FeatureQueue(size, 3, {"labels": torch.long, "weight": torch.float64})
    ref = _RingReference(size)
    counter = 0
    for _ in range(60):
        b = rng.choice([0, 1, 1, 2, 3, size - 1, size, size + 1, 2 * size + 3, rng.randint(1, 40)])
        feats = torch.arange(counter, counter + b, dtype=torch.float32)[:, None].repeat(1, 3)
        feats[:, 1] *= -1
        labels = torch.arange(counter, counter + b) * 7
        weight = torch.arange(counter, counter + b, dtype=torch.float64) / 3
        q.enqueue(feats, labels=labels, weight=weight)
        for i in range(b):
            ref.push((feats[i].tolist(), int(labels[i]), float(weight[i])))
        counter += b

        assert q.num_filled() == len(ref.fifo)
        assert int(q.ptr) == ref.ptr
        # Slot by slot identical to writing rows one at a time.
        for i, want in enumerate(ref.slots):
            valid = bool(q.valid_mask()[i])
            assert valid == (want is not None)
            if want is not None:
                assert q.features[i].tolist() == want[0]
                assert int(q.column("labels")[i]) == want[1]
                assert float(q.column("weight")[i]) == want[2]
        # Oldest-first reading from ptr reproduces the list FIFO.
        if q.num_filled() == size:
            order = [(int(q.ptr) + j) % size for j in range(size)]
        else:
            order = list(range(q.num_filled()))
        got = [
            (q.features[i].tolist(), int(q.column("labels")[i]), float(q.column("weight")[i]))
            for i in order
        ]
        assert got == ref.fifo


def test_columns_stay_aligned_and_unfilled_slots_never_valid() -> None:
    torch.manual_seed(0)
    q = FeatureQueue(10, 4, {"labels": torch.long, "index": torch.int32})
    assert q.column("labels").tolist() == [-1] * 10
    assert q.column("index").dtype == torch.int32
    assert not q.valid_mask().any()
    seen = 0
    for b in [3, 4, 1, 6, 13, 2]:
        idx = torch.arange(seen, seen + b)
        feats = torch.randn(b, 4)
        feats[:, 0] = idx.float()
        q.enqueue(feats, labels=idx % 5, index=idx.to(torch.int32))
        seen += b
        mask = q.valid_mask()
        assert mask.dtype == torch.bool and mask.shape == (10,)
        assert int(mask.sum()) == min(seen, 10)
        # Every valid slot's columns come from the same row as its features.
        rows = q.features[mask, 0].long()
        assert torch.equal(q.column("labels")[mask], rows % 5)
        assert torch.equal(q.column("index")[mask].long(), rows)
        # Unfilled slots still hold their initial values.
        assert (q.column("labels")[~mask] == -1).all()
        assert (q.features[~mask] == 0).all()


def test_enqueue_is_detached_and_casts_to_float32() -> None:
    q = FeatureQueue(4, 2, {"labels": torch.long})
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    q.enqueue(x * 2, labels=torch.tensor([1, 2, 3], dtype=torch.int32))
    assert q.features.dtype == torch.float32 and not q.features.requires_grad
    torch.testing.assert_close(q.features[:3], (x * 2).detach().float())
    assert q.column("labels").dtype == torch.long


def test_state_dict_round_trip_restores_everything() -> None:
    torch.manual_seed(1)
    q = FeatureQueue(6, 3, {"labels": torch.long})
    for b in [4, 5]:
        q.enqueue(torch.randn(b, 3), labels=torch.randint(0, 9, (b,)))
    state = q.state_dict()
    assert set(state) == {"features", "ptr", "filled", "labels"}
    fresh = FeatureQueue(6, 3, {"labels": torch.long})
    fresh.load_state_dict(state)
    for name, value in q.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert int(fresh.ptr) == 3 and fresh.num_filled() == 6
    # Both continue identically.
    x, y = torch.randn(2, 3), torch.tensor([7, 8])
    q.enqueue(x, labels=y)
    fresh.enqueue(x, labels=y)
    for name, value in q.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_enqueue_errors_name_the_problem() -> None:
    q = FeatureQueue(5, 3, {"labels": torch.long})
    with pytest.raises(ValueError, match="labels"):
        q.enqueue(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="declares"):
        q.enqueue(torch.zeros(2, 3), labels=torch.zeros(2, dtype=torch.long), extra=torch.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        q.enqueue(torch.zeros(2, 3), labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="features"):
        q.enqueue(torch.zeros(2, 4), labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="no column"):
        q.column("index")
    for bad in ("ptr", "size", "not-an-identifier"):
        with pytest.raises(ValueError, match="column name"):
            FeatureQueue(5, 3, {bad: torch.long})
    with pytest.raises(ValueError, match="size"):
        FeatureQueue(0, 3)
    assert q.num_filled() == 0


def test_properties_and_device_move() -> None:
    q = FeatureQueue(8, 5, {"labels": torch.long})
    assert (q.size, q.dim, q.column_names) == (8, 5, ("labels",))
    q = q.to(torch.float64)  # floating buffers follow module dtype casts; enqueue still works
    q.enqueue(torch.ones(3, 5), labels=torch.arange(3))
    assert q.num_filled() == 3
    assert q.valid_mask().tolist() == [True] * 3 + [False] * 5


def test_queue_size_capped_at_training_rows():
    from pico.core.queue import queue_size_for

    assert queue_size_for(8192, 1000) == 1000
    assert queue_size_for(512, 1000) == 512
