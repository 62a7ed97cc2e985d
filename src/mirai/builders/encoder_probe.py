"""Linear probe of a foresight encoder on Fashion-MNIST (``mirai encoder probe``).

An encoder's quality is measured by a linear classifier on its mean-pooled grid features,
fitted on the training split and scored on the test split (``linear_probe``). The committed
encoder's probe accuracy is stored in its checkpoint's ``meta.linear_probe``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirai.builders.encoder import load_fashion_images
from mirai.data.options import positive_int
from mirai.foresight.encoders import FrozenEncoder, cache_features


def pooled_features(encoder: FrozenEncoder, images: Tensor, batch_size: int = 500) -> Tensor:
    """Mean over grid cells of the encoder's features, ``(N, C)`` float32, for [0, 1] images."""
    batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
    return cache_features(encoder, batches, len(images), desc="probe features").float().mean(dim=1)


def fit_linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor,
                     weight_decay: float = 1e-4, iterations: int = 200) -> dict:
    """Multinomial logistic regression (full-batch L-BFGS on standardised features).

    Returns train and test accuracy; the standardisation uses training statistics only.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    linear = nn.Linear(xtr.shape[1], classes)
    # The problem is convex: a zero start makes the result independent of the RNG state.
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=iterations, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(xtr), train_y) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = (linear(xtr).argmax(1) == train_y).float().mean().item()
        test_acc = (linear(xte).argmax(1) == test_y).float().mean().item()
    return {"train_accuracy": train_acc, "test_accuracy": test_acc}


def linear_probe(encoder: FrozenEncoder, root: str | None = None, n_train: int | None = None,
                 n_test: int | None = None) -> dict:
    """Linear-probe accuracy of ``encoder`` on Fashion-MNIST (mean-pooled grid features).

    Fitted on the first ``n_train`` training images (all by default), scored on the first
    ``n_test`` test images (all by default); both are checked before any image is read.
    """
    for count, name in ((n_train, "n_train (--n-train)"), (n_test, "n_test (--n-test)")):
        if count is not None:
            positive_int(count, name)
    train_images, train_labels = load_fashion_images("train", root)
    test_images, test_labels = load_fashion_images("test", root)
    train_images, train_labels = train_images[:n_train], train_labels[:n_train]
    test_images, test_labels = test_images[:n_test], test_labels[:n_test]
    result = fit_linear_probe(pooled_features(encoder, train_images), train_labels,
                              pooled_features(encoder, test_images), test_labels)
    return {**result, "n_train": len(train_images), "n_test": len(test_images)}
