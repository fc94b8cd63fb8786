"""Unsupervised baselines: kNN and linear-probe test accuracy against two floors (three
for a method that evaluates other features than its backbone's).

For each method and seed this trains ``pico-train method=M data=DATA`` (one subprocess
at a time unless ``--parallel``) and reads its ``metrics.json``: kNN test accuracy of the
last epoch (``final``) and of the checkpoint chosen by validation kNN (``selected``), the
linear probe of the last epoch, and the wall time of the run. The reference points use
the very same splits (the composed ``train`` config, ``pico.data.sources.load_data``):

* raw pixels: the test recipe's normalisation, flattened;
* random init: the configured backbone built after ``torch.manual_seed(seed)`` exactly as
  a run builds it, in eval mode, pooled backbone features;
* for a method whose evaluation reads other features than its backbone's (CPC: the mean of
  its patch encodings), ``random init, METHOD features``: the random-init method read
  through them.

All are scored with :func:`pico.eval.knn.knn_predict` (k and temperature from
``configs/eval/default.yaml``) and with :func:`pico.eval.linear.linear_probe`.

Example:
    python bench/baselines.py                              # every method, seed 0
    python bench/baselines.py --methods moco byol --seeds 0 1 --record
    python bench/baselines.py --methods simclr --common "trainer.epochs=50"
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from torch import Tensor

from pico.data.augment import BatchAugment, build_augment
from pico.data.sources import DataBundle, load_data
from pico.engine.method import Method
from pico.eval.features import collect
from pico.eval.knn import knn_predict
from pico.eval.linear import linear_probe
from pico.eval.metrics import topk_accuracy
from pico.experiment import build_experiment
from pico.models.factory import build_backbone

# bench/ is not a package. Python puts a script's folder first on sys.path, where
# bench/baselines.py would shadow the `baselines` package: the folder is taken off the
# path (every entry of it) right after the shared helpers (bench/common.py) are imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, command_line, machine, markdown_table, mean_std, record, section
from common import train as train_run

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

METHODS = ("moco", "simclr", "byol", "instdisc", "simsiam", "mocov3", "cpc")


#: config groups that shape the reference points (splits, backbone, test views, kNN)
REFERENCE_GROUPS = ("data", "model", "aug", "eval")


def compose_config(seed: int, overrides: list[str], data: str = "digits") -> DictConfig:
    """The ``train`` config of a run on ``data`` with ``seed`` and those of ``overrides``
    that touch the data, model, augmentation or evaluation (method keys do not compose
    here)."""
    kept = [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] in REFERENCE_GROUPS]
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose("train", overrides=[f"data={data}", f"seed={seed}", *kept])


def references(
    seed: int, overrides: list[str], data: str = "digits"
) -> dict[str, dict[str, float]]:
    """kNN and linear-probe test accuracy of raw pixels and of the random-init backbone."""
    cfg = compose_config(seed, overrides, data)
    torch.manual_seed(seed)  # as pico.train does before building anything
    bundle = load_data(cfg.data)
    backbone = build_backbone(cfg.model, bundle.input_shape, bundle.kind).eval()
    preprocess = build_augment(cfg.aug.test, bundle.mean, bundle.std)
    return {
        name: score(fn, bundle, preprocess, cfg)
        for name, fn in (("raw pixels", lambda x: x.flatten(1)), ("random init", backbone))
    }


def method_reference(
    seed: int, method: str, overrides: list[str], data: str = "digits"
) -> dict[str, dict[str, float]]:
    """kNN and linear-probe test accuracy of the random-init ``method``, built exactly as a
    run of it builds it, read through its own ``features`` (CPC: the mean of its patch
    encodings) where these are not its backbone's; empty otherwise."""
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"method={method}", f"data={data}", f"seed={seed}", *overrides]
        )
    torch.manual_seed(seed)
    exp = build_experiment(cfg)
    if type(exp.method).features is Method.features:
        return {}
    row = score(exp.method.eval().features, exp.bundle, exp.augmenters["test"], cfg)
    return {f"random init, {method} features": row}


def score(
    fn: Callable[[Tensor], Tensor], bundle: DataBundle, preprocess: BatchAugment, cfg: DictConfig
) -> dict[str, float]:
    """kNN (k and temperature of ``cfg.eval.knn``) and linear-probe test accuracy of the
    features ``fn`` gives, train split against test split, on the CPU."""
    device = torch.device("cpu")
    train_y, test_y = bundle.train.targets, bundle.test.targets
    train = collect(fn, bundle.train.inputs, preprocess, device)
    test = collect(fn, bundle.test.inputs, preprocess, device)
    scores = knn_predict(
        train,
        train_y,
        test,
        bundle.num_classes,
        k=cfg.eval.knn.k,
        temperature=cfg.eval.knn.temperature,
    )
    return {
        "knn": topk_accuracy(scores, test_y, 1),
        "linear": linear_probe(train, train_y, test, test_y)["linear_top1"],
    }


def train(
    method: str, seed: int, common: list[str], run_dir: Path, threads: int, data: str = "digits"
) -> dict:
    """One ``pico-train`` run; its ``metrics.json`` with the wall time added."""
    return train_run(
        [f"method={method}", f"data={data}", f"seed={seed}", *common], run_dir, threads
    )


def final_knn(result: dict) -> float:
    """Last-epoch test kNN on recomputed backbone features (a bank method's monitor reads
    its bank; the final evaluation adds the recomputed score)."""
    final = result["final"]
    return final.get("test/knn_top1_features", final["test/knn_top1"])


def table(refs: list[dict], results: dict[str, list[dict]]) -> str:
    """Markdown table: reference points first, then one row per method."""
    header = [
        "method",
        "kNN test, last epoch (%)",
        "kNN test, selected on val (%)",
        "linear probe test (%)",
        "seconds / run",
    ]
    rows = []
    for name in refs[0]:
        knn, linear = (mean_std([r[name][key] for r in refs]) for key in ("knn", "linear"))
        rows.append([name, knn, "-", linear, "-"])
    for method, runs in results.items():
        rows.append(
            [
                method,
                mean_std([final_knn(r) for r in runs]),
                mean_std([r["best"]["test/knn_top1"] for r in runs]),
                mean_std([r["final"]["test/linear_top1"] for r in runs]),
                f"{statistics.mean(r['wall_seconds'] for r in runs):.0f}",
            ]
        )
    return markdown_table(header, rows)


def verdicts(refs: list[dict], results: dict[str, list[dict]], limit_s: float) -> str:
    """One line per method: does its last-epoch kNN beat both references on every seed,
    is its linear probe at least 95% and every run under ``limit_s`` seconds?"""
    lines = []
    for method, runs in results.items():
        knn = [final_knn(r) for r in runs]
        beats = {
            name: all(k > ref[name]["knn"] for k, ref in zip(knn, refs, strict=True))
            for name in refs[0]
        }
        linear = min(r["final"]["test/linear_top1"] for r in runs) >= 0.95
        fast = max(r["wall_seconds"] for r in runs) < limit_s
        checks = [f"kNN > {name}: {'yes' if ok else 'NO'}" for name, ok in beats.items()]
        checks.append(f"linear >= 95%: {'yes' if linear else 'NO'}")
        checks.append(f"under {limit_s:.0f} s: {'yes' if fast else 'NO'}")
        lines.append(f"- {method}: " + ", ".join(checks))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data", default="digits", help="data config (configs/data/NAME.yaml)")
    parser.add_argument("--common", default="", help="Hydra overrides added to every run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument(
        "--out", type=Path, default=BENCH / "runs", help="run directories go to OUT/<time>/"
    )
    parser.add_argument(
        "--limit", type=float, default=180.0, help="time limit per run for the verdict (s)"
    )
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    common = shlex.split(args.common)
    refs = [
        references(seed, common, args.data)
        | {
            name: row
            for method in args.methods
            for name, row in method_reference(seed, method, common, args.data).items()
        }
        for seed in args.seeds
    ]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    jobs = [
        (method, seed, args.out / stamp / f"{method}_seed{seed}")
        for method in args.methods
        for seed in args.seeds
    ]
    with ThreadPoolExecutor(args.parallel) as pool:
        metrics = list(
            pool.map(
                lambda job: train(job[0], job[1], common, job[2], args.threads, args.data), jobs
            )
        )
    results: dict[str, list[dict]] = {method: [] for method in args.methods}
    for (method, _, _), result in zip(jobs, metrics, strict=True):
        results[method].append(result)

    intro = (
        f"`pico-train method=M data={args.data}` with each method's defaults; kNN k=20 on backbone "
        "features (InstDisc, last epoch: recomputed features, not its memory bank); linear "
        "probe after the last epoch."
    )
    facts = [
        f"machine: {machine(args.threads, args.parallel)}",
        f"seeds: {' '.join(map(str, args.seeds))}; common overrides: `{args.common or '(none)'}`",
        f"command: `{command_line('baselines.py', sys.argv[1:])}`",
    ]
    verdict = verdicts(refs, results, args.limit)
    body = f"{table(refs, results)}\n\nEvery seed, last epoch:\n\n{verdict}"
    text = section(f"Unsupervised baselines on {args.data}", facts, body, intro)
    print(text)
    if args.record:
        record(text)


if __name__ == "__main__":
    main()
