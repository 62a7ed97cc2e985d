"""Loading the Fashion-MNIST evaluator, the classifier that plays Inception's role at 32×32.

The network is ``mirai.models.fashion_classifier.FashionClassifier`` (why a classifier, and
what it reads from images, is explained there). The committed weights live in
``mirai/assets/fashion/evaluator`` and are reproduced by
``mirai evaluate train-fashion-classifier --out DIR`` (see that folder's README).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from mirai import checkpoint
from mirai.errors import CheckpointError
from mirai.hub.resolve import resolve
from mirai.models.fashion_classifier import FashionClassifier


def default_evaluator_path() -> Path:
    """Folder of the committed Fashion-MNIST evaluator checkpoint."""
    return Path(str(resources.files("mirai") / "assets" / "fashion" / "evaluator"))


def load_fashion_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> FashionClassifier:
    """The evaluator checkpoint at ``path`` (default: the committed one), in eval mode on ``device``."""
    path = resolve(path, "Fashion-MNIST evaluator") if path is not None else default_evaluator_path()
    if not path.exists():
        raise CheckpointError(
            f"Fashion-MNIST evaluator {path} does not exist; train one with "
            "`mirai evaluate train-fashion-classifier --out DIR` and pass --fashion-evaluator DIR"
        )
    try:
        model = checkpoint.load(path, FashionClassifier)
    except CheckpointError as err:
        raise CheckpointError(f"Fashion-MNIST evaluator {path}: {err} (pass --fashion-evaluator a checkpoint "
                              "made by `mirai evaluate train-fashion-classifier`, or omit it for the committed one)"
                              ) from None
    return model.to(device).eval()
