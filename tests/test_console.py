"""What a run prints: a short header (the whole config with print_config=true), no
Hugging Face progress bars for local files, and a log line before the end-of-run t-SNE."""

import pytest

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
