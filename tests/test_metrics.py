import numpy as np
import torch
from sklearn.neighbors import KNeighborsClassifier

from pico.eval.knn import knn_predict
from pico.eval.metrics import (
    approximated_accuracy,
    confusion_matrix,
    covering_rate,
    topk_accuracy,
)


def test_topk_against_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=gen)
    targets = torch.randint(0, 7, (50,), generator=gen)
    for k in (1, 3):
        ref = np.mean(
            [
                int(t) in logits[i].argsort(descending=True)[:k].tolist()
                for i, t in enumerate(targets)
            ]
        )
        assert abs(topk_accuracy(logits, targets, k) - ref) < 1e-6


def test_covering_rate_and_approximated_accuracy_against_loop():
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(40, 5, generator=gen).softmax(dim=1)
    cands = torch.rand(40, 5, generator=gen) < 0.4
    cands[torch.arange(40), torch.randint(0, 5, (40,), generator=gen)] = True
    pred = probs.argmax(1)
    cover = np.mean([bool(cands[i, pred[i]]) for i in range(40)])
    approx = []
    for i in range(40):
        mass = sum(float(probs[i, j]) for j in range(5) if cands[i, j])
        other = sum(float(probs[i, j]) for j in range(5) if cands[i, j] and j != pred[i])
        approx.append(1 - other / mass if cands[i, pred[i]] else 0.0)
    assert abs(covering_rate(pred, cands) - cover) < 1e-6
    assert abs(approximated_accuracy(probs, cands) - np.mean(approx)) < 1e-6


def test_confusion_matrix_counts():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    true = torch.tensor([0, 1, 2, 2, 2, 0])
    got = confusion_matrix(pred, true, 3)
    ref = torch.zeros(3, 3, dtype=torch.long)
    for p, t in zip(pred.tolist(), true.tolist(), strict=True):
        ref[t, p] += 1
    assert torch.equal(got, ref)


def test_knn_matches_sklearn_majority_vote_at_high_temperature():
    gen = torch.Generator().manual_seed(2)
    centers = torch.randn(4, 16, generator=gen) * 3
    labels = torch.randint(0, 4, (300,), generator=gen)
    feats = centers[labels] + torch.randn(300, 16, generator=gen)
    query_labels = torch.randint(0, 4, (80,), generator=gen)
    query = centers[query_labels] + torch.randn(80, 16, generator=gen)
    norm = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
    # a huge temperature makes every neighbour's weight ~1: plain majority vote
    ours = knn_predict(feats, labels, query, 4, k=7, temperature=1e6, chunk_size=16).argmax(1)
    skl = KNeighborsClassifier(n_neighbors=7, metric="cosine").fit(norm(feats), labels)
    ref = torch.as_tensor(skl.predict(norm(query)))
    assert (ours == ref).float().mean() > 0.97


def test_knn_weighting_against_loop():
    gen = torch.Generator().manual_seed(3)
    feats = torch.randn(30, 5, generator=gen)
    labels = torch.randint(0, 3, (30,), generator=gen)
    query = torch.randn(6, 5, generator=gen)
    got = knn_predict(feats, labels, query, 3, k=4, temperature=0.5, chunk_size=4)
    fn = torch.nn.functional.normalize(feats, dim=1)
    qn = torch.nn.functional.normalize(query, dim=1)
    for i in range(6):
        sims = [(float(qn[i] @ fn[j]), int(labels[j])) for j in range(30)]
        sims.sort(reverse=True)
        ref = torch.zeros(3)
        for s, c in sims[:4]:
            ref[c] += np.exp(s / 0.5)
        torch.testing.assert_close(got[i], ref, rtol=1e-5, atol=1e-5)
