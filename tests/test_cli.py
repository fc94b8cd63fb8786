"""The console scripts, run as a user would (subprocesses, from another folder)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

BIN = Path(sys.executable).parent
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["trainer.epochs=1", "trainer.progress=false", "model.widths=[8,16,16]"]


def run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_pico_train_and_eval_console_scripts(tmp_path):
    out = run([BIN / "pico-train", *TINY, f"run_dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test/top1" in out.stdout and "best checkpoint chosen by val/approx_acc" in out.stdout
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    out = run([BIN / "pico-eval", f"checkpoint={ckpt}", "device=cpu"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert 0 <= metrics["test/top1"] <= 1
    assert (tmp_path / "run" / "embedding.png").is_file()
    out = run([BIN / "pico-eval", f"checkpoint={ckpt}", "device=cpu", "parts=knn"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert metrics["parts"] == "knn" and 0 <= metrics["test/knn_top1"] <= 1
    out = run([BIN / "pico-export", f"checkpoint={ckpt}", "out=backbone.pt"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "backbone.pt").is_file()


@pytest.mark.slow  # four one-epoch runs: 10-25 s
def test_multirun_names_job_folders_by_overrides_and_writes_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    args = [BIN / "pico-train", "-m", *TINY, "trainer.embedding_figure=false", "trainer.threads=1"]
    args += ["method=proden,supervised", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    out = run(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = ["method=proden,seed=0", "method=proden,seed=1"]
    jobs += ["method=supervised,seed=0", "method=supervised,seed=1"]
    for job in jobs:  # named by the swept keys alone, fixed overrides left out
        assert (sweep / job / "metrics.json").is_file()
    with (sweep / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == jobs
    pairs = [("proden", "0"), ("proden", "1"), ("supervised", "0"), ("supervised", "1")]
    assert [(r["method"], r["seed"]) for r in rows] == pairs
    for row in rows:
        final = json.loads((sweep / row["job"] / "metrics.json").read_text())["final"]
        assert float(row["test/top1"]) == final["test/top1"]
        assert row["status"] == "done" and row["best_epoch"] == "1"
    table = (sweep / "summary.md").read_text()
    assert "| job | status | method | seed | epochs | test/top1 |" in table
    assert "Common overrides: `model.widths=[8,16,16] " in table
    assert f"sweep summary of 4 jobs: {sweep / 'summary.md'}" in out.stdout


@pytest.mark.slow  # one tiny run and its evaluation
def test_method_keys_the_yaml_leaves_to_the_constructor_take_overrides(tmp_path):
    """configs/method/*.yaml no longer list the constructor defaults, yet every argument
    is a key: method.temperature=0.2 works without a +, in a run and in a sweep, a key
    that is no argument is still refused, and pico-eval reads the run's checkpoint."""
    show = [BIN / "pico-train", "--cfg", "job", "method=pico"]
    out = run([*show, "method.temperature=0.2"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    method = OmegaConf.create(out.stdout).method
    assert "temperature" not in OmegaConf.load(CONFIGS / "method" / "pico.yaml").method
    assert method.temperature == 0.2 and method.queue_size == 8192  # the others: defaults
    out = run([*show, "method.temprature=0.2"], tmp_path)
    assert out.returncode != 0 and "Could not override 'method.temprature'" in out.stderr
    sweep = tmp_path / "sweep"
    args = [BIN / "pico-train", "-m", *TINY, "trainer.embedding_figure=false", "trainer.threads=1"]
    args += ["method=cavl", "method.warmup_min_steps=7", f"hydra.sweep.dir={sweep}"]
    out = run(args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    stored = OmegaConf.load(sweep / "0" / ".hydra" / "config.yaml").method
    assert stored.warmup_min_steps == 7 and stored.warmup_share == 0.3
    ckpt = sweep / "0" / "checkpoints" / "last.pt"
    out = run([BIN / "pico-eval", f"checkpoint='{ckpt}'", "device=cpu", "parts=knn"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]


HELP = {
    "pico-train": [
        "pico-train: train a partial-label or contrastive method",
        "Usage: pico-train [group=choice ...] [+presets=NAME] [key=value ...]",
        "run_dir=DIR ",
        "trainer.epochs=N ",
        "data.candidates.q=0.3 ",
        "== Config groups ==",
        "+presets=NAME applies a paper recipe",
        "pico-train -m method=pico,proden seed=0,1",
    ],
    "pico-eval": [
        "pico-eval: evaluate a pico-train checkpoint",
        "checkpoint=PATH ",
        "parts=all ",
        "data.KEY=VALUE ",
        "out=DIR ",
        "None: the method, model and data come from the checkpoint's stored config",
        "Presets (+presets=NAME) belong to pico-train.",
    ],
    "pico-export": [
        "pico-export: save the backbone of a pico-train checkpoint",
        "checkpoint=PATH ",
        "out=FILE ",
        "Presets (+presets=NAME) belong to pico-train.",
    ],
}


@pytest.mark.parametrize("script", sorted(HELP))
def test_help_describes_the_command_its_keys_and_groups(script, tmp_path):
    out = run([BIN / script, "--help"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in HELP[script]:
        assert line in out.stdout, line
    assert "powered by Hydra" not in out.stdout
    groups = {line.split(":")[0]: line for line in out.stdout.splitlines() if ": " in line}
    if script == "pico-train":  # every group with every choice, as in configs/
        for group in ("method", "data", "model", "presets"):
            names = sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
            assert groups[group] == f"{group}: {', '.join(names)}"
    else:  # the training groups are not this command's
        assert not {"method", "data", "presets"} & set(groups)


def _readme_blocks(section: str) -> dict[str, str]:
    """The fenced code blocks of a README section, by language."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for chunk in body.split("```")[1::2]:
        language, code = chunk.split("\n", 1)
        blocks[language] = code
    return blocks


def test_the_readme_method_example_trains_and_evaluates(tmp_path):
    blocks = _readme_blocks("Adding a method")
    (tmp_path / "mymethods").mkdir()
    (tmp_path / "mymethods" / "__init__.py").write_text("")
    (tmp_path / "mymethods" / "likelihood.py").write_text(blocks["python"])
    (tmp_path / "my_configs" / "method").mkdir(parents=True)
    (tmp_path / "my_configs" / "method" / "likelihood.yaml").write_text(blocks["yaml"])
    command = blocks["bash"].split("pico-train ", 1)[1].replace("$PWD", str(tmp_path)).split()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    short = ["trainer.epochs=3", "trainer.progress=false"]  # enough to leave chance behind
    args = [BIN / "pico-train", *command, *short, f"run_dir={tmp_path / 'run'}"]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "best checkpoint chosen by val/approx_acc" in out.stdout
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    args = [BIN / "pico-eval", f"checkpoint={ckpt}", "device=cpu", "parts=classifier"]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert metrics["test/top1"] > 0.5  # digits: chance is 0.1


def test_a_run_refused_at_start_leaves_no_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [BIN / "pico-train", f"run_dir={run_dir}", "trainer.epochs=abc"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "trainer.epochs='abc' is not valid" in out.stderr
    assert not run_dir.exists()


def test_only_a_folder_of_hydra_start_files_is_removed(tmp_path):
    from pico.cli import remove_failed_start

    (tmp_path / "a" / ".hydra").mkdir(parents=True)
    (tmp_path / "a" / ".hydra" / "config.yaml").write_text("x: 1")
    (tmp_path / "a" / "cli.log").write_text("")
    remove_failed_start(str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
    (tmp_path / "b" / ".hydra").mkdir(parents=True)
    (tmp_path / "b" / "checkpoints").mkdir()
    remove_failed_start(str(tmp_path / "b"))
    assert (tmp_path / "b" / "checkpoints").is_dir()
    remove_failed_start(None)  # no run_dir (pico-eval): nothing to do
