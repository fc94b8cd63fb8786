"""pico-eval on a run whose data moved: data overrides on top of the checkpoint's config,
outputs in another folder, and replaced outputs reported."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from test_data_folder import make_folder

from pico.cli import run_evaluation, run_export, run_training

BIN = Path(sys.executable).parent
FOLDER_RUN = [
    "method=proden",
    "trainer.epochs=1",
    "trainer.threads=1",
    "trainer.embedding_figure=false",
    "data=image_folder",
    "data.image_size=8",
    "data.channels=1",
    "model=convnet",
    "aug=digits",
]


@pytest.fixture
def moved(make_config, tmp_path) -> tuple[Path, Path]:
    """A one-epoch run on a small image folder, which then moved; (checkpoint, new root)."""
    make_folder(tmp_path / "images", classes=("a", "b", "c"), per_class=12, size=(8, 8), gray=True)
    run_training(make_config(*FOLDER_RUN, f"data.root={tmp_path / 'images'}"))
    shutil.move(tmp_path / "images", tmp_path / "moved")
    return tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "moved"


def test_data_root_override_evaluates_a_run_whose_data_moved(moved, tmp_path, capsys):
    checkpoint, root = moved
    with pytest.raises(InstantiationException, match=r"Fix: pass data\.root=DIR"):
        run_evaluation(checkpoint, "cpu", "classifier")
    metrics = run_evaluation(checkpoint, "cpu", "all", data={"root": str(root)}, out=tmp_path / "e")
    record = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert record["data_overrides"] == {"data.root": str(root)}
    assert record["test/top1"] == metrics["test/top1"]
    assert (tmp_path / "e" / "embedding.png").is_file()
    assert not (tmp_path / "run" / "eval.json").exists()  # out= keeps the run folder as it was
    assert f"written {tmp_path / 'e' / 'eval.json'}" in capsys.readouterr().out


def test_outputs_already_there_are_replaced_and_reported(moved, tmp_path, capsys):
    checkpoint, root = moved
    run_evaluation(checkpoint, "cpu", "all", data={"root": str(root)})
    capsys.readouterr()
    run_evaluation(checkpoint, "cpu", "knn", data={"root": str(root)})
    printed = capsys.readouterr().out
    assert f"replaced {tmp_path / 'run' / 'eval.json'}" in printed
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["parts"] == "knn"
    run_export(checkpoint, tmp_path / "backbone.pt", parts="backbone")
    run_export(checkpoint, tmp_path / "backbone.pt", parts="backbone")
    assert f"replaced {tmp_path / 'backbone.pt'}" in capsys.readouterr().out


def test_a_key_the_run_data_config_lacks_is_refused(moved):
    checkpoint, root = moved
    with pytest.raises(ValueError, match=r"data.rot is not a key of the checkpoint's data config"):
        run_evaluation(checkpoint, "cpu", data={"rot": str(root)})
    with pytest.raises(ValueError, match=r"data.source.rot is not a key"):
        run_evaluation(checkpoint, "cpu", data={"source": {"rot": str(root)}})


def test_pico_eval_accepts_data_root_and_out_on_the_command_line(moved, tmp_path):
    checkpoint, root = moved
    args = [BIN / "pico-eval", f"checkpoint={checkpoint}", "device=cpu", "parts=classifier"]
    args += [f"data.root={root}", "out=evaluated"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "evaluated" / "eval.json").read_text())
    assert record["data_overrides"] == {"data.root": str(root)} and 0 <= record["test/top1"] <= 1
    out = subprocess.run(
        [*args[:-2], "data.rot=x"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "pico: error: data.rot is not a key of the checkpoint's data config" in out.stderr
