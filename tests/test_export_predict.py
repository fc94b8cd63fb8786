"""pico-export (state dict, TorchScript, ONNX) and pico-predict on tiny digits and .mat runs:
the exported models take raw inputs and give the trained method's outputs."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from conftest import write_pll_mat
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

from pico.cli import run_export, run_training
from pico.data.bundle import stratified_split
from pico.engine.checkpoint import CheckpointError, load_checkpoint
from pico.experiment import Experiment, build_experiment
from pico.export import (
    EXPORT_FORMAT,
    STATE_KEYS,
    export_model,
    load_exported,
    load_torchscript,
    onnx_available,
)
from pico.models.transfer import backbone_state
from pico.pll.candidate_io import load_pll_mat
from pico.predict import load_predictor, read_inputs, run_prediction

BIN = Path(sys.executable).parent
FAST = [
    "trainer.epochs=1",
    "trainer.progress=false",
    "trainer.threads=1",
    "trainer.embedding_figure=false",
    "trainer.batch_size=64",
]


def _train(run_dir: Path, *overrides: str) -> Path:
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=[*FAST, f"run_dir={run_dir}", *overrides])
    run_training(cfg)
    return run_dir / "checkpoints" / "last.pt"


def _rebuilt(checkpoint: Path) -> Experiment:
    """The run of ``checkpoint`` with its trained weights, in eval mode, on the CPU."""
    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["config"])
    cfg.trainer.device = "cpu"
    exp = build_experiment(cfg)
    exp.method.load_state_dict(state["method"])
    exp.method.eval()
    return exp


def _expected_logits(exp: Experiment, stored_inputs: torch.Tensor) -> torch.Tensor:
    """The method's logits on the test augmentation of inputs as the loader stores them."""
    with torch.no_grad():
        return exp.method.logits(exp.augmenters["test"](stored_inputs))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A one-epoch PiCO run on digits, exported with every format there is."""
    root = tmp_path_factory.mktemp("digits")
    checkpoint = _train(root / "run", "model.widths=[8,16,16]", "method.queue_size=128")
    run_export(checkpoint, root / "model.pt")
    return checkpoint, root


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    """A one-epoch PRODEN run on a .mat file whose features are far from z-scored, one of
    them a 0/1 column (kept as it is by standardize=auto)."""
    root = tmp_path_factory.mktemp("tabular")
    path = write_pll_mat(root / "toy.mat", n=150, d=5, c=3)
    mat = scipy.io.loadmat(path)
    flags = (np.arange(len(mat["data"])) % 4 == 0).astype(float)[:, None]
    mat["data"] = np.hstack([mat["data"], flags])
    scipy.io.savemat(path, {k: v for k, v in mat.items() if not k.startswith("__")})
    checkpoint = _train(
        root / "run", "data=mat", f"data.path={path}", "model.hidden=[16]", "method=proden"
    )
    run_export(checkpoint, root / "model.pt")
    return checkpoint, root, path


def test_torchscript_on_raw_images_matches_the_method(digits):
    checkpoint, root = digits
    exp = _rebuilt(checkpoint)
    raw = exp.bundle.test.inputs[:7]
    assert raw.dtype == torch.uint8 and raw.shape[1:] == (1, 8, 8)
    expected = _expected_logits(exp, raw)
    module = load_torchscript(root / "model.ts")
    with torch.no_grad():
        assert torch.allclose(module(raw), expected, atol=1e-5, rtol=0)
        assert torch.allclose(module(raw.float() / 255), expected, atol=1e-5, rtol=0)
        assert torch.allclose(module(raw[0]), expected[:1], atol=1e-5, rtol=0)  # one image
    assert list(module.class_names) == exp.bundle.class_names
    assert module.kind == "image" and list(module.input_shape) == [1, 8, 8]
    assert module.output == "logits"
    with pytest.raises(Exception, match=r"expected inputs of shape \(B, 1, 8, 8\)"):
        module(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_state_dict_export_reloads_and_hands_over_the_backbone(digits):
    checkpoint, root = digits
    exp = _rebuilt(checkpoint)
    state = torch.load(root / "model.pt", weights_only=True)
    assert state["format"] == EXPORT_FORMAT and set(state) == set(STATE_KEYS)
    assert state["output"] == "logits" and state["class_names"] == exp.bundle.class_names
    assert state["mean"] == pytest.approx(list(exp.bundle.mean))
    raw = exp.bundle.test.inputs[:5]
    with torch.no_grad():
        got = load_exported(root / "model.pt")(raw)
    assert torch.allclose(got, _expected_logits(exp, raw), atol=1e-5, rtol=0)
    # model.init_from reads the backbone of a full export as of a backbone-only one
    backbone = exp.method.backbone.state_dict()
    for key, value in backbone_state(root / "model.pt").items():
        assert torch.equal(value, backbone[key]), key
    only = torch.load(run_export(checkpoint, root / "backbone.pt", parts="backbone"))
    assert only.keys() == backbone.keys()


def test_onnx_is_written_or_skipped_with_the_install_line(digits, tmp_path, capsys):
    checkpoint, _ = digits
    if onnx_available():  # pip install 'pico-pll[onnx]'
        from onnx.reference import ReferenceEvaluator

        result = export_model(checkpoint, tmp_path / "m.pt", formats="onnx")
        exp = _rebuilt(checkpoint)
        raw = exp.bundle.test.inputs[:5]  # uint8, another batch size than the export's
        (got,) = ReferenceEvaluator(str(result.files["onnx"])).run(None, {"input": raw.numpy()})
        expected = _expected_logits(exp, raw)
        assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5, rtol=0)
        return
    result = export_model(checkpoint, tmp_path / "m.pt", formats="state")
    assert set(result.files) == {"state"} and not result.skipped
    run_export(checkpoint, tmp_path / "all.pt")
    printed = capsys.readouterr().out
    skipped = "skipped onnx: onnx/onnxscript are not installed; pip install 'pico-pll[onnx]'"
    assert skipped in printed
    assert not (tmp_path / "all.onnx").exists()
    with pytest.raises(ValueError, match=r"onnx.*not installed; pip install"):
        export_model(checkpoint, tmp_path / "m.pt", formats="onnx")
    with pytest.raises(ValueError, match=r"unknown formats \['tflite'\]"):
        export_model(checkpoint, tmp_path / "m.pt", formats="state,tflite")


def _write_pngs(folder: Path, images: torch.Tensor) -> list[str]:
    names = []
    for i, image in enumerate(images):
        name = f"sub/{i}.png" if i % 2 else f"{i}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / name)
        names.append(name)
    return sorted(names)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_pico_predict_on_a_folder_of_pngs(digits, tmp_path):
    checkpoint, root = digits
    exp = _rebuilt(checkpoint)
    raw = exp.bundle.test.inputs[:5]
    names = _write_pngs(tmp_path / "images", raw)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [BIN / "pico-predict", f"checkpoint={root / 'model.ts'}", "input=images"]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "written predictions.csv (5 predictions)" in out.stdout
    rows = _read_csv(tmp_path / "predictions.csv")
    classes = exp.bundle.class_names
    assert list(rows[0]) == ["file", "prediction", *(f"prob_{c}" for c in classes)]
    assert [r["file"] for r in rows] == names
    probs = torch.tensor([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-6)
    order = [int(Path(n).stem) for n in names]
    expected = _expected_logits(exp, raw[order]).softmax(1)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert [r["prediction"] for r in rows] == [classes[i] for i in expected.argmax(1).tolist()]
    # the training checkpoint itself predicts the same, and one image works
    run_prediction(checkpoint, tmp_path / "images" / names[0], tmp_path / "one.csv")
    (one,) = _read_csv(tmp_path / "one.csv")
    assert one["file"] == Path(names[0]).name and one["prediction"] == rows[0]["prediction"]


def test_tabular_round_trip_on_raw_rows(tabular, tmp_path):
    checkpoint, root, mat = tabular
    exp = _rebuilt(checkpoint)
    features, targets, _ = load_pll_mat(mat)
    _, test_idx = stratified_split(targets, 0.2, 0)
    raw = features[test_idx].double()
    assert not torch.allclose(raw.float(), exp.bundle.test.inputs)  # the loader z-scored them
    assert torch.equal(raw[:, 5].float(), exp.bundle.test.inputs[:, 5])  # but the 0/1 column
    expected = _expected_logits(exp, exp.bundle.test.inputs)
    module = load_torchscript(root / "model.ts")
    with torch.no_grad():
        assert torch.allclose(module(raw), expected, atol=1e-5, rtol=0)
        assert torch.allclose(module(raw.float()), expected, atol=1e-4, rtol=0)
        assert torch.allclose(load_exported(root / "model.pt")(raw), expected, atol=1e-5, rtol=0)
    assert module.kind == "tabular" and list(module.input_shape) == [6]
    np.save(tmp_path / "rows.npy", raw.numpy())
    header = ",".join(f"f{i}" for i in range(6))
    np.savetxt(tmp_path / "rows.csv", raw.numpy(), delimiter=",", header=header, comments="")
    for name in ("rows.npy", "rows.csv"):
        out = run_prediction(root / "model.ts", tmp_path / name, tmp_path / f"{name}.out.csv")
        rows = _read_csv(out)
        assert [r["row"] for r in rows] == [str(i) for i in range(len(raw))]
        probs = torch.tensor(
            [[float(v) for k, v in r.items() if k.startswith("prob_")] for r in rows]
        )
        assert torch.allclose(probs, expected.softmax(1), atol=1e-6)


def test_wrong_inputs_are_refused_with_the_fix(digits, tabular, tmp_path):
    _, root = digits
    images = load_predictor(root / "model.ts")
    rows = load_predictor(tabular[1] / "model.pt")
    with pytest.raises(FileNotFoundError, match=r"input=.*missing does not exist; pass an image"):
        read_inputs(tmp_path / "missing", images)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds no images \(searched recursively"):
        read_inputs(tmp_path / "empty", images)
    np.save(tmp_path / "rows.npy", np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"is not an image .*takes images, not tabular rows"):
        read_inputs(tmp_path / "rows.npy", images)
    with pytest.raises(ValueError, match=r"shape \(2, 5\) .* takes rows of 6 raw features"):
        read_inputs(tmp_path / "rows.npy", rows)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"takes tabular rows, not images"):
        read_inputs(tmp_path / "x.png", rows)
    (tmp_path / "bad.csv").write_text("1,2,3,4,5,6\n1,2,x,4,5,6\n")
    with pytest.raises(ValueError, match=r"not a number"):
        read_inputs(tmp_path / "bad.csv", rows)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"neither a pico-train checkpoint nor"):
        load_predictor(tmp_path / "plain.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [BIN / "pico-predict", f"checkpoint={root / 'model.ts'}", "input=nowhere"]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "pico: error: input=nowhere does not exist; pass an image folder or image file"
    )


def test_self_supervised_runs_export_features(tmp_path):
    checkpoint = _train(
        tmp_path / "run", "method=simclr", "model.widths=[8,16,16]", "method.proj_hidden=32"
    )
    exp = _rebuilt(checkpoint)
    result = export_model(checkpoint, tmp_path / "ssl.pt", formats="state,torchscript")
    assert result.output == "features"
    raw = exp.bundle.test.inputs[:4]
    with torch.no_grad():
        expected = exp.method.features(exp.augmenters["test"](raw))
        got = load_torchscript(result.files["torchscript"])(raw)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"no classifier head .* gives features, not classes"):
        run_prediction(result.files["torchscript"], tmp_path / "x.png", tmp_path / "p.csv")


def test_pico_predict_help():
    out = subprocess.run(
        [BIN / "pico-predict", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Usage: pico-predict checkpoint=PATH input=FOLDER_OR_FILE [out=predictions.csv]" in (
        out.stdout
    )
    assert "powered by Hydra" not in out.stdout


def test_pico_export_command_line_formats_and_parts(digits, tmp_path):
    checkpoint, _ = digits
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [BIN / "pico-export", f"checkpoint={checkpoint}", "out=m.pt", "formats=[torchscript]"]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "written m.ts (torchscript)" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ts"]
    args = [BIN / "pico-export", f"checkpoint={checkpoint}", "out=b.pt", "parts=everything"]
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "pico: error: parts=everything is unknown; choose one of all, backbone" in out.stderr
