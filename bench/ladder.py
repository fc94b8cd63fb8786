"""The ladder: the partial-label methods on real data of different sizes and kinds, in one
command, with the library's defaults (no per-dataset tuning).

Rungs (``--rungs``, all by default):
    digits         scikit-learn digits, uniform q 0.3 and 0.7, 3 seeds (100 epochs)
    italian        italian.mat (21,878 rows, 90 classes), 3 seeds, plus the plain PRODEN MLP
    fg-net         FG-NET.mat (1,002 rows, 78 classes), 3 seeds, plus the plain PRODEN MLP
    digits-tab     scikit-learn digits as 64 continuous features with instance-dependent
                   candidates (bench/tabular_sets.py), 3 seeds, plus the plain PRODEN MLP
    fashion-tab    5,000 Fashion-MNIST images as 100 principal components, the same
                   candidates, 3 seeds, plus the plain PRODEN MLP
    fashion_mnist  Fashion-MNIST, q 0.3 and 0.5, 1 seed, 20 epochs at batch 256 on a
                   stratified 3,000-image training subset, evaluated every 5 epochs
    cifar10        CIFAR-10 JPEG folder, q 0.3, 1 seed, the narrow ResNet-18, 20 epochs at
                   batch 256 on a stratified 2,000-image training subset, evaluated every
                   10 epochs

``--seeds`` replaces every rung's seeds. FG-NET's test split has 197 rows and its results
spread by 1-2 points between seeds, so 3 seeds cannot rank methods there; 10 seeds bring
the standard error of a mean to about 0.4 points.

The image rungs' budgets are CPU budgets (``data.train_size``; the test sets stay whole):
140-220 steps a run, so that the grid fits next to the tabular rungs on a 2-core machine.
They rank methods on small image sets (200-300 images per class), not at the papers'
scale.

Each rung is one ``pico-compare`` grid (label-free epoch selection on the partial-label
validation split); tabular rungs add the plain PRODEN reference of bench/plain_proden.py on
the same split. ``--record`` appends every table to bench/RESULTS.md.

Example:
    python bench/ladder.py --rungs italian fg-net --mat-dir ../shared/data --record
    python bench/ladder.py --rungs cifar10 --cifar-root /tmp/cifar10 --dry-run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# bench/ is not a package: its folder leaves sys.path once the shared helpers are imported
# (bench/baselines.py would shadow the `baselines` package).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import tabular_sets  # before plain_proden, which takes bench/ off sys.path

# isort: split
import plain_proden
from common import BENCH, RESULTS

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]

from pico.compare import main as compare  # noqa: E402  (after bench/ left sys.path)

METHODS = ("pico", "pico_plus", "proden", "cc", "cavl", "supervised")
MAT_FILES = {"italian": "italian.mat", "fg-net": "FG-NET.mat"}
TABULAR_RUNGS = (*MAT_FILES, *tabular_sets.SETS)
RUNGS = ("digits", *TABULAR_RUNGS, "fashion_mnist", "cifar10")


def mat_path(rung: str, args: argparse.Namespace) -> Path:
    """The ``.mat`` file of a tabular rung; the generated sets are written under
    ``OUT/tabular`` on first use."""
    if rung in MAT_FILES:
        return args.mat_dir / MAT_FILES[rung]
    path = args.out / "tabular" / f"{rung}.mat"
    if not path.exists():
        tabular_sets.main(["--out", str(path.parent), "--sets", rung])
    return path


def rung_seeds(rung: str, args: argparse.Namespace) -> list[str]:
    """The seeds of one rung: ``--seeds``, else 0 1 2 (one seed, 0, on the image rungs)."""
    if args.seeds:
        return [str(seed) for seed in args.seeds]
    return ["0"] if rung in ("fashion_mnist", "cifar10") else ["0", "1", "2"]


def rung_arguments(rung: str, args: argparse.Namespace) -> list[str]:
    """The ``pico-compare`` arguments of one rung (methods and parallelism added later)."""
    seeds = ["--seeds", *rung_seeds(rung, args)]
    if rung == "digits":
        return ["--data", "digits", "--q", "0.3", "0.7", *seeds]
    if rung in TABULAR_RUNGS:
        return ["--data", str(mat_path(rung, args)), *seeds]
    if rung == "fashion_mnist":
        budget = (
            "fashion_mnist: data.train_size=3000 trainer.epochs=20 trainer.batch_size=256 "
            "trainer.eval_every=5"
        )
        return ["--data", "fashion_mnist", "--q", "0.3", "0.5", *seeds,
                "--data-overrides", budget]  # fmt: skip
    if args.cifar_root is None:
        raise SystemExit("ladder.py: error: the cifar10 rung needs --cifar-root DIR "
                         "(tar -xzf cifar10-jpeg.tar.gz -C DIR)")  # fmt: skip
    budget = (
        f"cifar10_folder: data.root={args.cifar_root} model=resnet18_narrow data.train_size=2000 "
        "trainer.epochs=20 trainer.batch_size=256 trainer.optimizer.lr=0.2 trainer.eval_every=10"
    )
    return ["--data", "cifar10_folder", "--q", "0.3", *seeds,
            "--data-overrides", budget]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run the chosen rungs one after another."""
    parser = argparse.ArgumentParser(
        prog="python bench/ladder.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rungs", nargs="+", choices=RUNGS, default=list(RUNGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="seeds of every rung (default: 0 1 2; image rungs: 0)"
    )
    parser.add_argument("--mat-dir", type=Path, default=BENCH.parent.parent / "shared" / "data")
    parser.add_argument("--cifar-root", type=Path)
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side")
    parser.add_argument("--out", type=Path, default=BENCH / "runs", help="runs go under OUT")
    parser.add_argument("--record", action="store_true", help="append to bench/RESULTS.md")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    for rung in args.rungs:
        grid = [*rung_arguments(rung, args), "--methods", *args.methods, "--out", str(args.out),
                "--parallel", str(args.parallel), "--threads", "1",
                "--title", f"Ladder: {rung}"]  # fmt: skip
        if args.dry_run:
            grid.append("--dry-run")
        elif args.record:
            grid += ["--record", "--results", str(RESULTS)]
        print(f"== {rung}: pico-compare {' '.join(grid)}", flush=True)
        compare(grid)
        if rung in TABULAR_RUNGS and not args.dry_run:
            reference = [str(mat_path(rung, args)), "--seeds", *rung_seeds(rung, args)]
            plain_proden.main([*reference, *(["--record"] if args.record else [])])


if __name__ == "__main__":
    main()
