"""Per-epoch and final evaluation of any method on a DataBundle."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor, nn

from pico.data.augment import BatchAugment
from pico.data.bundle import DataBundle, Split
from pico.engine.method import Method
from pico.eval.embedding import embedding_figure
from pico.eval.features import collect
from pico.eval.knn import knn_predict
from pico.eval.linear import linear_probe
from pico.eval.metrics import (
    approximated_accuracy,
    confusion_matrix,
    covering_rate,
    topk_accuracy,
)

PARTS = ("classifier", "knn", "linear")


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Evaluation mode (BatchNorm statistics frozen) for the block, then the mode before."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class Evaluator:
    """Computes every metric that applies to a method.

    Classifier top-1/top-5 where true labels are known; covering rate and approximated
    accuracy where a split carries candidate sets (label-free, usable for model
    selection); nearest-prototype accuracy; weighted kNN on backbone features; the share
    of training rows whose disambiguated label is the true one; a linear probe on frozen
    features and a t-SNE figure. Keys look like ``"test/top1"`` or ``"val/approx_acc"``.
    """

    def __init__(
        self, cfg: DictConfig, bundle: DataBundle, preprocess: BatchAugment, device: torch.device
    ) -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.preprocess = preprocess
        self.device = device

    def _run(self, fn, split: Split) -> Tensor | None:
        return collect(fn, split.inputs, self.preprocess, self.device, self.cfg.batch_size)

    @torch.no_grad()
    def __call__(self, method: Method, final: bool = False) -> dict[str, float]:
        """Per-epoch metrics; the kNN monitor when enabled; the linear probe when ``final``
        and ``eval.linear_probe`` is set."""
        parts = {"classifier"}
        if self.cfg.knn.enabled:
            parts.add("knn")
        if final and self.cfg.linear_probe:
            parts.add("linear")
        return self.evaluate(method, parts)

    @torch.no_grad()
    def evaluate(self, method: Method, parts: set[str]) -> dict[str, float]:
        """Metrics of the named ``parts``: ``classifier`` (classifier head, prototypes,
        label-free and disambiguation metrics), ``knn`` and ``linear``."""
        unknown = parts - set(PARTS)
        if unknown:
            raise ValueError(f"unknown evaluation {sorted(unknown)}; choose from {PARTS}")
        metrics: dict[str, float] = {}
        with eval_mode(method):
            if "classifier" in parts:
                for name, split in (("val", self.bundle.val), ("test", self.bundle.test)):
                    if len(split):
                        metrics.update(self._split_metrics(method, name, split))
                metrics.update(self._disambiguation(method))
            if "knn" in parts:
                metrics.update(self._knn(method))
            if "linear" in parts:
                metrics.update(self._linear(method))
        return metrics

    def _split_metrics(self, method: Method, name: str, split: Split) -> dict[str, float]:
        out: dict[str, float] = {}
        targets = split.targets.to(self.device)
        labelled = bool((targets >= 0).all())
        logits = self._run(method.logits, split)
        if logits is not None:
            if labelled:
                out[f"{name}/top1"] = topk_accuracy(logits, targets, 1)
                out[f"{name}/top5"] = topk_accuracy(logits, targets, 5)
            if split.candidates is not None:
                candidates = split.candidates.to(self.device)
                out[f"{name}/covering_rate"] = covering_rate(logits.argmax(1), candidates)
                out[f"{name}/approx_acc"] = approximated_accuracy(logits.softmax(1), candidates)
        prototypes = method.class_prototypes()
        if prototypes is not None and labelled:
            embeddings = self._run(method.embed, split)
            if embeddings is not None:
                scores = embeddings @ prototypes.to(self.device).float().T
                out[f"{name}/proto_acc"] = topk_accuracy(scores, targets, 1)
        return out

    def _disambiguation(self, method: Method) -> dict[str, float]:
        estimate = method.train_label_estimate()
        targets = self.bundle.train.targets.to(self.device)
        if estimate is None or not bool((targets >= 0).all()):
            return {}
        return {"train/disamb_acc": (estimate.to(self.device) == targets).float().mean().item()}

    def _knn(self, method: Method) -> dict[str, float]:
        """Weighted kNN from the training rows; a method's own bank (e.g. InstDisc's memory)
        replaces recomputed training features, queried in its embedding space."""
        bank = method.knn_bank()
        features = method.embed if bank is not None else method.features
        train = bank if bank is not None else self._run(method.features, self.bundle.train)
        labels = self.bundle.train.targets.to(self.device)
        out: dict[str, float] = {}
        for name, split in (("val", self.bundle.val), ("test", self.bundle.test)):
            if not len(split):
                continue
            scores = knn_predict(
                train.to(self.device),
                labels,
                self._run(features, split),
                self.bundle.num_classes,
                k=self.cfg.knn.k,
                temperature=self.cfg.knn.temperature,
            )
            out[f"{name}/knn_top1"] = topk_accuracy(scores, split.targets.to(self.device), 1)
        return out

    def _linear(self, method: Method) -> dict[str, float]:
        """Linear probe: logistic regression on frozen backbone features, train -> test."""
        result = linear_probe(
            self._run(method.features, self.bundle.train),
            self.bundle.train.targets.to(self.device),
            self._run(method.features, self.bundle.test),
            self.bundle.test.targets.to(self.device),
        )
        return {"test/linear_top1": result["linear_top1"]}

    @torch.no_grad()
    def embedding(self, method: Method) -> Figure:
        """t-SNE of the test split's backbone features, coloured by class."""
        with eval_mode(method):
            features = self._run(method.features, self.bundle.test)
        return embedding_figure(features, self.bundle.test.targets, self.bundle.class_names)

    @torch.no_grad()
    def test_confusion(self, method: Method) -> Tensor | None:
        """Confusion matrix of the classifier head on the test split, or ``None``."""
        with eval_mode(method):
            logits = self._run(method.logits, self.bundle.test)
        if logits is None:
            return None
        targets = self.bundle.test.targets.to(self.device)
        return confusion_matrix(logits.argmax(1), targets, self.bundle.num_classes).cpu()
