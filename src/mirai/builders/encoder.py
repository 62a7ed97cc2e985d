"""Training of the Fashion-MNIST foresight encoder (``mirai encoder train-fashion``).

The network is ``mirai.models.fashion_encoder.FashionEncoderNet``. It is trained with two
terms on two augmented views (random resized crop, flip, brightness and contrast) of each
image: a global term on the mean-pooled features (what makes them semantic) and a dense
contrastive term between the grid cells of the two views that show the same point of the
image (what makes each cell's feature describe its own location, VICRegL/PixPro style). The
global term is SimCLR's contrastive loss with ``objective="ssl"`` (no labels) or
cross-entropy on the class labels with ``objective="supervised"``. Two encoders made here are
committed: ``fashion8_ssl`` (``objective="ssl"``: it never reads a label; 85.1% linear probe), the
Mirai-I default of the Fashion-MNIST configs because DINOv2 never saw a label either, and
``fashion8`` (``objective="supervised"``: 90.6%), kept and named as the encoder that saw labels;
the command's default is the label-free recipe. ``meta.uses_labels`` in the checkpoint records which objective was used.
Quality is measured by ``mirai.builders.encoder_probe``; the assets' READMEs give each recipe.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mirai.data.options import finite_float, non_negative_int, positive_float, positive_int
from mirai.errors import ConfigError
from mirai.models.fashion_encoder import FashionEncoderArgs, FashionEncoderNet

# ---------------------------------------------------------------------------- augmentation
def random_crops(
    batch: int, generator: torch.Generator, scale: tuple[float, float] = (0.35, 1.0)
) -> Tensor:
    """Affine maps ``(B, 2, 3)`` from view coordinates to image coordinates (``affine_grid``'s
    convention, both in [-1, 1]): random resized crops with aspect 3/4..4/3 and random
    horizontal flips. Known maps are what lets the dense loss find matching cells."""
    area = torch.empty(batch).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(batch).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    half_w = (area * ratio).sqrt().clamp(max=1.0)  # crop half-sizes in normalised units
    half_h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - half_w)
    cy = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - half_h)
    flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = half_w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = half_h, cy
    return theta


def apply_view(images: Tensor, theta: Tensor, generator: torch.Generator) -> Tensor:
    """Crop/flip ``images`` (B, 1, 32, 32) by ``theta`` and jitter brightness and contrast."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    b = images.shape[0]
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4, generator=generator)
    brightness = torch.empty(b, 1, 1, 1).uniform_(-0.2, 0.2, generator=generator)
    return (views * contrast + brightness).clamp(0, 1)


def matching_cells(theta_a: Tensor, theta_b: Tensor, grid: int, per_image: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """For up to ``per_image`` random cells of view A whose centre is visible in view B:
    (flat cell indices in A ``(B, P)``, their positions in B's normalised coordinates
    ``(B, P, 2)``, validity mask ``(B, P)``)."""
    centres = (torch.arange(grid, dtype=torch.float32) * 2 + 1) / grid - 1
    gy, gx = torch.meshgrid(centres, centres, indexing="ij")
    view_xy = torch.stack([gx.flatten(), gy.flatten(), torch.ones(grid * grid)], dim=0)  # (3, N)
    image_xy = theta_a @ view_xy  # (B, 2, N) centres of A's cells in image coordinates
    # Invert B's diagonal affine map: x_b = (x - t) / s.
    scale = torch.stack([theta_b[:, 0, 0], theta_b[:, 1, 1]], dim=1)[..., None]
    shift = theta_b[:, :, 2:]
    in_b = ((image_xy - shift) / scale).transpose(1, 2)  # (B, N, 2)
    visible = (in_b.abs() <= 1 - 1 / grid).all(dim=-1)  # keep a half cell away from B's border
    score = torch.rand(visible.shape, generator=generator) + visible.float()  # visible cells first
    cells = score.topk(per_image, dim=1).indices
    return cells, in_b.gather(1, cells[..., None].expand(-1, -1, 2)), visible.gather(1, cells)


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE: row i of ``a`` should match row i of ``b`` against all other rows of both."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))  # a sample is not its own negative
    n = a.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return F.cross_entropy(logits, target)


# ---------------------------------------------------------------------------- training
# What each objective's committed asset was trained with where the flags leave a setting out:
# label-free views need harder crops (0.35) to make the contrastive term informative, and reach
# their probe accuracy in 2 epochs (src/mirai/assets/fashion/encoder8{,_ssl}/README.md).
RECIPES = {"ssl": {"epochs": 2.0, "crop_min": 0.35}, "supervised": {"epochs": 3.0, "crop_min": 0.8}}


@dataclass
class FashionTrainConfig:
    """How ``mirai encoder train-fashion`` trains (stored in the checkpoint's ``meta``)."""

    grid: int = 8
    # "ssl" (the default, as DINOv2 never sees a label): contrastive global term, labels never read
    # (the fashion8_ssl asset); "supervised": labels in the global term (the fashion8 asset).
    objective: str = "ssl"
    epochs: float | None = None  # None: the objective's recipe (RECIPES)
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2
    dense_weight: float = 0.5  # weight of the per-cell term
    dense_cells: int = 8  # matched cells per image in the per-cell term
    crop_min: float | None = None  # smallest crop area (fraction of the image) of a view; None: RECIPES
    seed: int = 0
    # Architecture: about 35 M multiply-adds per 32×32 image; each extra 128-channel residual
    # block would add 19 M, which a one-CPU-thread budget cannot afford.
    width: int = 48
    dim: int = 128
    res_blocks: int = 1

    def __post_init__(self) -> None:
        """Check every setting (``ConfigError`` naming the first bad one) before anything is trained."""
        if self.grid not in (8, 16):
            raise ConfigError(f"grid must be 8 or 16 (cells of a 32x32 image), got {self.grid}")
        if not isinstance(self.objective, str) or self.objective not in RECIPES:
            raise ConfigError(f"objective must be 'ssl' or 'supervised', got {self.objective!r}")
        positive_float(self.setting("epochs"), "epochs (--epochs)")
        if positive_int(self.batch_size, "batch_size (--batch-size)") < 2:
            raise ConfigError(f"batch_size (--batch-size) must be at least 2 (the contrastive terms need pairs), "
                              f"got {self.batch_size}")
        positive_float(self.lr, "lr (--lr)")
        crop_min = finite_float(self.setting("crop_min"), "crop_min (--crop-min, the smallest crop area)", low=0.0, high=1.0)
        if crop_min == 0:
            raise ConfigError("crop_min (--crop-min) must be above 0 (a crop needs some area), e.g. 0.35")
        for name in ("weight_decay", "dense_weight"):
            finite_float(getattr(self, name), name, low=0.0)
        positive_float(self.temperature, "temperature")
        for name in ("dense_cells", "width", "dim"):
            positive_int(getattr(self, name), name)
        non_negative_int(self.res_blocks, "res_blocks")
        non_negative_int(self.seed, "seed (--seed)")

    def setting(self, name: str) -> float:
        """The value of ``name`` (a ``RECIPES`` field): this config's own, or where left at None, its
        objective's recipe's."""
        value = getattr(self, name)
        return RECIPES[self.objective].get(name) if value is None else value

    def resolved(self) -> FashionTrainConfig:
        """This config with the settings left at None taken from its objective's recipe (``RECIPES``);
        kept apart from ``__init__`` so that ``dataclasses.replace(cfg, objective=...)`` takes the new
        objective's recipe, not the old one's."""
        recipe = {name: self.setting(name) for name in RECIPES[self.objective] if getattr(self, name) is None}
        return replace(self, **recipe) if recipe else self


class _Projector(nn.Module):
    """MLP head used only during training (SimCLR's projection, applied per vector)."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def load_fashion_images(split: str, root: str | None = None) -> tuple[Tensor, Tensor]:
    """The split as padded float images ``(N, 1, 32, 32)`` in [0, 1] and int64 labels.

    One grey channel keeps the 60 000 training images at 245 MB; ``FashionEncoderNet`` and
    ``FrozenEncoder`` accept it as well as the 3-channel replicated form, which equals it.
    """
    from mirai.data.fashion_mnist import load_fashion_mnist
    from mirai.data.transforms import FASHION_MNIST_PAD

    images, labels = load_fashion_mnist(split, root)
    x = torch.from_numpy(images).float().div_(255.0)[:, None]
    x = F.pad(x, [FASHION_MNIST_PAD] * 4, value=0.0)
    return x, torch.from_numpy(labels)


def train_fashion_encoder(cfg: FashionTrainConfig, root: str | None = None,
                          log_every: int = 50) -> tuple[FashionEncoderNet, dict]:
    """Train a ``FashionEncoderNet`` on the Fashion-MNIST training split; returns (net, training log)."""
    from tqdm import tqdm

    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, labels = load_fashion_images("train", root)
    net = FashionEncoderNet(FashionEncoderArgs(grid=cfg.grid, width=cfg.width, dim=cfg.dim,
                                                res_blocks=cfg.res_blocks))
    global_head: nn.Module = (_Projector(cfg.dim, 512, 128) if cfg.objective == "ssl"
                              else nn.Linear(cfg.dim, 10))
    dense_head = _Projector(cfg.dim, 256, 128)
    params = [*net.parameters(), *global_head.parameters(), *dense_head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(images) // cfg.batch_size
    total = max(1, round(cfg.epochs * steps_per_epoch))
    warmup = min(200, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    for module in (net, global_head, dense_head):
        module.train()
    history: list[dict] = []
    order = torch.empty(0, dtype=torch.long)
    start = time.time()
    bar = tqdm(range(total), desc=f"train fashion encoder ({cfg.objective}, grid {cfg.grid})", unit="step",
               disable=None)
    for step in bar:
        if len(order) < cfg.batch_size:  # reshuffle each epoch, dropping the ragged tail
            order = torch.randperm(len(images), generator=gen)
        idx, order = order[: cfg.batch_size], order[cfg.batch_size:]
        x, y = images[idx], labels[idx]
        theta_a, theta_b = (random_crops(len(x), gen, (cfg.crop_min, 1.0)) for _ in range(2))
        view_a, view_b = apply_view(x, theta_a, gen), apply_view(x, theta_b, gen)
        fmap = net(torch.cat([view_a, view_b]))  # one pass for both views: BatchNorm sees both
        fmap_a, fmap_b = fmap.chunk(2)
        pooled = fmap.mean(dim=(2, 3))
        if cfg.objective == "ssl":
            z = global_head(pooled)
            global_loss = info_nce(*z.chunk(2), cfg.temperature)
        else:
            global_loss = F.cross_entropy(global_head(pooled), torch.cat([y, y]))
        dense_loss = _dense_loss(fmap_a, fmap_b, theta_a, theta_b, dense_head, cfg, gen)
        loss = global_loss + cfg.dense_weight * dense_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == total - 1:
            entry = {"step": step, "global": round(global_loss.item(), 4), "dense": round(dense_loss.item(), 4),
                     "lr": sched.get_last_lr()[0], "seconds": round(time.time() - start, 1)}
            history.append(entry)
            bar.set_postfix(glob=entry["global"], dense=entry["dense"])
    net.eval()
    return net, {"steps": total, "seconds": round(time.time() - start, 1), "history": history}


def _dense_loss(fmap_a: Tensor, fmap_b: Tensor, theta_a: Tensor, theta_b: Tensor, head: nn.Module,
                cfg: FashionTrainConfig, gen: torch.Generator) -> Tensor:
    """InfoNCE between A's cells and B's features at the same image points (both directions)."""
    grid = fmap_a.shape[-1]
    cells, where_b, valid = matching_cells(theta_a, theta_b, grid, cfg.dense_cells, gen)
    feats_a = fmap_a.flatten(2).transpose(1, 2)  # (B, N, C)
    picked_a = feats_a.gather(1, cells[..., None].expand(-1, -1, feats_a.shape[-1]))
    # Bilinear read of B's map at A's cell centres: B's cells tile [-1, 1] like A's do.
    picked_b = F.grid_sample(fmap_b, where_b[:, :, None, :], mode="bilinear",
                             align_corners=False)[..., 0].transpose(1, 2)
    a, b = picked_a[valid], picked_b[valid]
    if len(a) < 2:  # two views that share no cell centre: nothing to align this step
        return fmap_a.sum() * 0.0
    return info_nce(head(a), head(b), cfg.temperature)


def parameter_count(module: nn.Module) -> int:
    """Number of parameters of ``module`` (recorded in the encoder checkpoint's ``meta``)."""
    return int(sum(np.prod(p.shape) for p in module.parameters()))
