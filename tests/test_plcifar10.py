"""PLCIFAR10: the restricted unpickler, the aggregate and vaguest rules against a naive
reference, the noise report, and a run on a fake CIFAR-10 (torchvision files and an
image folder) with a candidate file the tests write themselves."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image

from pico.cli import run_training
from pico.data.plcifar10 import (
    CIFAR10_CLASSES,
    candidate_matrix,
    load_plcifar10,
    noise_rate,
    read_annotations,
)
from pico.pll.validation import CandidateError

PER_BATCH = 20  # 5 batches: 100 training images, 10 per class
NUM_TRAIN = 5 * PER_BATCH


def write_cifar10(root: Path, n_test: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's CIFAR-10 python files with random 32x32 images; labels ``row % 10``.
    Returns the training images (N, 3, 32, 32) and labels."""
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    images = rng.integers(0, 256, (NUM_TRAIN + n_test, 3072), dtype=np.uint8)
    labels = np.arange(NUM_TRAIN + n_test) % 10
    for batch in range(6):
        rows = (
            slice(batch * PER_BATCH, (batch + 1) * PER_BATCH)
            if batch < 5
            else slice(NUM_TRAIN, None)
        )
        name = f"data_batch_{batch + 1}" if batch < 5 else "test_batch"
        with open(base / name, "wb") as handle:
            pickle.dump({"data": images[rows], "labels": labels[rows].tolist()}, handle)
    with open(base / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": CIFAR10_CLASSES}, handle)
    return images[:NUM_TRAIN].reshape(-1, 3, 32, 32), labels[:NUM_TRAIN]


def make_annotations(num_rows: int = NUM_TRAIN, seed: int = 0) -> dict[int, list[list[int]]]:
    """One to four annotators per image, each naming 1-3 labels (the true one, ``i % 10``,
    with probability 0.8), plus hand-made rows for the tie rule and duplicate labels."""
    rng = np.random.default_rng(seed)
    out: dict[int, list[list[int]]] = {}
    for i in range(num_rows):
        sets = []
        for _ in range(rng.integers(1, 5)):
            labels = rng.choice(10, rng.integers(1, 4), replace=False).tolist()
            if rng.random() < 0.8:
                labels = [i % 10, *labels]
            sets.append([int(y) for y in labels])
        out[i] = sets
    out[0] = [[1, 2], [3, 4], [5]]  # tie: vaguest is the first of the largest
    out[1] = [[2, 2, 2], [3, 4]]  # sizes count distinct labels
    return out


def write_pickle(path: Path, obj: object) -> Path:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)
    return path


def reference(annotations: dict, num_rows: int, variant: str) -> np.ndarray:
    """The two PLENCH variants written out naively."""
    out = np.zeros((num_rows, 10), dtype=bool)
    for key, sets in annotations.items():
        if variant == "aggregate":
            for labels in sets:
                for y in labels:
                    out[key, y] = True
        else:
            chosen, largest = [], 0
            for labels in sets:
                if len(set(labels)) > largest:
                    chosen, largest = labels, len(set(labels))
            for y in chosen:
                out[key, y] = True
    return out


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    """A fake torchvision CIFAR-10 under tmp_path/cifar and a candidate file for it."""
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *args, **kwargs: True)  # fake md5
    images, labels = write_cifar10(tmp_path / "cifar")
    annotations = make_annotations()
    path = write_pickle(tmp_path / "plcifar10.pkl", annotations)
    return tmp_path / "cifar", path, annotations, images, labels


@pytest.mark.parametrize("variant", ["aggregate", "vaguest"])
def test_variants_match_a_naive_reference(tmp_path, variant):
    annotations = make_annotations()
    read = read_annotations(write_pickle(tmp_path / "p.pkl", annotations))
    assert read == annotations
    cand, empty = candidate_matrix(read, variant, range(NUM_TRAIN))
    np.testing.assert_array_equal(cand.numpy(), reference(annotations, NUM_TRAIN, variant))
    assert len(empty) == 0
    first = {"aggregate": [1, 2, 3, 4, 5], "vaguest": [1, 2]}[variant]
    second = {"aggregate": [2, 3, 4], "vaguest": [3, 4]}[variant]
    assert cand[0].nonzero().flatten().tolist() == first
    assert cand[1].nonzero().flatten().tolist() == second


class RunsAShellCommand:
    """Unpickling this would run ``touch MARKER`` through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    evil = write_pickle(tmp_path / "evil.pkl", {0: [[1]], 1: RunsAShellCommand(marker)})
    with pytest.raises(CandidateError, match=r"refused to load .*evil\.pkl: it refers to .*system"):
        read_annotations(evil)
    assert not marker.exists()
    numpy_ints = write_pickle(tmp_path / "np.pkl", {0: [[np.int64(3)]]})
    with pytest.raises(CandidateError, match=r"refers to numpy.*only dicts, lists and ints"):
        read_annotations(numpy_ints)


@pytest.mark.parametrize(
    ("obj", "found"),
    [
        ([[1]], "holds a list, not a dict"),
        ({"0": [[1]]}, r"entry '0': keys must be train indices"),
        ({0: ([1],)}, "must be a list of per-annotator lists"),
        ({0: [[1, 10]]}, r"holds \[1, 10\]; labels must be ints in \[0, 10\)"),
        ({0: [[True]]}, "labels must be ints"),
    ],
)
def test_other_layouts_are_refused_naming_the_file(tmp_path, obj, found):
    path = write_pickle(tmp_path / "bad.pkl", obj)
    with pytest.raises(CandidateError, match=f"bad.pkl.*{found}"):
        read_annotations(path)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(CandidateError, match=r"junk\.pkl is not a readable pickle"):
        read_annotations(tmp_path / "junk.pkl")
    with pytest.raises(ValueError, match=r"candidate file not found.*data\.candidates_file"):
        read_annotations(tmp_path / "none.pkl")


def test_loader_attaches_sets_and_reports_the_noise_rate(cifar, caplog):
    root, path, annotations, images, labels = cifar
    expected = reference(annotations, NUM_TRAIN, "vaguest")
    rate = float(np.mean(~expected[np.arange(NUM_TRAIN), labels]))
    assert rate > 0  # the fixture has noisy rows
    with caplog.at_level("INFO"), pytest.warns(UserWarning, match="method=pico_plus"):
        data = load_plcifar10(str(path), "vaguest", str(root))
    np.testing.assert_array_equal(data.train.inputs.numpy(), images)
    np.testing.assert_array_equal(data.train.targets.numpy(), labels)
    np.testing.assert_array_equal(data.train.candidates.numpy(), expected)
    assert data.test.candidates is None and len(data.test) == 10
    assert noise_rate(data.train.candidates, data.train.targets) == pytest.approx(rate)
    assert f"noise rate {100 * rate:.2f} %" in caplog.text


def test_empty_sets_and_unknown_indices(cifar, tmp_path):
    root, _, annotations, _, _ = cifar
    annotations = {**annotations, 7: [[], []]}
    del annotations[9]
    path = write_pickle(tmp_path / "holes.pkl", annotations)
    with pytest.raises(CandidateError, match=r"2 train indices \(first: 7, 9\).*drop_empty=true"):
        load_plcifar10(str(path), "aggregate", str(root))
    with pytest.warns(UserWarning):
        data = load_plcifar10(str(path), "aggregate", str(root), drop_empty=True)
    assert len(data.train) == NUM_TRAIN - 2 and data.train.candidates.any(1).all()
    beyond = write_pickle(tmp_path / "beyond.pkl", {**annotations, 7: [[1]], 9: [[1]], 500: [[1]]})
    with pytest.raises(CandidateError, match=r"train indices \(first: 500\) that have no image"):
        load_plcifar10(str(beyond), "aggregate", str(root))
    with pytest.raises(ValueError, match="choose one of"):
        load_plcifar10(str(path), "union", str(root))


def by_content(images: torch.Tensor) -> np.ndarray:
    """Row order that sorts ``images`` by their bytes."""
    return np.argsort([bytes(row) for row in images.flatten(1).numpy()])


def test_image_folder_named_by_index_gives_the_same_data(cifar, tmp_path):
    root, path, _, images, labels = cifar
    folder = tmp_path / "folder"
    order = np.random.default_rng(1).permutation(NUM_TRAIN)  # file order differs from index
    for split, rows in (("train", order), ("test", range(10))):
        for i in rows:
            target = folder / split / CIFAR10_CLASSES[labels[i]]
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i].transpose(1, 2, 0)).save(target / f"{i:05d}.png")
    with pytest.warns(UserWarning):
        ref = load_plcifar10(str(path), "aggregate", str(root))
        got = load_plcifar10(str(path), "aggregate", str(folder), images="folder", num_threads=1)
    # rows come in folder order: sort both by the images' bytes to compare
    ref_rows, got_rows = by_content(ref.train.inputs), by_content(got.train.inputs)
    assert torch.equal(ref.train.inputs[ref_rows], got.train.inputs[got_rows])
    assert torch.equal(ref.train.candidates[ref_rows], got.train.candidates[got_rows])
    assert torch.equal(ref.train.targets[ref_rows], got.train.targets[got_rows])
    (folder / "train" / "cat" / "odd.png").write_bytes(
        (folder / "train" / "cat" / "00003.png").read_bytes()
    )
    with pytest.raises(ValueError, match=r"named by its CIFAR-10 train index.*odd\.png"):
        load_plcifar10(str(path), "aggregate", str(folder), images="folder", num_threads=1)


@pytest.mark.slow
def test_pico_plus_run_selects_label_free_with_noisy_sets(cifar, make_config, tmp_path):
    root, path, _, _, _ = cifar
    cfg = make_config(
        "data=plcifar10",
        f"data.root={root}",
        f"data.candidates_file={path}",
        "model=convnet",
        "method=pico_plus",
        "trainer.epochs=1",
    )
    with pytest.warns(UserWarning, match="noisy partial labels"):
        run_training(cfg)
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())["final"]
    for key in ("val/approx_acc", "val/covering_rate", "test/top1"):
        assert 0.0 <= final[key] <= 1.0, key
