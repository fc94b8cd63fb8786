"""Run integrity: resume fingerprints, the run-directory lock, no silent overwrite of a
finished run, checkpoint checksums and write order, and resume=auto without a good
checkpoint."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pico.engine.callbacks
import pico.engine.trainer
from pico.cli import run_training
from pico.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pico.engine.run_dir import LOCK_NAME, RunDirError

BIN = Path(sys.executable).parent
RUN = ["method=proden", "trainer.epochs=1", "trainer.embedding_figure=false"]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """The bytes of every file pico writes into ``run_dir`` (Hydra's own aside)."""
    files = [run_dir / "config.yaml", run_dir / "metrics.json"]
    files += sorted((run_dir / "checkpoints").iterdir())
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


@pytest.fixture
def finished(make_config, tmp_path) -> Path:
    """A one-epoch PRODEN run in ``tmp_path/run``."""
    run_training(make_config(*RUN))
    return tmp_path / "run"


@pytest.mark.parametrize(
    ("override", "differ"),
    [
        ("seed=1", "['seed', 'data.source', 'data.split', 'train_candidates', 'splits']"),
        ("data.candidates.q=0.7", "['data.candidates', 'train_candidates']"),
        ("method=cc", "['method']"),
    ],
)
def test_resume_of_another_run_is_refused_and_nothing_is_written(
    make_config, finished, override, differ
):
    before = snapshot(finished)
    with pytest.raises(ValueError, match="cannot resume from") as err:
        run_training(make_config(*RUN, override, "resume=auto"))
    assert f"differs from the checkpoint's in {differ}" in str(err.value)
    assert "cannot change on resume: start a new run_dir" in str(err.value)
    assert snapshot(finished) == before
    assert not (finished / LOCK_NAME).exists()


def test_allow_changes_admits_a_longer_run(make_config, finished):
    longer = [*RUN, "trainer.epochs=2", "resume=auto"]
    with pytest.raises(ValueError, match=r"add allow_changes=\[trainer.epochs\]"):
        run_training(make_config(*longer))
    result = run_training(make_config(*longer, "allow_changes=[trainer.epochs]"))
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    with pytest.raises(ValueError, match=r"allow_changes=\['method'\] can never change"):
        run_training(make_config(*longer, "allow_changes=[method]"))


def test_fresh_run_into_a_finished_directory_is_refused_unless_overwrite(make_config, finished):
    before = snapshot(finished)
    with pytest.raises(RunDirError, match=r"already holds a run.*resume=auto.*overwrite=true"):
        run_training(make_config(*RUN))
    assert snapshot(finished) == before
    save_checkpoint({"epoch": 7}, finished / "checkpoints" / "epoch_0007.pt")
    run_training(make_config(*RUN, "overwrite=true"))
    names = sorted(p.name for p in (finished / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch_0001.pt", "last.pt"]  # the old run's files are gone


def test_a_second_run_on_a_locked_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from pico.engine.run_dir import run_dir_lock\n"
            "with run_dir_lock(Path(sys.argv[1])):\n"
            "    print('locked', flush=True); time.sleep(120)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = [BIN / "pico-train", f"run_dir={run_dir}", *RUN, "trainer.progress=false"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 2, out.stderr[-1500:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("pico: error:")]
    assert len(errors) == 1 and f"is in use by another run (pid {holder.pid} on" in errors[0]
    assert not (run_dir / "config.yaml").exists()


def test_a_stale_lock_is_taken_over_and_released(make_config, tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "gone"}))
    run_training(make_config(*RUN))
    assert "took over the stale lock of pid 999999 on gone" in caplog.text
    assert not (run_dir / LOCK_NAME).exists()


def test_flipped_bytes_are_refused_as_corrupt(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"queue": torch.full((4096,), 1.25), "epoch": 3}, path)
    data = bytearray(path.read_bytes())
    at = data.index(torch.full((64,), 1.25).numpy().tobytes())
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="does not match the checksum written with it"):
        load_checkpoint(path)


def test_random_bytes_are_corrupt_without_torchs_advice(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0))
                     .to(torch.uint8).numpy().tobytes())  # fmt: skip
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value) and "possibly code" not in str(err.value)


class Killed(BaseException):
    """Stands for a SIGKILL between two checkpoint writes."""


def test_a_kill_between_the_best_and_last_writes_leaves_them_consistent(
    make_config, tmp_path, monkeypatch
):
    original = pico.engine.trainer.save_checkpoint
    written: list[tuple[str, int]] = []

    def dying_save(state, path, **kwargs):
        just_best = bool(written) and written[-1] == ("best.pt", state["epoch"])
        if path.name == "last.pt" and just_best and state["epoch"] > 1:
            raise Killed
        original(state, path, **kwargs)
        written.append((path.name, state["epoch"]))

    # best.pt is written by the BestCheckpoint callback, last.pt by the trainer
    for module in (pico.engine.callbacks, pico.engine.trainer):
        monkeypatch.setattr(module, "save_checkpoint", dying_save)
    run = [*RUN, "trainer.epochs=4", "eval.select_metric=val/top1"]
    with pytest.raises(Killed):
        run_training(make_config(*run))
    ckpt = tmp_path / "run" / "checkpoints"
    best, last = load_checkpoint(ckpt / "best.pt"), load_checkpoint(ckpt / "last.pt")
    assert best["epoch"] == last["epoch"] + 1  # best went first; last is one epoch behind
    (ckpt / ".best.pt.left.tmp").write_bytes(b"")  # as a kill inside a write leaves one
    monkeypatch.undo()
    run_training(make_config(*run, "resume=auto"))
    best, last = load_checkpoint(ckpt / "best.pt"), load_checkpoint(ckpt / "last.pt")
    assert last["epoch"] == 4 and best["epoch"] == last["best"]["epoch"]
    assert best["history"][-1] == last["best"]
    assert not list(ckpt.glob(".*.tmp"))


def test_resume_auto_without_a_good_checkpoint_is_an_error_unless_auto_or_new(
    make_config, tmp_path
):
    with pytest.raises(CheckpointError, match="holds no checkpoint; pass resume=auto_or_new"):
        run_training(make_config(*RUN, "resume=auto"))
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="no checkpoint there loads"):
        run_training(make_config(*RUN, "resume=auto"))
    started = time.time()
    result = run_training(make_config(*RUN, "resume=auto_or_new"))
    assert result["history"][-1]["epoch"] == 1
    assert load_checkpoint(ckpt / "last.pt")["epoch"] == 1
    assert (ckpt / "last.pt").stat().st_mtime >= started
