"""SIGINT and SIGTERM: the step in progress ends, a mid-epoch checkpoint is written, one
line says how to continue, and the continued run ends bit-identical to one never stopped."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_tensors

import pico.pll.proden
from pico.cli import run_training
from pico.engine.checkpoint import load_checkpoint
from pico.engine.stop import RunStopped

BIN = Path(sys.executable).parent
RUN = ["method=proden", "trainer.epochs=2", "trainer.embedding_figure=false"]
#: digits with batch 64: 20 steps per epoch, so step 25 lies inside epoch 2
STEPS, STOP_STEP = 20, 25


def signal_at_step(monkeypatch, signum: int, at_step: int) -> None:
    """Make the training process send itself ``signum`` during step ``at_step``."""
    original = pico.pll.proden.PRODEN.training_step

    def step(self, batch, info):
        if info.step == at_step:
            os.kill(os.getpid(), signum)
        return original(self, batch, info)

    monkeypatch.setattr(pico.pll.proden.PRODEN, "training_step", step)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_epoch_saves_and_resume_ends_bit_identical(
    make_config, tmp_path, monkeypatch, signum
):
    run_training(make_config(*RUN, run_dir="ref"))
    with monkeypatch.context() as patch:
        signal_at_step(patch, signum, STOP_STEP)
        with pytest.raises(RunStopped) as stopped:
            run_training(make_config(*RUN))
    assert stopped.value.exit_code == 128 + signum
    assert str(stopped.value) == (
        f"stopped at epoch 2 step {STOP_STEP + 1}; continue with: "
        f"pico-train run_dir={tmp_path / 'run'} resume=auto"
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    mid = load_checkpoint(last)
    assert (mid["epoch"], mid["step"], mid["batch"]) == (1, STOP_STEP + 1, STOP_STEP + 1 - STEPS)
    run_training(make_config(*RUN, "resume=auto"))
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = load_checkpoint(last)
    for key in ("method", "optimizer", "scheduler", "rng_cpu", "step", "history", "best"):
        assert_same_tensors(a[key], b[key], key)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_pico_train_stopped_by_a_signal_prints_one_line_and_exits_128_plus_it(tmp_path, signum):
    run_dir = tmp_path / "run"
    args = [BIN / "pico-train", f"run_dir={run_dir}", *RUN, "trainer.epochs=50"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    stderr = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 128 + signum, stderr[-1500:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("pico:")]
    assert len(lines) == 1, stderr[-1500:]
    match = re.fullmatch(
        rf"pico: stopped at epoch (\d+) step (\d+); continue with: "
        rf"pico-train run_dir={re.escape(str(run_dir))} resume=auto",
        lines[0],
    )
    assert match, lines[0]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == int(match[2])
    assert not (run_dir / "pico.lock").exists()
