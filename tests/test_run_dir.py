"""The run outputs that ``overwrite=true`` clears (pico.engine.run_dir.RUN_OUTPUTS)."""

from pico.cli import run_training
from pico.engine.run_dir import RUN_OUTPUTS, clear_outputs

RUN = ["method=proden", "trainer.epochs=1", "trainer.threads=1"]


def test_every_output_of_a_run_is_a_run_output(make_config, tmp_path):
    run_training(make_config(*RUN, "trainer.loggers=[tensorboard,csv]"))
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"metrics.csv", "metrics.json", "embedding.png", "checkpoints"} <= written
    assert written - {"config.yaml"} <= set(RUN_OUTPUTS)


def test_overwrite_removes_the_earlier_run_csv_metrics(make_config, tmp_path):
    run_training(make_config(*RUN, "trainer.loggers=[csv]", "trainer.embedding_figure=false"))
    assert (tmp_path / "run" / "metrics.csv").is_file()
    run_training(make_config(*RUN, "overwrite=true", "trainer.embedding_figure=false"))
    assert not (tmp_path / "run" / "metrics.csv").exists()  # not this run's: it logs no CSV


def test_clear_outputs_removes_files_and_folders_alone(tmp_path):
    for name in RUN_OUTPUTS:
        if "." in name:
            (tmp_path / name).write_text("x")
        else:
            (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    clear_outputs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
