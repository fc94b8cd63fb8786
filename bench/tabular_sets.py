"""Tabular partial-label sets with continuous features, written as ``.mat`` files in the
format of the real-world sets (``data``, ``target``, ``partial_target``), for the ladder.

The real-world sets at hand (italian: sparse 0/1 features, 1.6 candidates among 90
classes; FG-NET: 7.5 among 78) leave out the common kind: a few dozen to a few hundred
continuous features, 10-20 classes, 2-4 candidates per row, the wrong candidates being
classes that look alike. These sets stand in for that kind:

    digits-tab   scikit-learn digits, 1,797 rows, 64 pixel features, 10 classes
    fashion-tab  Fashion-MNIST, 5,000 rows of the test images (stratified), their 100
                 leading principal components, 10 classes

Candidates are instance dependent (:func:`pico.pll.candidates.instance_dependent_candidates`,
mean false-class probability ``--r``) from out-of-fold probabilities of a logistic
regression on the features, so a wrong class is a candidate where a classifier confuses
it with the true one. Everything is seeded by ``--seed``.

Example:
    python bench/tabular_sets.py --out /tmp/tab
    python bench/ladder.py --rungs digits-tab fashion-tab   (writes them itself)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy.io import savemat
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pico.data.vision import load_torchvision
from pico.pll.candidates import candidate_summary, instance_dependent_candidates

SETS = ("digits-tab", "fashion-tab")


def digits_features() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as 64 pixel features."""
    data = load_digits()
    return data.data.astype(np.float64), data.target.astype(np.int64)


def fashion_features(rows: int, components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified ``rows``-row subset of the Fashion-MNIST test images, projected on its
    ``components`` leading principal components."""
    test = load_torchvision("fashion_mnist", None).test
    pixels = test.inputs.reshape(len(test.targets), -1).numpy().astype(np.float64) / 255
    labels = test.targets.numpy().astype(np.int64)
    keep, _ = train_test_split(
        np.arange(len(labels)), train_size=rows, stratify=labels, random_state=seed
    )
    return PCA(components, random_state=seed).fit_transform(pixels[keep]), labels[keep]


def confusion_candidates(
    features: np.ndarray, labels: np.ndarray, r: float, seed: int
) -> np.ndarray:
    """Instance-dependent candidate sets (N, C) from out-of-fold logistic-regression
    probabilities: 5 stratified folds, each row's probabilities from a model that did not
    see it."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")
    cand = instance_dependent_candidates(torch.from_numpy(labels), torch.from_numpy(probs), seed, r)
    return cand.numpy()


def write_mat(path: Path, features: np.ndarray, labels: np.ndarray, candidates: np.ndarray) -> None:
    """Write a set in the real-world ``.mat`` layout: ``data`` (N, D), ``target`` and
    ``partial_target`` (C, N) 0/1 matrices."""
    target = np.zeros((candidates.shape[1], len(labels)))
    target[labels, np.arange(len(labels))] = 1
    savemat(
        path, {"data": features, "target": target, "partial_target": candidates.T.astype(float)}
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the .mat files")
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--r", type=float, default=0.2, help="mean false-class probability")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sets:
        if name == "digits-tab":
            features, labels = digits_features()
        else:
            features, labels = fashion_features(5000, 100, args.seed)
        candidates = confusion_candidates(features, labels, args.r, args.seed)
        write_mat(args.out / f"{name}.mat", features, labels, candidates)
        summary = candidate_summary(torch.from_numpy(candidates), torch.from_numpy(labels))
        print(name, features.shape, {k: round(v, 3) for k, v in summary.items()})


if __name__ == "__main__":
    main()
