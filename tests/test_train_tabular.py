"""A real-world-format .mat partial-label file trains end to end with the MLP encoder."""

from conftest import write_pll_mat

from pico.cli import run_training


def test_mat_file_trains_pico_with_mlp(make_config, tmp_path):
    path = tmp_path / "toy.mat"
    write_pll_mat(path, n=600, d=20, c=5, sparse=True)
    cfg = make_config(
        "data=mat",
        f"data.path={path}",
        "model.hidden=[64,64]",
        "trainer.epochs=15",
        "method.warmup_min_steps=40",
        "method.proj_dim=32",
        tiny_convnet=False,
    )
    assert cfg.model._target_ == "pico.models.MLPEncoder"
    result = run_training(cfg)
    final = result["final"]
    assert final["test/top1"] > 0.9
    assert final["train/disamb_acc"] > 0.9
    assert "val/approx_acc" in final and "test/proto_acc" in final
