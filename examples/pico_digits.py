"""PiCO on scikit-learn's 8x8 digits in a plain PyTorch loop: no Trainer, no Hydra.

What the loop must do around a method, and what `pico-train` does for you:

* build the method from a backbone and a :class:`pico.TaskInfo` (class count, training
  rows and their candidate matrix: never the true labels);
* per step, make one augmented tensor per name in ``method.views`` and pass them with the
  rows' indices in a :class:`pico.Batch`;
* call ``method.on_epoch_start`` at each epoch and ``method.after_optimizer_step`` after
  each optimizer step (schedules, warm-up, the momentum key encoder), each with a
  :class:`pico.StepInfo`;
* optimise ``method.optim_parameters()`` and minimise ``training_step(...)["loss"]``.

Run it with ``python examples/pico_digits.py`` (about a minute on two CPU cores).
"""

from __future__ import annotations

import torch

import pico
from pico.data.augment import BatchAugment, Cutout, RandomResizedCrop, RandomTranslate
from pico.data.digits import load_digits
from pico.engine.optim import warmup_cosine


def train_pico_on_digits(epochs: int = 100, q: float = 0.3, seed: int = 0) -> float:
    """Train PiCO on digits with uniform candidate sets of rate ``q``; test top-1 accuracy."""
    torch.manual_seed(seed)
    data = load_digits(seed=seed)  # uint8 (N, 1, 8, 8) images, train/test split
    x, y = data.train.inputs, data.train.targets
    candidates = pico.uniform_candidates(y, num_classes=10, q=q, seed=seed)
    task = pico.TaskInfo(num_classes=10, num_train=len(x), train_candidates=candidates)
    method = pico.PiCO(pico.SmallConvNet(), task, queue_size=1024)

    # the views of configs/aug/digits.yaml, normalised with the training statistics
    zoom = RandomResizedCrop(scale=(0.7, 1.0), ratio=(0.9, 1.11))
    strong_ops = [zoom, RandomTranslate(1), Cutout(max_frac=0.25, fill=0.0)]
    views = {
        "weak": BatchAugment([RandomTranslate(1)], data.mean, data.std),
        "strong": BatchAugment(strong_ops, data.mean, data.std),
    }
    test_view = BatchAugment([], data.mean, data.std)
    batch_size = 64
    steps_per_epoch = -(-len(x) // batch_size)
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    schedule = warmup_cosine(optimizer, 0, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)

    step = 0
    for epoch in range(epochs):
        method.train()
        method.on_epoch_start(pico.StepInfo(epoch, step, epochs, steps_per_epoch))
        for index in torch.randperm(len(x), generator=generator).split(batch_size):
            info = pico.StepInfo(epoch, step, epochs, steps_per_epoch)
            batch_views = [views[name](x[index], generator) for name in method.views]
            loss = method.training_step(pico.Batch(index, batch_views), info)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            method.after_optimizer_step(info)
            step += 1

    method.eval()
    with torch.no_grad():
        logits = method.logits(test_view(data.test.inputs))
    return (logits.argmax(dim=1) == data.test.targets).float().mean().item()


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"PiCO on digits, q=0.3: test top-1 {100 * train_pico_on_digits():.2f} %")
