"""Every row of the README's Reliability error table, run as a user would: console scripts
in subprocesses, each checked for its exit status and its one line on stderr.

``ROWS`` is keyed by the table's first column, and a test checks that the two agree, so
the table cannot drift from the code."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pico.engine.checkpoint import load_checkpoint

BIN = Path(sys.executable).parent
README = Path(__file__).resolve().parents[1] / "README.md"
TINY = [
    "method=proden",
    "trainer.epochs=1",
    "trainer.progress=false",
    "trainer.embedding_figure=false",
    "model.widths=[8,16,16]",
]


def pico(tool: str, *args: object, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run console script ``tool`` with ``args`` in ``cwd``."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    command = [BIN / tool, *map(str, args)]
    return subprocess.run(
        command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=240
    )


def one_error(out: subprocess.CompletedProcess, status: int = 2) -> str:
    """The single ``pico:`` line of a run that failed with ``status`` and no traceback."""
    assert out.returncode == status, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("pico:")]
    assert len(lines) == 1, out.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch PRODEN run (read it; copy it to change it)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    out = pico("pico-train", *TINY, f"run_dir={run_dir}", cwd=run_dir.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    return run_dir


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` for the block (skips where mounting is
    impossible, e.g. without root)."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def wait_for(path: Path, proc: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.time() + limit
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), "the run wrote no checkpoint"


def write_mat(path: Path, transpose: bool = False, empty_row: int | None = None) -> Path:
    """A small partial-label .mat file (data N x D, labels C x N)."""
    rng = np.random.default_rng(0)
    n, d, c = 120, 6, 3
    labels = np.arange(n) % c
    data = rng.normal(0, 3, size=(c, d))[labels] + rng.normal(size=(n, d))
    target = np.zeros((c, n))
    target[labels, np.arange(n)] = 1
    partial = np.maximum(target, rng.random((c, n)) < 0.3)
    if empty_row is not None:
        partial[:, empty_row] = 0
    stored = data.T if transpose else data
    scipy.io.savemat(path, {"data": stored, "target": target, "partial_target": partial})
    return path


def image_folder(root: Path, test_images: bool = True) -> Path:
    """ROOT/{train,test}/{a,b}/*.png with a few 8x8 images per class."""
    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(4 if split == "train" or test_images else 0):
                Image.new("RGB", (8, 8), (40 * i, 0, 200)).save(folder / f"{i}.png")
    return root


# --- one function per table row: each runs the scripts and checks what the user sees ---


def row_killed(tmp_path: Path, finished: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.epochs=3", "trainer.checkpoint_every_steps=1", f"run_dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([BIN / "pico-train", *args], env=env, stdout=subprocess.DEVNULL)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run_dir / "checkpoints" / ".last.pt.left.tmp").write_bytes(b"")
    out = pico("pico-train", *args, "resume=auto", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 3
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def row_signal(tmp_path: Path, finished: Path) -> None:
    run_dir = tmp_path / "run"
    args = [BIN / "pico-train", *TINY, "trainer.epochs=50", f"run_dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1].decode()
    done = subprocess.CompletedProcess(args, proc.returncode, "", stderr)
    line = one_error(done, status=143)
    assert line.startswith("pico: stopped at epoch ")
    assert line.endswith(f"; continue with: pico-train run_dir={run_dir} resume=auto")


def row_corrupt(tmp_path: Path, finished: Path) -> None:
    data = (finished / "checkpoints" / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    line = one_error(pico("pico-eval", "checkpoint=cut.pt", "device=cpu", cwd=tmp_path))
    assert "pico: error: checkpoint cut.pt is truncated or corrupt" in line
    state = torch.load(finished / "checkpoints" / "last.pt", weights_only=True)
    weights = next(v for v in state["method"].values() if v.numel() >= 64)
    flipped = bytearray(data)
    at = flipped.index(weights.reshape(-1)[:16].numpy().tobytes())
    flipped[at : at + 64] = bytes(b ^ 0xFF for b in flipped[at : at + 64])
    (tmp_path / "flipped.pt").write_bytes(flipped)
    line = one_error(pico("pico-eval", "checkpoint=flipped.pt", "device=cpu", cwd=tmp_path))
    assert "its content does not match the checksum written with it" in line


def row_auto_without_checkpoint(tmp_path: Path, finished: Path) -> None:
    out = pico("pico-train", *TINY, f"run_dir={tmp_path / 'new'}", "resume=auto", cwd=tmp_path)
    assert "pico: error: resume=auto has nothing to resume in" in one_error(out)
    assert "pass resume=auto_or_new" in one_error(out)


def row_pickled_code(tmp_path: Path, finished: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"method": Payload()}, tmp_path / "evil.pt")
    for tool, extra in (("pico-eval", "device=cpu"), ("pico-export", "out=b.pt")):
        line = one_error(pico(tool, "checkpoint=evil.pt", extra, cwd=tmp_path))
        assert "checkpoint evil.pt was refused: it holds objects other than tensors" in line
        assert "weights_only" not in line
    assert not (tmp_path / "pwned").exists()


def row_not_a_checkpoint(tmp_path: Path, finished: Path) -> None:
    best = finished / "checkpoints" / "best.pt"
    out = pico("pico-export", f"checkpoint={best}", "out=backbone.pt", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    line = one_error(pico("pico-eval", "checkpoint=backbone.pt", "device=cpu", cwd=tmp_path))
    assert "pico: error: backbone.pt is not a pico-train checkpoint" in line


def row_resume_another_run(tmp_path: Path, finished: Path) -> None:
    run_dir = shutil.copytree(finished, tmp_path / "run")
    before = (run_dir / "config.yaml").read_bytes()
    out = pico("pico-train", *TINY, f"run_dir={run_dir}", "seed=1", "resume=auto", cwd=tmp_path)
    line = one_error(out)
    assert "cannot resume from" in line and "differs from the checkpoint's in ['seed'," in line
    assert (run_dir / "config.yaml").read_bytes() == before


def row_second_run(tmp_path: Path, finished: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = (
        "import sys, time; from pathlib import Path\n"
        "from pico.engine.run_dir import run_dir_lock\n"
        "with run_dir_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = pico("pico-train", *TINY, f"run_dir={run_dir}", cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    line = one_error(out)
    assert f"run_dir={run_dir} is in use by another run (pid {holder.pid} on " in line


def row_fresh_into_finished(tmp_path: Path, finished: Path) -> None:
    run_dir = shutil.copytree(finished, tmp_path / "run")
    line = one_error(pico("pico-train", *TINY, f"run_dir={run_dir}", cwd=tmp_path))
    assert f"run_dir={run_dir} already holds a run (checkpoints/best.pt" in line
    assert "continue it with resume=auto, replace it with overwrite=true" in line


def row_disk_full(tmp_path: Path, finished: Path) -> None:
    with tmpfs(tmp_path / "small", "64k") as small:
        out = pico("pico-train", *TINY, f"run_dir={small / 'run'}", cwd=tmp_path)
        line = one_error(out)
    assert "pico: error: cannot write checkpoint " in line
    assert ": No space left on device; free disk space or choose another run_dir" in line


def row_unwritable_run_dir(tmp_path: Path, finished: Path) -> None:
    out = pico("pico-train", *TINY, "run_dir=/proc/no/such/dir", cwd=tmp_path)
    assert "pico: error: run_dir=/proc/no/such/dir cannot be created" in one_error(out)
    with tmpfs(tmp_path / "ro", "1m") as mount:
        (mount / "run").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        out = pico("pico-train", *TINY, f"run_dir={mount / 'run'}", cwd=tmp_path)
        line = one_error(out)
    assert f"run_dir={mount / 'run'} is not writable (Read-only file system)" in line


def row_nonfinite(tmp_path: Path, finished: Path) -> None:
    out = pico("pico-train", *TINY, f"run_dir={tmp_path / 'run'}", "trainer.optimizer.lr=1e8",
               cwd=tmp_path)  # fmt: skip
    line = one_error(out)
    assert "pico: error: non-finite loss in steps 1-20" in line
    assert "start the run again (no checkpoint was written yet)" in line


def row_bad_config(tmp_path: Path, finished: Path) -> None:
    for override, message in [
        ("trainer.epochs=abc", "trainer.epochs='abc' is not valid: it must be a whole number"),
        ("eval.select_metric=val/aprox_acc", "eval.select_metric=val/aprox_acc is not a metric"),
    ]:
        out = pico("pico-train", *TINY, f"run_dir={tmp_path / 'run'}", override, cwd=tmp_path)
        assert message in one_error(out)
    assert not (tmp_path / "run" / "config.yaml").exists()


def row_missing_files(tmp_path: Path, finished: Path) -> None:
    out = pico("pico-train", "data=image_folder", f"data.root={tmp_path / 'nowhere'}",
               f"run_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    assert "training image folder not found at" in one_error(out)


def row_zero_byte_image(tmp_path: Path, finished: Path) -> None:
    root = image_folder(tmp_path / "images")
    (root / "train" / "a" / "empty.jpg").write_bytes(b"")
    out = pico("pico-train", "data=image_folder", f"data.root={root}",
               f"run_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    line = one_error(out)
    assert f"image '{root / 'train' / 'a' / 'empty.jpg'}' is empty (0 bytes)" in line


def row_empty_test(tmp_path: Path, finished: Path) -> None:
    root = image_folder(tmp_path / "images", test_images=False)
    out = pico("pico-train", "data=image_folder", f"data.root={root}",
               f"run_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    line = one_error(out)
    assert "the test split of data=image_folder is empty" in line and "+data.test=none" in line


def row_transposed_mat(tmp_path: Path, finished: Path) -> None:
    path = write_mat(tmp_path / "t.mat", transpose=True)
    out = pico("pico-train", "data=mat", f"data.path={path}", "method=proden",
               f"run_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    line = one_error(out)
    assert "'data' has shape (6, 120), one column per example" in line
    assert "store 'data' as N x D" in line


def row_missing_value(tmp_path: Path, finished: Path) -> None:
    out = pico("pico-train", "data=image_folder", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "Missing mandatory value: data.root" in one_error(out)


def row_unknown_option(tmp_path: Path, finished: Path) -> None:
    out = pico("pico-train", "method=bogus", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 1
    assert "Could not find 'method/bogus'" in out.stderr and "Available options" in out.stderr


def row_candidate_faults(tmp_path: Path, finished: Path) -> None:
    path = write_mat(tmp_path / "e.mat", empty_row=5)
    out = pico("pico-train", "data=mat", f"data.path={path}", "method=proden",
               f"run_dir={tmp_path / 'run'}", cwd=tmp_path)  # fmt: skip
    line = one_error(out)
    assert "at least one candidate label, but 1 rows (first: 5) are empty" in line


def row_q_range(tmp_path: Path, finished: Path) -> None:
    out = pico("pico-train", *TINY, "data.candidates.q=1.5", f"run_dir={tmp_path / 'r'}",
               cwd=tmp_path)  # fmt: skip
    assert "pico: error: q must be a probability in [0, 1], got 1.5" in one_error(out)


def row_small_queue(tmp_path: Path, finished: Path) -> None:
    out = pico("pico-train", "method=pico", "method.queue_size=8", f"run_dir={tmp_path / 'r'}",
               cwd=tmp_path)  # fmt: skip
    line = one_error(out)
    assert "method.queue_size=8 is smaller than trainer.batch_size=64" in line


def row_init_from(tmp_path: Path, finished: Path) -> None:
    ckpt = finished / "checkpoints" / "last.pt"
    out = pico("pico-train", *TINY, f"model.init_from={ckpt}", "model.widths=[8,16,32]",
               f"run_dir={tmp_path / 'r'}", cwd=tmp_path)  # fmt: skip
    line = one_error(out)
    assert "does not fit this backbone" in line and "shape mismatch" in line


def row_two_sources(tmp_path: Path, finished: Path) -> None:
    path = write_mat(tmp_path / "m.mat")
    both = "data.candidates={name:uniform,q:0.3}"
    out = pico("pico-train", "data=mat", f"data.path={path}", both, f"run_dir={tmp_path / 'r'}",
               cwd=tmp_path)  # fmt: skip
    assert "pass data.candidates=null" in one_error(out)


ROWS: dict[str, Callable[[Path, Path], None]] = {
    "process killed (SIGKILL, power loss) at any moment, also while writing": row_killed,
    "SIGINT (Ctrl-C) or SIGTERM": row_signal,
    "truncated or corrupt checkpoint, or changed bytes": row_corrupt,
    "`resume=auto` with no good checkpoint": row_auto_without_checkpoint,
    "checkpoint carrying pickled code": row_pickled_code,
    "`pico-eval` given a file that is not a training checkpoint (e.g. a `pico-export` output)":
        row_not_a_checkpoint,
    "resume with another seed, q, method, model or data": row_resume_another_run,
    "a second run on the same `run_dir`": row_second_run,
    "a fresh run into a `run_dir` holding a run": row_fresh_into_finished,
    "disk full while saving": row_disk_full,
    "`run_dir` that cannot be created or is read-only": row_unwritable_run_dir,
    "NaN or Inf loss": row_nonfinite,
    "bad config value (type or range)": row_bad_config,
    "missing dataset files or wrong folder layout": row_missing_files,
    "zero-byte or undecodable image": row_zero_byte_image,
    "empty test split": row_empty_test,
    "`.mat` file with `data` stored D x N": row_transposed_mat,
    "required value not given": row_missing_value,
    "unknown dataset, method or option": row_unknown_option,
    "candidate faults (empty set, index out of range, values other than 0/1, NaN, row count)":
        row_candidate_faults,
    "q or η outside [0, 1]": row_q_range,
    "queue smaller than the batch": row_small_queue,
    "`model.init_from` of another architecture": row_init_from,
    "two sources of candidate sets at once": row_two_sources,
}  # fmt: skip


def readme_faults() -> list[str]:
    """The first column of the table in the README's Reliability section."""
    section = README.read_text().split("## Reliability\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [row.split(" | ", 1)[0].removeprefix("| ") for row in rows[1:]]


def test_every_table_row_has_a_test():
    assert readme_faults() == list(ROWS)


@pytest.mark.slow  # one to three console-script runs per row, about five minutes in all
@pytest.mark.parametrize("fault", list(ROWS))
def test_table_row(fault, tmp_path, finished):
    ROWS[fault](tmp_path, finished)


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(tmp_path):
    out = pico("pico-train", *TINY, "data.candidates.q=1.5", f"run_dir={tmp_path / 'r'}",
               cwd=tmp_path, HYDRA_FULL_ERROR="1")  # fmt: skip
    assert out.returncode != 0 and "Traceback" in out.stderr
    assert "q must be a probability in [0, 1], got 1.5" in out.stderr
