"""Classify new inputs with a trained or exported model and write the results as CSV.

:func:`load_predictor` takes a pico-train checkpoint, a pico-export state dict or a
pico-export TorchScript file; :func:`read_inputs` reads an image folder (recursively), one
image, or a ``.csv`` / ``.npy`` of raw tabular rows; :func:`predict_proba` gives the class
probabilities; :func:`run_prediction` does all three and writes the CSV
(``pico-predict``).
"""

import csv
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pico.data.folder import IMAGE_SUFFIXES, decode_images
from pico.engine.checkpoint import CheckpointError, load_checkpoint
from pico.export import (
    EXPORT_FORMAT,
    Predictor,
    export_state,
    load_exported,
    load_torchscript,
)

TABULAR_SUFFIXES = (".csv", ".npy")


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``), which holds code."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def load_predictor(
    checkpoint: str | Path, data: Mapping[str, Any] | None = None
) -> Predictor | torch.jit.ScriptModule:
    """The model of ``checkpoint`` in eval mode, taking raw inputs: a pico-train checkpoint
    (rebuilt with its data config, which ``data`` changes as for ``pico-eval``), a
    pico-export state dict, or a pico-export TorchScript file. It has the attributes
    ``class_names``, ``kind``, ``input_shape``, ``output``, ``image_size``, ``keep_aspect``."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint={path} does not exist; pass run_dir/checkpoints/best.pt or a "
            "pico-export file (.pt state dict or .ts TorchScript)"
        )
    if is_torchscript(path):
        module = load_torchscript(path)
        if not hasattr(module, "class_names") or not hasattr(module, "input_shape"):
            raise CheckpointError(
                f"{path} is TorchScript but not a pico-export model (no class_names / "
                "input_shape); export one with pico-export checkpoint=PATH out=FILE"
            )
        return module.eval()
    state = load_checkpoint(path)
    if state.get("format") == EXPORT_FORMAT:
        return load_exported(state)
    if isinstance(state.get("config"), str) and isinstance(state.get("method"), dict):
        return load_exported(export_state(path, data))
    raise CheckpointError(
        f"{path} is neither a pico-train checkpoint nor a pico-export model (a backbone "
        "state dict from parts=backbone has no classifier or preprocessing); pass "
        "run_dir/checkpoints/best.pt, or export with pico-export checkpoint=PATH out=FILE"
    )


def _image_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def read_inputs(
    source: str | Path, model: Predictor | torch.jit.ScriptModule
) -> tuple[list[str], Tensor]:
    """The inputs of ``source`` for ``model`` (see :func:`load_predictor`), and a name for
    each: file paths relative to the folder (images), or row numbers from 0 (tabular)."""
    path = Path(source)
    kind, shape = str(model.kind), [int(s) for s in model.input_shape]
    if not path.exists():
        what = "an image folder or image file" if kind == "image" else "a .csv or .npy of rows"
        raise FileNotFoundError(f"input={path} does not exist; pass {what}")
    if kind == "image":
        return _read_images(path, shape, int(model.image_size), bool(model.keep_aspect))
    return _read_rows(path, shape[0])


def _read_images(
    path: Path, shape: list[int], image_size: int, keep_aspect: bool
) -> tuple[list[str], Tensor]:
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise ValueError(
                f"input={path} holds no images (searched recursively for {suffixes}); "
                "pass a folder of images or one image file"
            )
        names = [str(f.relative_to(path)) for f in files]
    else:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            hint = (
                "; this model takes images, not tabular rows"
                if path.suffix.lower() in TABULAR_SUFFIXES
                else ""
            )
            raise ValueError(
                f"input={path} is not an image (suffix {path.suffix or 'none'}; expected one "
                f"of {suffixes}){hint}; pass an image file or a folder of images"
            )
        files, names = [path], [path.name]
    channels, height, width = shape
    size = height if height == width else None
    size = size or image_size or None
    images = decode_images(files, channels, size, keep_aspect=keep_aspect and size is not None)
    if tuple(images.shape[2:]) != (height, width):
        raise ValueError(
            f"the images of input={path} are {tuple(images.shape[2:])} pixels but the model "
            f"takes {height} x {width}; resize them to {width} x {height}"
        )
    return names, images


def _read_rows(path: Path, width: int) -> tuple[list[str], Tensor]:
    if path.is_dir() or path.suffix.lower() not in TABULAR_SUFFIXES:
        hint = (
            "; this model takes tabular rows, not images"
            if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES
            else ""
        )
        raise ValueError(
            f"input={path} is not a .csv or .npy file of feature rows{hint}; pass a .csv "
            f"(one row of {width} numbers per example) or a .npy array (N, {width})"
        )
    if path.suffix.lower() == ".npy":
        try:
            rows = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"input={path} is not a numeric .npy array ({err})") from err
    else:
        rows = _read_csv_rows(path)
    rows = np.asarray(rows)
    if rows.ndim == 1 and rows.shape[0] == width:
        rows = rows[None]
    if rows.ndim != 2 or rows.shape[1] != width or not np.issubdtype(rows.dtype, np.number):
        raise ValueError(
            f"input={path} holds an array of shape {rows.shape} ({rows.dtype}) but the model "
            f"takes rows of {width} raw features; give an (N, {width}) array of numbers"
        )
    if not len(rows):
        raise ValueError(f"input={path} holds no rows; give at least one row of {width} numbers")
    return [str(i) for i in range(len(rows))], torch.from_numpy(rows.astype(np.float64))


def _read_csv_rows(path: Path) -> np.ndarray:
    """The numbers of a CSV file, skipping one header line of non-numbers."""
    with path.open(newline="") as f:
        lines = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    if lines:
        try:
            [float(cell) for cell in lines[0]]
        except ValueError:
            lines = lines[1:]  # a header
    try:
        values = [[float(cell) for cell in row] for row in lines]
    except ValueError as err:
        raise ValueError(
            f"input={path} has a cell that is not a number ({err}); give numbers only, "
            "with at most one header line"
        ) from err
    lengths = {len(row) for row in values}
    if len(lengths) > 1:
        raise ValueError(
            f"input={path} has rows of different lengths ({sorted(lengths)}); give every row "
            "the same number of features"
        )
    return np.array(values, dtype=np.float64).reshape(len(values), -1)


@torch.no_grad()
def predict_proba(
    model: Predictor | torch.jit.ScriptModule, inputs: Tensor, batch_size: int = 256
) -> Tensor:
    """Softmax class probabilities (N, C) of ``model`` on raw ``inputs``, in batches."""
    if str(model.output) != "logits":
        raise ValueError(
            "this model has no classifier head (a self-supervised method): it gives features, "
            "not classes; predict with a classifier method's run (e.g. method=pico), or "
            "evaluate the features with pico-eval parts=knn or parts=linear"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    if inputs.is_floating_point() and str(model.kind) == "tabular":
        inputs = inputs.double()
    outputs = [model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return torch.cat(outputs).float().softmax(dim=1)


def write_predictions(
    path: str | Path, names: list[str], column: str, class_names: list[str], probs: Tensor
) -> Path:
    """A CSV with ``column`` (file or row), ``prediction`` (class name) and one
    ``prob_<class>`` column per class."""
    path = Path(path)
    best = probs.argmax(dim=1).tolist()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([column, "prediction", *(f"prob_{c}" for c in class_names)])
        for name, index, row in zip(names, best, probs.tolist(), strict=True):
            writer.writerow([name, class_names[index], *(f"{p:.8g}" for p in row)])
    return path


def run_prediction(
    checkpoint: str | Path,
    source: str | Path,
    out: str | Path = "predictions.csv",
    batch_size: int = 256,
    data: Mapping[str, Any] | None = None,
) -> Path:
    """Classify ``source`` with ``checkpoint`` and write the CSV ``out``; returns ``out``."""
    out = Path(out)
    if not out.parent.exists():
        raise FileNotFoundError(f"out={out}: folder {out.parent} does not exist; create it first")
    model = load_predictor(checkpoint, data)
    names, inputs = read_inputs(source, model)
    probs = predict_proba(model, inputs, batch_size)
    class_names = [str(c) for c in model.class_names]
    column = "file" if str(model.kind) == "image" else "row"
    existed = out.exists()
    write_predictions(out, names, column, class_names, probs)
    print(f"{'replaced' if existed else 'written'} {out} ({len(names)} predictions)")
    return out
