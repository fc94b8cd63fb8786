import pytest
from hydra import compose, initialize_config_module

TINY = ["trainer.epochs=2", "trainer.progress=false", "trainer.batch_size=64"]
TINY_CONVNET = ["model.widths=[8,16,16]"]


@pytest.fixture
def make_config(tmp_path):
    """Compose the packaged ``train`` config with small-run overrides."""

    def make(*overrides: str, run_dir: str = "run", tiny_convnet: bool = True):
        base = TINY + (TINY_CONVNET if tiny_convnet else [])
        with initialize_config_module("pico.configs", version_base="1.3"):
            return compose("train", overrides=[*base, f"run_dir={tmp_path / run_dir}", *overrides])

    return make
