"""Plain PRODEN MLP on tabular partial-label ``.mat`` files: the reference the field
compares against, on exactly the train/test split that ``pico-train data=mat`` uses.

For each file and seed the data come from
``pico.data.tabular.load_pll_mat_source(FILE, test_fraction=0.2, seed=SEED,
standardize=True)``: the stratified seeded split of ``data=mat``, features z-scored with
training statistics. The whole training part trains (no validation split) an MLP with one
hidden layer of 500 ReLU units, Adam (lr 1e-3, weight decay 1e-5), batch 256 (the last
batch of an epoch smaller), ``--epochs`` epochs (200). PRODEN's rule: the loss of a row is
``-sum_j w_ij log softmax(f(x_i))_j``, with ``w_i`` uniform over the row's candidates at
the start and, after each step, ``w_i <- normalise(softmax(f(x_i)) * candidates_i)`` for
the batch's rows, from that step's (detached) forward. The table gives the test top-1
accuracy of the final epoch, mean ± std over seeds and per seed. ``torch`` is seeded
with the seed (initialisation and batch order), so a run repeats exactly with the same
``--threads``.

Example:
    python bench/plain_proden.py data/lost.mat data/MSRCv2.mat --seeds 0 1 2 --record
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.io.matlab import MatReadError
from torch import Tensor, nn

# bench/ is not a package. Python puts a script's folder first on sys.path, where
# bench/baselines.py would shadow the `baselines` package: the folder is taken off the
# path (every entry of it) right after the shared helpers (bench/common.py) are imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, RESULTS, command_line, machine, markdown_table, mean_std, record, section

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

from pico.data.sources import SourceData  # noqa: E402  (after bench/ left sys.path)
from pico.data.tabular import load_pll_mat_source  # noqa: E402

TEST_FRACTION = 0.2
HIDDEN = 500
LR = 1e-3
WEIGHT_DECAY = 1e-5
BATCH_SIZE = 256


def proden_loss(logits: Tensor, weights: Tensor) -> Tensor:
    """Mean over the rows of ``-sum_j w_ij log softmax(logits_i)_j``."""
    return -(weights * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def refreshed_weights(logits: Tensor, candidates: Tensor) -> Tensor:
    """PRODEN's weights: ``softmax(logits)`` kept on the candidates, each row summing to 1
    (no gradient)."""
    kept = F.softmax(logits.detach(), dim=1) * candidates
    return kept / kept.sum(dim=1, keepdim=True)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    candidates: Tensor,
    weights: Tensor,
) -> tuple[float, Tensor]:
    """One PRODEN step on a batch: the loss with the batch's ``weights`` and an optimiser
    step; returns the loss and the batch's new weights, from the same forward."""
    logits = model(inputs)
    loss = proden_loss(logits, weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item(), refreshed_weights(logits, candidates)


def mlp(in_features: int, num_classes: int) -> nn.Sequential:
    """Linear - ReLU - Linear with ``HIDDEN`` hidden units."""
    return nn.Sequential(nn.Linear(in_features, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, num_classes))


def run(source: SourceData, seed: int, epochs: int) -> float:
    """Test top-1 accuracy after ``epochs`` epochs of plain PRODEN on ``source`` (the
    ``data=mat`` split of seed ``seed``), torch seeded with ``seed``."""
    train, test = source.train, source.test
    candidates = train.candidates.float()
    weights = candidates / candidates.sum(dim=1, keepdim=True)
    torch.manual_seed(seed)
    model = mlp(train.inputs.shape[1], candidates.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(weights), generator=order).split(BATCH_SIZE):
            batch = (train.inputs[rows], candidates[rows], weights[rows])
            weights[rows] = train_step(model, optimizer, *batch)[1]
    with torch.no_grad():
        predicted = model(test.inputs).argmax(dim=1)
    return (predicted == test.targets).float().mean().item()


def table(accuracies: dict[Path, list[float]], seeds: list[int]) -> str:
    """Markdown table: file (stem), mean ± std over seeds and each seed's accuracy (%)."""
    rows = [
        (path.stem, mean_std(values), ", ".join(f"{100 * v:.2f}" for v in values))
        for path, values in accuracies.items()
    ]
    per_seed = f"seeds {', '.join(map(str, seeds))} (%)"
    return markdown_table(["file", "test top-1, final epoch (%)", per_seed], rows)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE.mat")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=_positive, default=200)
    parser.add_argument("--threads", type=_positive, default=1, help="torch CPU threads")
    parser.add_argument("--record", action="store_true", help="append a section to --results")
    parser.add_argument("--results", type=Path, default=RESULTS, metavar="FILE")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        parser.error(f"{', '.join(missing)}: no such file; pass partial-label .mat files")
    return args


def main(argv: list[str] | None = None) -> dict[Path, list[float]]:
    """Train every file and seed, print the table and optionally record it."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    accuracies = {}
    for path in args.files:
        accuracies[path] = []
        for seed in args.seeds:
            try:
                source = load_pll_mat_source(str(path), TEST_FRACTION, seed, standardize=True)
            except (ValueError, MatReadError) as err:  # the loader names the problem
                sys.exit(f"plain_proden.py: error: {path}: {err}; pass a partial-label .mat file")
            accuracies[path].append(run(source, seed, args.epochs))
        print(f"{path}: {mean_std(accuracies[path])}", flush=True)
    minutes = (time.perf_counter() - started) / 60
    text = table(accuracies, args.seeds)
    print(f"\n{text}")
    if args.record:
        facts = [
            f"machine: {machine(args.threads, 1)}",
            f"recipe: MLP {HIDDEN} ReLU units, Adam lr {LR:g} weight decay {WEIGHT_DECAY:g}, "
            f"batch {BATCH_SIZE}, {args.epochs} epochs on the whole training part of the "
            f"data=mat split (test fraction {TEST_FRACTION:g}, z-scored); PRODEN weights "
            "refreshed per batch; test top-1 of the final epoch",
            f"seeds: {' '.join(map(str, args.seeds))}; {minutes:.1f} min wall time in all",
            f"command: `{command_line('plain_proden.py', sys.argv[1:] if argv is None else argv)}`",
        ]
        record(section("Plain PRODEN MLP on .mat data", facts, text), args.results)
        print(f"\nrecorded in {args.results}")
    return accuracies


if __name__ == "__main__":
    main()
