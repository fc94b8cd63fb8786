import itertools
import os

import pytest
import torch

from pico.data.bundle import Split, stratified_split
from pico.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pico.engine.loader import TensorLoader
from pico.engine.optim import warmup_cosine


def make_split(n=23):
    return Split(torch.arange(n, dtype=torch.uint8)[:, None], torch.arange(n) % 3)


def test_loader_covers_each_row_once_per_epoch_and_is_seeded():
    loader = TensorLoader(make_split(), 5, torch.device("cpu"), drop_last=False, seed=3)
    rows = torch.cat([idx for idx, _, _ in loader.epoch(0)])
    assert sorted(rows.tolist()) == list(range(23))
    again = torch.cat([idx for idx, _, _ in loader.epoch(0)])
    other = torch.cat([idx for idx, _, _ in loader.epoch(1)])
    assert torch.equal(rows, again) and not torch.equal(rows, other)
    resumed = torch.cat([idx for idx, _, _ in loader.epoch(0, start_batch=2)])
    assert torch.equal(resumed, rows[10:])


def test_loader_ranks_partition_the_global_batch():
    split = make_split(40)
    parts = [
        TensorLoader(split, 4, torch.device("cpu"), seed=1, rank=r, world_size=2) for r in range(2)
    ]
    single = TensorLoader(split, 8, torch.device("cpu"), seed=1)
    for (a, _, _), (b, _, _), (s, _, _) in zip(
        parts[0].epoch(0), parts[1].epoch(0), single.epoch(0), strict=True
    ):
        assert sorted(torch.cat([a, b]).tolist()) == sorted(s.tolist())


def test_drop_last_and_small_split():
    assert len(TensorLoader(make_split(23), 5, torch.device("cpu"))) == 4
    assert len(TensorLoader(make_split(3), 5, torch.device("cpu"))) == 1


def test_stratified_split_keeps_class_shares():
    targets = torch.arange(200) % 4
    rest, held = stratified_split(targets, 0.1, seed=0)
    assert len(set(rest.tolist()) & set(held.tolist())) == 0
    assert len(rest) + len(held) == 200
    assert torch.bincount(targets[held]).tolist() == [5, 5, 5, 5]
    assert torch.equal(held, stratified_split(targets, 0.1, seed=0)[1])


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=20, final_ratio=0.1)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    assert lrs[-1] > 0.1 and sched.get_last_lr()[0] == pytest.approx(0.1)


def test_checkpoint_round_trip_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"a": torch.arange(3), "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 2

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="disk full; free disk space"):
        save_checkpoint({"a": torch.zeros(1), "epoch": 3}, path)
    assert load_checkpoint(path)["epoch"] == 2
    assert os.listdir(path.parent) == ["last.pt"]


def test_checkpoint_refuses_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(CheckpointError, match="was refused"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
