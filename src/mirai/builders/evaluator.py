"""Training of the Fashion-MNIST evaluator (``mirai evaluate train-fashion-classifier``).

The network is ``mirai.models.fashion_classifier.FashionClassifier``; the committed weights
(``mirai/assets/fashion/evaluator``) were made by ``train_fashion_classifier`` with its
defaults (see that folder's README).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from mirai.models.fashion_classifier import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD, FashionClassifier

# Training augmentation shifts images by up to this many pixels (the items sit inside a 2-px black border).
MAX_SHIFT = 1


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to ``MAX_SHIFT`` px in each direction."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    # One padded copy, then each image reads its own 32×32 window: a per-image shift without a Python loop.
    background = float((torch.zeros(()) - PIXEL_MEAN) / PIXEL_STD)  # same float32 ops as preprocess()
    padded = F.pad(x, (MAX_SHIFT,) * 4, value=background)
    dy, dx = torch.randint(0, 2 * MAX_SHIFT + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(IMAGE_SIZE))[:, None, :, None].expand(n, 1, IMAGE_SIZE, IMAGE_SIZE + 2 * MAX_SHIFT)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(IMAGE_SIZE))[:, None, None, :].expand(n, 1, IMAGE_SIZE, IMAGE_SIZE)
    return x.gather(3, cols)


@torch.no_grad()
def classifier_accuracy(model: FashionClassifier, x: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on preprocessed inputs ``x``."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model.head(x[start:start + batch_size])[1]
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(x)


def train_fashion_classifier(
    epochs: int = 6, batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 5e-4, seed: int = 0,
    data_root: str | Path | None = None, log: Callable[[str], None] = print,
) -> tuple[FashionClassifier, dict]:
    """Train the evaluator on the Fashion-MNIST training set; returns (model, metrics incl. test accuracy).

    AdamW with a one-cycle learning-rate schedule, light augmentation (flip, ±1 px shift),
    no label smoothing (the class probabilities feed the Inception Score, so they should
    stay as confident as the data allows). The test set is used only for the final report.
    """
    from tqdm import tqdm

    from mirai.data.fashion_mnist import load_fashion_mnist
    from mirai.data.transforms import fashion_mnist_to_rgb

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    def prepared(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = load_fashion_mnist(split, root=data_root)
        x = FashionClassifier.preprocess(torch.from_numpy(fashion_mnist_to_rgb(images)))
        return x, torch.from_numpy(labels)

    x_train, y_train = prepared("train")
    x_test, y_test = prepared("test")
    model = FashionClassifier()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = len(x_train) // batch_size  # drop the ragged last batch: BatchNorm dislikes tiny ones
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=None)
        for step in bar:
            index = order[step * batch_size:(step + 1) * batch_size]
            logits = model.head(_augment(x_train[index], generator))[1]
            loss = F.cross_entropy(logits, y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        log(f"epoch {epoch + 1}/{epochs}: last loss {loss.item():.4f}, {time.time() - start:.0f} s")
    metrics = {
        "test_accuracy": classifier_accuracy(model, x_test, y_test),
        "train_accuracy": classifier_accuracy(model, x_train, y_train),
        "train_seconds": round(time.time() - start, 1),
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed,
        "torch_threads": torch.get_num_threads(),
    }
    log(f"test accuracy {metrics['test_accuracy']:.4f}, train accuracy {metrics['train_accuracy']:.4f}")
    return model.eval(), metrics
