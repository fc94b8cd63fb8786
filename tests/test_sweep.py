"""Sweep job folder names and the sweep summary table (pico.sweep), on hand-made job
folders as ``pico-train -m`` leaves them."""

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pico.sweep import MAX_NAME, SUMMARY_CSV, SUMMARY_MD, job_dir_name, main, summarize_sweep


def test_job_dir_name_joins_the_swept_overrides_sorted():
    overrides = ["trainer.epochs=1", "seed=1", "method=pico", "run_dir=x"]
    assert job_dir_name(overrides, 3) == "method=pico,run_dir=x,seed=1,trainer.epochs=1"
    assert job_dir_name(overrides, 3, exclude=["run_dir"]) == "method=pico,seed=1,trainer.epochs=1"
    # the swept keys name the job, excluded or not (else two jobs could share a folder)
    assert job_dir_name(overrides, 3, exclude=["seed"], keep=["seed", "method"]) == (
        "method=pico,seed=1"
    )
    assert job_dir_name(["+data.candidates.eta=0.2"], 0) == "+data.candidates.eta=0.2"


def test_job_dir_name_falls_back_to_the_job_number_and_stays_one_short_folder():
    assert job_dir_name(["trainer.epochs=1"], 7, keep=[]) == "7"
    assert job_dir_name(["data.path=/data/a.mat"], 0) == "data.path=_data_a.mat"
    long_a = job_dir_name([f"method.tag={'a' * 200}"], 0)
    long_b = job_dir_name([f"method.tag={'a' * 199}b"], 0)
    assert len(long_a) == MAX_NAME and long_a != long_b


def write_job(sweep: Path, name: str, num: int, overrides: list[str], final=None, best=None):
    """A job folder: Hydra's .hydra/ files, and metrics.json when ``final`` is given."""
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    (sweep / name / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
    if final is not None:
        metrics = {"final": final, "best": best, "select_metric": "val/approx_acc"}
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))


def test_summary_has_one_row_per_job_in_job_order_with_varying_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    final = {"epoch": 3, "test/top1": 0.91, "val/approx_acc": 0.8, "train/loss": 0.1}
    best = {"epoch": 2, "test/top1": 0.9, "val/approx_acc": 0.85}
    write_job(sweep, "q=0.3", 1, ["trainer.epochs=3", "q=0.3"], final, best)
    write_job(sweep, "q=0.1", 0, ["trainer.epochs=3", "q=0.1"], {**final, "test/top1": 0.95}, best)
    write_job(sweep, "q=0.5", 2, ["trainer.epochs=3", "q=0.5"])  # still running
    rows = summarize_sweep(sweep)
    assert [r["job"] for r in rows] == ["q=0.1", "q=0.3", "q=0.5"]
    assert rows[0] == {
        "job": "q=0.1",
        "status": "done",
        "q": "0.1",
        "epochs": 3,
        "test/top1": 0.95,
        "val/approx_acc": 0.8,
        "select_metric": "val/approx_acc",
        "best_epoch": 2,
        "best_value": 0.85,
        "best_test/top1": 0.9,
    }
    assert rows[2]["status"] == "unfinished" and rows[2]["test/top1"] is None
    with (sweep / SUMMARY_CSV).open(newline="") as f:
        stored = list(csv.DictReader(f))
    assert stored[1]["test/top1"] == "0.91" and stored[2]["test/top1"] == ""
    table = (sweep / SUMMARY_MD).read_text()
    assert "3 jobs, 2 finished." in table and "Common overrides: `trainer.epochs=3`." in table
    assert "| q=0.1 | done | 0.1 | 3 | 0.9500 | 0.8000 | val/approx_acc | 2 | 0.8500 |" in table


def test_summary_metrics_can_be_chosen(tmp_path):
    final = {"epoch": 1, "test/top1": 0.5, "val/approx_acc": 0.4}
    write_job(tmp_path, "seed=0", 0, ["seed=0"], final, final)
    write_job(tmp_path, "seed=1", 1, ["seed=1"], final, final)
    rows = summarize_sweep(tmp_path, metrics=["val/approx_acc"])
    assert "test/top1" not in rows[0] and rows[0]["val/approx_acc"] == 0.4


def test_pico_summarize_prints_the_table_and_refuses_a_folder_without_jobs(tmp_path, capsys):
    final = {"epoch": 1, "test/top1": 0.5}
    write_job(tmp_path / "sweep", "seed=0", 0, ["seed=0"], final, None)
    main([str(tmp_path / "sweep")])
    printed = capsys.readouterr().out
    assert "| job | status | epochs | test/top1 |" in printed
    assert f"written {tmp_path / 'sweep' / SUMMARY_MD} and {SUMMARY_CSV} (1 job)" in printed
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no sweep jobs under"):
        main([str(tmp_path / "empty")])
