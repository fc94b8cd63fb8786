"""What a run prints: a short header (the whole config with print_config=true), no
Hugging Face progress bars for local files, and a log line before the end-of-run t-SNE."""

import logging

import pytest

from pico.cli import run_training
from pico.data.hf import load_hf

datasets = pytest.importorskip("datasets")


def test_local_hf_files_load_without_progress_bars(tmp_path, capfd, monkeypatch):
    from test_data_hf import write_parquet

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    write_parquet(tmp_path / "train.parquet", 6, seed=0)
    write_parquet(tmp_path / "test.parquet", 3, seed=1)
    files = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    capfd.readouterr()
    load_hf("parquet", image_column="img", data_files=files, cache_dir=str(tmp_path / "c"))
    printed = capfd.readouterr()
    assert "Generating train split" not in printed.err + printed.out
    assert not datasets.are_progress_bars_disabled()  # the setting is restored


def test_a_run_prints_a_short_header_and_announces_the_t_sne(make_config, capsys, caplog):
    caplog.set_level(logging.INFO, logger="pico.engine.trainer")
    run_training(make_config("method=proden", "trainer.epochs=1", "trainer.threads=1"))
    printed = capsys.readouterr().out
    header = printed.split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in header] == [
        "method", "data", "candidates", "model", "training", "device", "run_dir"
    ]  # fmt: skip
    assert header[0] == "method      PRODEN"
    assert header[2].startswith("candidates  name=uniform q=0.3: mean set size ")
    assert "_target_" not in printed  # not the whole config
    assert "t-SNE of the test features for embedding.png" in caplog.text


def test_print_config_prints_the_whole_config(make_config, capsys, caplog):
    caplog.set_level(logging.INFO, logger="pico.engine.trainer")
    overrides = ["trainer.epochs=1", "trainer.threads=1", "trainer.embedding_figure=false"]
    run_training(make_config("method=proden", *overrides, "print_config=true"))
    printed = capsys.readouterr().out
    assert "_target_: pico.pll.proden.PRODEN" in printed and "print_config: true" in printed
    assert "method      PRODEN" not in printed
    assert "t-SNE" not in caplog.text


def test_epoch_line_is_short_and_names_what_matters() -> None:
    from pico.engine.trainer import epoch_line

    record = {
        "epoch": 3, "train/loss": 1.25, "train/cls": 0.5, "train/disamb_acc": 0.9,
        "val/top1": 0.8, "val/top5": 0.99, "val/approx_acc": 0.75, "val/covering_rate": 0.9,
        "test/top1": 0.7, "test/top5": 0.98, "test/proto_acc": 0.6,
    }  # fmt: skip
    line = epoch_line(record, 10, "val/approx_acc", improved=True)
    assert line == (
        "epoch 3/10: train/loss=1.2500 train/cls=0.5000 val/approx_acc=0.7500 "
        "test/top1=0.7000 train/disamb_acc=0.9000 (best)"
    )
    assert not epoch_line(record, 10, "val/approx_acc", improved=False).endswith("(best)")
    # an epoch without evaluation shows its losses alone
    assert epoch_line({"epoch": 1, "train/loss": 2.0}, 10, "val/approx_acc", False) == (
        "epoch 1/10: train/loss=2.0000"
    )
