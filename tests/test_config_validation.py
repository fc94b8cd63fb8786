"""The config is checked before data loads: each bad value is named with its key."""

import pytest
import torch

from pico.cli import run_training
from pico.engine.validate import validate_train_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=abc", "trainer.epochs='abc' is not valid: it must be a whole number >= 1"),
        ("trainer.epochs=0", "trainer.epochs=0 is not valid"),
        ("trainer.log_every=0", "trainer.log_every=0 is not valid: it must be a whole number"),
        ("trainer.batch_size=32.5", "trainer.batch_size=32.5 is not valid"),
        ("trainer.optimizer.lr=0", "trainer.optimizer.lr=0 is not valid: it must be a number > 0"),
        ("trainer.optimizer.lr=nan", "trainer.optimizer.lr=nan is not valid"),
        ("trainer.nonfinite=skipp", "trainer.nonfinite='skipp' is not valid: it must be stop or"),
        ("trainer.amp=maybe", "trainer.amp='maybe' is not valid: it must be true or false"),
        ("data.val_fraction=1.5", "data.val_fraction=1.5 is not valid: it must be a share in"),
        ("data.source.test_fraction=-0.1", "data.source.test_fraction=-0.1 is not valid"),
        ("eval.select_metric=val/aprox_acc", "eval.select_metric=val/aprox_acc is not a metric"),
        ("eval.select_mode=best", "eval.select_mode='best' is not valid: it must be max or min"),
        ("trainer.device=tpu", "trainer.device=tpu is not a device"),
        ("allow_changes=seed", "allow_changes='seed' is not valid: it must be a list"),
    ],
)
def test_bad_values_are_named_with_their_key(make_config, override, message):
    with pytest.raises(ValueError, match="is not") as err:
        validate_train_config(make_config(override))
    assert message in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_is_refused_before_data_loads(make_config, tmp_path):
    with pytest.raises(ValueError, match=r"trainer\.device=cuda, but torch sees no CUDA device"):
        run_training(make_config("trainer.device=cuda"))
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_the_shipped_defaults_and_every_method_pass(make_config):
    for method in ("pico", "pico_plus", "moco", "proden", "supervised", "instdisc"):
        validate_train_config(make_config(f"method={method}"))
    validate_train_config(make_config("eval.select_metric=train/loss"))
