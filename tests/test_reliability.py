"""Crash safety, corrupt checkpoints, non-finite guards and user-facing errors."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pico.pll.proden
from pico.cli import run_training
from pico.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pico.engine.trainer import NonFiniteLossError, Trainer

BIN = Path(sys.executable).parent
CRASH_RUN = [
    "method=pico",
    "trainer.epochs=3",
    "trainer.progress=false",
    "trainer.checkpoint_every_steps=2",
    "trainer.keep_last=3",
    "trainer.embedding_figure=false",
    "model.widths=[8,16,16]",
    "method.queue_size=128",
    "method.warmup_min_steps=25",
]


def train_process(run_dir, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [BIN / "pico-train", *CRASH_RUN, f"run_dir={run_dir}", *extra]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_reaches_the_same_state(tmp_path):
    reference = train_process(tmp_path / "ref")
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()[-2000:]
    rng = random.Random(0)
    crash_dir = tmp_path / "crash"
    last = crash_dir / "checkpoints" / "last.pt"
    kills = 0
    for _ in range(4):
        proc = train_process(crash_dir, "resume=auto_or_new")
        seen = last.stat().st_mtime_ns if last.exists() else 0
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if last.exists() and last.stat().st_mtime_ns != seen:
                break  # checkpoints are being written: kill soon after, maybe mid-write
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        load_checkpoint(last)  # whatever the moment, the kept checkpoint loads
    assert kills >= 2
    final = train_process(crash_dir, "resume=auto")
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()[-2000:]
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_checkpoint(last)
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 3
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key


def test_resume_auto_skips_a_corrupt_last_checkpoint(tmp_path, caplog):
    ckpt_dir = tmp_path / "checkpoints"
    save_checkpoint({"epoch": 1}, ckpt_dir / "epoch_0001.pt")
    save_checkpoint({"epoch": 2}, ckpt_dir / "epoch_0002.pt")
    (ckpt_dir / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    trainer = Trainer.__new__(Trainer)
    trainer.ckpt_dir = ckpt_dir
    assert trainer.resume_path("auto") == ckpt_dir / "epoch_0002.pt"
    assert "truncated or corrupt" in caplog.text
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(ckpt_dir / "last.pt")
    (ckpt_dir / "epoch_0002.pt").write_bytes(b"")
    assert trainer.resume_path("auto") == ckpt_dir / "epoch_0001.pt"


def test_unwritable_checkpoint_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint({"a": 1}, blocker / "last.pt")


def poison_step(monkeypatch, at_step):
    original = pico.pll.proden.PRODEN.training_step

    def step(self, batch, info):
        terms = original(self, batch, info)
        if info.step == at_step:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(pico.pll.proden.PRODEN, "training_step", step)


def test_nonfinite_loss_stops_the_run_before_any_checkpoint_holds_it(
    make_config, tmp_path, monkeypatch
):
    poison_step(monkeypatch, at_step=25)  # inside epoch 2
    cfg = make_config("method=proden", "trainer.log_every=5")
    with pytest.raises(NonFiniteLossError, match="non-finite loss in steps 26-30"):
        run_training(cfg)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_nonfinite_skip_drops_the_step_and_counts_it(make_config, tmp_path, monkeypatch):
    poison_step(monkeypatch, at_step=7)
    run_training(make_config("method=proden", "trainer.nonfinite=skip"))
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["skipped"] == 1 and state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_deterministic_switch_trains(make_config):
    try:
        result = run_training(make_config("method=supervised", "trainer.deterministic=true"))
    finally:
        torch.use_deterministic_algorithms(False)
    assert 0 <= result["final"]["test/top1"] <= 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.candidates.q=1.5", "q must be a probability in [0, 1], got 1.5"),
        ("data=image_folder", "Missing mandatory value: data.root"),
        ("method.queue_size=8", "method.queue_size=8 is smaller than trainer.batch_size=64"),
        ("resume=missing.pt", "checkpoint missing.pt does not exist"),
        ("run_dir=/proc/no/such/dir", "run_dir=/proc/no/such/dir cannot be created"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, override, message):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [BIN / "pico-train", f"run_dir={tmp_path / 'r'}", override, "trainer.epochs=1"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("pico: error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-1500:]
