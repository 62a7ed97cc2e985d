"""The Fashion-MNIST evaluator: a small supervised CNN that plays Inception's role at 32×32.

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

The committed weights live in ``mirai/assets/fashion/evaluator`` and are reproduced by
``mirai evaluate train-fashion-classifier --out DIR`` (see that folder's README).
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from mirai import checkpoint
from mirai.errors import CheckpointError

KIND = "fashion_classifier"
IMAGE_SIZE = 32
NUM_CLASSES = 10
# Mean and std of the padded 32×32 Fashion-MNIST training images, in [0, 1] units; fixed
# constants so that preprocessing never depends on the data at hand.
PIXEL_MEAN, PIXEL_STD = 0.2191, 0.3318
# Training augmentation shifts images by up to this many pixels (the items sit inside a 2-px black border).
MAX_SHIFT = 1


def default_evaluator_path() -> Path:
    """Folder of the committed Fashion-MNIST evaluator checkpoint."""
    return Path(str(resources.files("mirai") / "assets" / "fashion" / "evaluator"))


class FashionClassifier(nn.Module):
    """Three conv stages (conv 3×3 · BN · ReLU · max-pool) then a 128-d feature layer and a linear classifier."""

    name = "fashion"

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

    def describe(self) -> tuple[str, dict]:
        return self.name, {"widths": list(self.widths), "feature_dim": self.feature_dim,
                           "num_classes": self.num_classes, "dropout": self.dropout}

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 32, 32, 3)`` → normalised float ``(N, 1, 32, 32)`` (channel mean)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(
                f"the Fashion-MNIST evaluator takes uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) images, "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        grey = images.float().mean(dim=-1, keepdim=True).permute(0, 3, 1, 2) / 255.0
        return (grey - PIXEL_MEAN) / PIXEL_STD

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits) from preprocessed input."""
        features = self.feature(self.body(x))
        return features, self.classifier(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of uint8 ``(N, 32, 32, 3)`` images."""
        return self.head(self.preprocess(images))[1]

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluator interface: ``pool`` (penultimate features) and ``logits`` of uint8 NHWC images."""
        features, logits = self.head(self.preprocess(images))
        return {"pool": features.float(), "logits": logits.float()}


checkpoint.register_kind(
    KIND, FashionClassifier,
    build=lambda name, args: FashionClassifier(widths=tuple(args["widths"]), feature_dim=args["feature_dim"],
                                               num_classes=args["num_classes"], dropout=args["dropout"]),
    describe=lambda model: model.describe(),
)


def load_fashion_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> FashionClassifier:
    """The evaluator checkpoint at ``path`` (default: the committed one), in eval mode on ``device``."""
    path = Path(path) if path is not None else default_evaluator_path()
    if not path.exists():
        raise CheckpointError(
            f"Fashion-MNIST evaluator {path} does not exist; train one with "
            "`mirai evaluate train-fashion-classifier --out DIR` and pass --fashion-evaluator DIR"
        )
    model = checkpoint.load(path, kind=KIND)
    return model.to(device).eval()


# ---------------------------------------------------------------------------- training
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
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False)
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

