"""A real-world-format .mat partial-label file trains end to end with the MLP encoder."""

import numpy as np
import scipy.io
import scipy.sparse

from pico.cli import run_training


def write_pll_mat(path, n=600, d=20, c=5, q=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(c, d))
    labels = rng.integers(0, c, size=n)
    data = centers[labels] + rng.normal(size=(n, d))
    target = np.zeros((c, n))
    target[labels, np.arange(n)] = 1
    partial = (rng.random((c, n)) < q).astype(float)
    partial[labels, np.arange(n)] = 1
    scipy.io.savemat(
        path, {"data": data, "target": target, "partial_target": scipy.sparse.csc_matrix(partial)}
    )


def test_mat_file_trains_pico_with_mlp(make_config, tmp_path):
    path = tmp_path / "toy.mat"
    write_pll_mat(path)
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
