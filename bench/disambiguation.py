"""Where label disambiguation goes right or wrong: accuracy on the training rows whose
candidate set holds more than one label, for a trained partial-label checkpoint.

For each checkpoint the run is rebuilt from its stored config, the training rows are
encoded once without augmentation, and three label estimates are scored against the
true labels on the ambiguous rows (rows with one candidate are trivially right):

* ``confidence``: the method's per-row label estimate (``train_label_estimate``), e.g.
  PiCO's confidence matrix or PRODEN's weights;
* ``classifier``: the classifier's prediction restricted to the row's candidates;
* ``prototype``: the candidate whose class prototype is closest to the row's embedding
  (methods with prototypes only; PiCO's label vote).

Example:
    python bench/disambiguation.py runs/pico-mat/*/checkpoints/last.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where bench/baselines.py would
# shadow the `baselines` package a rebuilt run may import: take it off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pico.engine.checkpoint import load_checkpoint  # noqa: E402
from pico.experiment import build_experiment  # noqa: E402


def ambiguous_row_accuracy(checkpoint: str) -> dict[str, float]:
    """The three estimates' accuracies on ambiguous training rows, and their share."""
    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["config"])
    cfg.trainer.device = "cpu"
    exp = build_experiment(cfg)
    method = exp.method
    method.load_state_dict(state["method"])
    method.eval()
    train = exp.bundle.train
    candidates = train.candidates.bool()
    targets = train.targets
    ambiguous = candidates.sum(dim=1) > 1
    with torch.no_grad():
        inputs = exp.augmenters["test"](train.inputs)
        logits = method.logits(inputs)
        embedding = method.embed(inputs)
    estimates = {"classifier": logits.masked_fill(~candidates, float("-inf")).argmax(dim=1)}
    label_estimate = method.train_label_estimate()
    if label_estimate is not None:
        estimates["confidence"] = label_estimate
    prototypes = method.class_prototypes()
    if prototypes is not None and embedding is not None:
        votes = (embedding @ prototypes.T).masked_fill(~candidates, float("-inf"))
        estimates["prototype"] = votes.argmax(dim=1)
    scores = {
        name: (pred[ambiguous] == targets[ambiguous]).float().mean().item()
        for name, pred in estimates.items()
    }
    return {"ambiguous_share": ambiguous.float().mean().item(), **scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="pico-train checkpoints (last.pt, best.pt)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| checkpoint | ambiguous rows | confidence | classifier | prototype |")
    print("|---|---|---|---|---|")
    for path in args.checkpoints:
        s = ambiguous_row_accuracy(path)
        names = ("confidence", "classifier", "prototype")
        cells = [f"{100 * s[k]:.1f}" if k in s else "-" for k in names]
        print(f"| {path} | {100 * s['ambiguous_share']:.1f} % | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
