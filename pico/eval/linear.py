"""Linear probe: a multinomial logistic regression on frozen features.

Both routes minimise the same objective on standardised features (train mean and
standard deviation), scikit-learn's ``0.5 ||W||^2 + C * sum_i CE_i`` with an
unpenalised bias: scikit-learn's ``LogisticRegression`` for small problems, and a
full-batch L-BFGS on a torch linear layer, on the features' device, for large ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from torch import Tensor

#: ``method="auto"`` uses scikit-learn while ``N * D`` of the train features is at most this.
SKLEARN_MAX_VALUES = 2_000_000

_METHODS = ("auto", "sklearn", "torch")


def _check_inputs(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor
) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            "linear_probe needs 2-D (rows, dim) features, got "
            f"{tuple(train_features.shape)} and {tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test features differ in width ({train_features.shape[1]} vs "
            f"{test_features.shape[1]}); extract both with the same model"
        )
    for name, feats, labels in (
        ("train", train_features, train_labels),
        ("test", test_features, test_labels),
    ):
        if labels.shape != (feats.shape[0],):
            raise ValueError(
                f"{name}_labels must have shape ({feats.shape[0]},), one label per feature "
                f"row, got {tuple(labels.shape)}"
            )
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("linear_probe needs at least one train and one test row")
    if bool((train_labels < 0).any()) or bool((test_labels < 0).any()):
        raise ValueError("linear_probe needs true labels >= 0; drop rows with unknown labels (-1)")


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """Both splits scaled with the train mean and standard deviation (constant columns: 1)."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def _sklearn_predict(
    train: Tensor, train_labels: Tensor, test: Tensor, c: float, max_iter: int, seed: int
) -> np.ndarray:
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    model.fit(train.cpu().double().numpy(), train_labels.cpu().numpy())
    return model.predict(test.cpu().double().numpy())


def _torch_predict(
    train: Tensor, train_labels: Tensor, test: Tensor, num_classes: int, c: float, max_iter: int
) -> Tensor:
    """Full-batch L-BFGS on the scikit-learn objective, divided by ``C * N``."""
    weight = torch.zeros(num_classes, train.shape[1], device=train.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=train.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe"
    )
    penalty = 0.5 / (c * train.shape[0])

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = F.linear(train, weight, bias)
        loss = F.cross_entropy(logits, train_labels) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return F.linear(test, weight, bias).argmax(dim=1)


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    method: str = "auto",
    C: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Test top-1 accuracy of a logistic regression trained on frozen train features.

    ``method``: ``"sklearn"`` (``LogisticRegression``, CPU), ``"torch"`` (full-batch
    L-BFGS on the features' device) or ``"auto"`` (scikit-learn while
    ``N * D <= SKLEARN_MAX_VALUES``). ``C`` is the inverse L2 strength as in
    scikit-learn, ``max_iter`` the solver's iteration budget and ``seed`` scikit-learn's
    ``random_state`` (the torch route starts from zeros and is deterministic).
    Returns ``{"linear_top1": accuracy in [0, 1]}``.
    """
    if method not in _METHODS:
        raise ValueError(f"linear_probe method must be one of {_METHODS}, got {method!r}")
    if not C > 0:
        raise ValueError(f"linear_probe C must be > 0, got {C}")
    if max_iter < 1:
        raise ValueError(f"linear_probe max_iter must be >= 1, got {max_iter}")
    _check_inputs(train_features, train_labels, test_features, test_labels)
    if method == "auto":
        method = "sklearn" if train_features.numel() <= SKLEARN_MAX_VALUES else "torch"
    device = train_features.device
    train, test = _standardise(train_features.float(), test_features.float().to(device))
    train_labels = train_labels.long().to(device)
    test_labels = test_labels.long().to(device)
    if method == "sklearn":
        predicted = torch.from_numpy(
            _sklearn_predict(train, train_labels, test, C, max_iter, seed)
        ).to(device)
    else:
        num_classes = int(torch.maximum(train_labels.max(), test_labels.max())) + 1
        predicted = _torch_predict(train, train_labels, test, num_classes, C, max_iter)
    return {"linear_top1": (predicted == test_labels).float().mean().item()}
