"""Per-epoch and final evaluation of any method on a DataBundle."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import overload

import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import Tensor, nn

from pico.core.distributed import (
    broadcast_object,
    gather_shards,
    get_world_size,
    is_main_process,
)
from pico.data.augment import BatchAugment
from pico.data.bundle import DataBundle, Split
from pico.engine.method import Method
from pico.eval.embedding import embedding_figure
from pico.eval.features import collect, collect_sharded
from pico.eval.knn import knn_predict
from pico.eval.linear import linear_probe
from pico.eval.metrics import (
    approximated_accuracy,
    confusion_matrix,
    covering_rate,
    topk_accuracy,
)

PARTS = ("classifier", "knn", "linear")
#: the top-k accuracy reported besides top-1, only for more than ``TOP_K`` classes
TOP_K = 5


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

    Classifier top-1, and top-5 for more than five classes, where true labels are known;
    covering rate and approximated accuracy where a split carries candidate sets
    (label-free, usable for model selection); nearest-prototype accuracy; weighted kNN on
    backbone features; the share of training rows whose disambiguated label is the true
    one; a linear probe on frozen features and a t-SNE figure. Keys look like
    ``"test/top1"`` or ``"val/approx_acc"``.

    Under a process group :meth:`__call__` and :meth:`evaluate` must run on every rank:
    each rank computes the outputs of a contiguous shard of every split (and the kNN
    scores of its shard of queries), the shards are all-gathered in row order, and every
    rank computes the metrics from the full outputs. The result is the single-process
    evaluation, not an estimate from a sample. The linear probe runs on rank 0 and is
    broadcast. :meth:`embedding` and :meth:`test_confusion` stay local (rank 0 calls
    them alone).
    """

    def __init__(
        self, cfg: DictConfig, bundle: DataBundle, preprocess: BatchAugment, device: torch.device
    ) -> None:
        self.cfg = cfg
        self.bundle = bundle
        self.preprocess = preprocess
        self.device = device
        #: backbone features kept during one evaluation, by (split, gathered)
        self._kept: dict[tuple[int, bool], Tensor] | None = None

    @contextlib.contextmanager
    def _keeping_features(self) -> Iterator[None]:
        """Backbone features of each split computed once in the block (the encoder does
        not change within an evaluation): the kNN and the linear probe share them."""
        if self._kept is not None:  # an enclosing block keeps them already
            yield
            return
        self._kept = {}
        try:
            yield
        finally:
            self._kept = None

    def _features(self, method: Method, split: Split, gather: bool = True) -> Tensor:
        """Backbone features of ``split`` as :meth:`_run` computes them, kept while
        :meth:`_keeping_features` is active."""
        if self._kept is None:
            return self._run(method.features, split, gather)
        key = (id(split), gather or get_world_size() == 1)  # one process: the same rows
        if key not in self._kept:
            self._kept[key] = self._run(method.features, split, gather)
        return self._kept[key]

    @overload
    def _run(self, fn: Callable[[Tensor], Tensor], split: Split, gather: bool = ...) -> Tensor: ...
    @overload
    def _run(
        self, fn: Callable[[Tensor], Tensor | None], split: Split, gather: bool = ...
    ) -> Tensor | None: ...
    def _run(
        self, fn: Callable[[Tensor], Tensor | None], split: Split, gather: bool = True
    ) -> Tensor | None:
        """``fn`` over ``split`` sharded over the ranks: all rows, or with ``gather=False``
        this rank's share."""
        return collect_sharded(
            fn, split.inputs, self.preprocess, self.device, self.cfg.batch_size, gather
        )

    @overload
    def _run_local(self, fn: Callable[[Tensor], Tensor], split: Split) -> Tensor: ...
    @overload
    def _run_local(self, fn: Callable[[Tensor], Tensor | None], split: Split) -> Tensor | None: ...
    def _run_local(self, fn: Callable[[Tensor], Tensor | None], split: Split) -> Tensor | None:
        """``fn`` over all of ``split`` in this process alone (no collectives)."""
        return collect(fn, split.inputs, self.preprocess, self.device, self.cfg.batch_size)

    @torch.no_grad()
    def __call__(self, method: Method, final: bool = False) -> dict[str, float]:
        """Per-epoch metrics; the kNN monitor when enabled; the linear probe when ``final``
        and ``eval.linear_probe`` is set.

        The kNN monitor reads a method's own training bank (``knn_bank()``, e.g.
        InstDisc's memory) when it has one, in every epoch alike, so a checkpoint chosen
        by ``val/knn_top1`` compares like with like. The final evaluation adds the kNN
        on training features recomputed with the final encoder (keys ending in
        ``knn_top1_features``), the number :meth:`evaluate` and ``pico-eval`` report.
        """
        parts = {"classifier"}
        if self.cfg.knn.enabled:
            parts.add("knn")
        if final and self.cfg.linear_probe:
            parts.add("linear")
        with self._keeping_features():
            metrics = self.evaluate(method, parts, use_bank=True)
            if final and "knn" in parts and method.knn_bank() is not None:
                with eval_mode(method):
                    fresh = self._knn(method, use_bank=False)
                metrics.update({f"{key}_features": value for key, value in fresh.items()})
        return metrics

    @torch.no_grad()
    def evaluate(self, method: Method, parts: set[str], use_bank: bool = False) -> dict[str, float]:
        """Metrics of the named ``parts``: ``classifier`` (classifier head, prototypes,
        label-free and disambiguation metrics), ``knn`` and ``linear``.

        ``use_bank``: the kNN reads the method's training bank where it has one, instead
        of recomputing training features (a cheap monitor; the bank holds features of
        past encoders and augmented views).
        """
        unknown = parts - set(PARTS)
        if unknown:
            raise ValueError(f"unknown evaluation {sorted(unknown)}; choose from {PARTS}")
        metrics: dict[str, float] = {}
        with eval_mode(method), self._keeping_features():
            if "classifier" in parts:
                for name, split in (("val", self.bundle.val), ("test", self.bundle.test)):
                    if len(split):
                        metrics.update(self._split_metrics(method, name, split))
                metrics.update(self._disambiguation(method))
            if "knn" in parts:
                metrics.update(self._knn(method, use_bank))
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
                if logits.shape[1] > TOP_K:  # with TOP_K or fewer classes it is always 1
                    out[f"{name}/top{TOP_K}"] = topk_accuracy(logits, targets, TOP_K)
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

    def _knn(self, method: Method, use_bank: bool) -> dict[str, float]:
        """Weighted kNN from the training rows: their backbone features (gathered from all
        ranks), or with ``use_bank`` a method's own bank, queried in its embedding space.
        Each rank scores its shard of the queries; the scores are gathered."""
        bank = method.knn_bank() if use_bank else None
        train = bank if bank is not None else self._features(method, self.bundle.train)
        labels = self.bundle.train.targets.to(self.device)
        out: dict[str, float] = {}
        for name, split in (("val", self.bundle.val), ("test", self.bundle.test)):
            if not len(split):
                continue
            if bank is not None:
                queries = self._run(method.embed, split, gather=False)
                # knn_bank() holds rows of the embed() space, so a method with one embeds
                assert queries is not None, f"{type(method).__name__} has a knn_bank but no embed"
            else:
                queries = self._features(method, split, gather=False)
            scores = knn_predict(
                train.to(self.device),
                labels,
                queries,
                self.bundle.num_classes,
                k=self.cfg.knn.k,
                temperature=self.cfg.knn.temperature,
            )
            scores = gather_shards(scores, len(split))
            out[f"{name}/knn_top1"] = topk_accuracy(scores, split.targets.to(self.device), 1)
        return out

    def _linear(self, method: Method) -> dict[str, float]:
        """Linear probe: logistic regression on frozen backbone features, train -> test
        (fitted on rank 0, the result broadcast)."""
        train = self._features(method, self.bundle.train)
        test = self._features(method, self.bundle.test)
        outcome: dict[str, float] | ValueError | None = None
        if is_main_process():
            try:
                outcome = linear_probe(
                    train,
                    self.bundle.train.targets.to(self.device),
                    test,
                    self.bundle.test.targets.to(self.device),
                )
            except ValueError as err:  # raised on every rank, so none waits for rank 0
                outcome = err
        outcome = broadcast_object(outcome)
        if isinstance(outcome, ValueError):
            raise outcome
        assert outcome is not None  # rank 0 sets it (a result or the error) for every rank
        return {"test/linear_top1": outcome["linear_top1"]}

    @torch.no_grad()
    def embedding(self, method: Method, epoch: int | None = None) -> Figure:
        """t-SNE of the test split's backbone features, coloured by class, its title naming
        the split and ``epoch``."""
        with eval_mode(method):
            features = self._run_local(method.features, self.bundle.test)
        return embedding_figure(
            features, self.bundle.test.targets, self.bundle.class_names, split="test", epoch=epoch
        )

    @torch.no_grad()
    def test_confusion(self, method: Method) -> Tensor | None:
        """Confusion matrix of the classifier head on the test split, or ``None``."""
        with eval_mode(method):
            logits = self._run_local(method.logits, self.bundle.test)
        if logits is None:
            return None
        targets = self.bundle.test.targets.to(self.device)
        return confusion_matrix(logits.argmax(1), targets, self.bundle.num_classes).cpu()
