"""The Fashion-MNIST evaluator network: a small supervised CNN that plays Inception's role at 32×32.

Inception-V3 was trained on ImageNet photographs; on 32×32 grey clothing its features say
little. For Fashion-MNIST runs, ``mirai evaluate`` instead uses this classifier, trained
with labels on the Fashion-MNIST training set (a plain supervised model, unlike the
self-supervised foresight encoders the generator is trained with, so the judge does not
share the student's inductive bias):

* its penultimate activations (``pool``, 128-d, after ReLU like Inception's pool_3) give
  FID, precision and recall;
* its class probabilities give the Inception Score and the class accuracy of samples
  (does the classifier see the class the sample was generated for?).

Input is the project's convention for Fashion-MNIST, ``uint8 (N, 32, 32, 3)``: the 28×28
image padded by 2 px of black and replicated to RGB (``mirai.data.transforms``). The
network averages the three channels, so a generator whose grey drifts slightly in colour is
judged on its luminance.

This module holds the network only: ``mirai.evaluation.fashion_classifier`` loads the
committed weights (``mirai/assets/fashion/evaluator``), and ``mirai.builders.evaluator``
trains them (``mirai evaluate train-fashion-classifier --out DIR``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mirai.config import from_dict
from mirai.data.transforms import FLOAT_TO_UINT8, as_pixel_tensor

IMAGE_SIZE = 32
NUM_CLASSES = 10
# Mean and std of the padded 32×32 Fashion-MNIST training images, in [0, 1] units; fixed
# constants so that preprocessing never depends on the data at hand.
PIXEL_MEAN, PIXEL_STD = 0.2191, 0.3318


@dataclass
class FashionClassifierArgs:
    """The arguments ``FashionClassifier.checkpoint_config`` stores, all required: the types that
    ``from_dict`` checks a ``config.json`` against before a network is built from it."""

    widths: tuple[int, ...]
    feature_dim: int
    num_classes: int
    dropout: float


class FashionClassifier(nn.Module):
    """Three conv stages (conv 3×3 · BN · ReLU · max-pool) then a 128-d feature layer and a linear classifier."""

    checkpoint_kind = "fashion_classifier"
    name = "fashion"  # the evaluator's name in reports and reference batches, and its checkpoint name

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), feature_dim: int = 128,
                 num_classes: int = NUM_CLASSES, dropout: float = 0.1) -> None:
        super().__init__()
        self.widths, self.feature_dim, self.num_classes, self.dropout = tuple(widths), feature_dim, num_classes, dropout
        layers: list[nn.Module] = []
        in_channels = 1
        for width in self.widths:
            layers += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_channels = width
        self.body = nn.Sequential(*layers)
        side = IMAGE_SIZE // 2 ** len(self.widths)
        self.feature = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                     nn.Linear(in_channels * side * side, feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def checkpoint_config(self) -> tuple[str, dict]:
        """(name, args) that ``mirai.checkpoint`` stores in ``config.json`` to rebuild the network."""
        return self.name, {"widths": list(self.widths), "feature_dim": self.feature_dim,
                           "num_classes": self.num_classes, "dropout": self.dropout}

    @classmethod
    def from_checkpoint_config(cls, name: str, args: dict) -> FashionClassifier:
        """An untrained network of the architecture ``checkpoint_config`` stored."""
        stored = from_dict(FashionClassifierArgs, args, "args")
        return cls(stored.widths, stored.feature_dim, stored.num_classes, stored.dropout)

    @staticmethod
    def preprocess(images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 ``(N, 32, 32, 3)`` (tensor or NumPy array) → normalised float ``(N, 1, 32, 32)`` (channel mean)."""
        given, images = images, as_pixel_tensor(images)  # NumPy too, as mirai.evaluation holds images
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 3):
            got = f"{type(given).__name__} of {getattr(given, 'dtype', images.dtype)} {tuple(images.shape)}"
            raise ValueError(
                f"the Fashion-MNIST evaluator takes uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) images, got {got}; "
                f"convert floats in [0, 1] with {FLOAT_TO_UINT8}, and 28x28 "
                "Fashion-MNIST images with mirai.data.transforms.fashion_mnist_to_rgb"
            )
        grey = images.float().mean(dim=-1, keepdim=True).permute(0, 3, 1, 2) / 255.0
        return (grey - PIXEL_MEAN) / PIXEL_STD

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits) from preprocessed input."""
        features = self.feature(self.body(x))
        return features, self.classifier(features)

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class logits ``(N, 10)`` of uint8 ``(N, 32, 32, 3)`` images (tensor or NumPy array)."""
        return self.head(self.preprocess(images))[1]

    @torch.no_grad()
    def extract(self, images: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Evaluator interface: ``pool`` (N, 128) penultimate features and ``logits`` (N, 10) of uint8
        ``(N, 32, 32, 3)`` images (tensor or NumPy array)."""
        features, logits = self.head(self.preprocess(images))
        return {"pool": features.float(), "logits": logits.float()}
