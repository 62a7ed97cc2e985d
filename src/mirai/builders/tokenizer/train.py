"""Train a VQ tokenizer (``mirai tokenizer train``).

Loss = reconstruction (L2 or L1) + codebook term + beta * commitment term, with LlamaGen's
l2-normalised codes, and optionally a PatchGAN hinge adversarial term (off by default: on
small grey data it mostly adds noise). There is no perceptual (LPIPS) term: it needs
ImageNet-trained VGG weights that cannot be fetched offline, and VGG features of 32x32 grey
images would say little anyway.

Small codebooks lose codes that no encoder output is nearest to; every ``restart_every``
steps such dead codes are re-seeded from encoder outputs of the current batch (and their
Adam moments reset), until ``restart_stop`` of the run so the final codes can settle.

A run writes to ``out_dir``: ``config.yaml`` (the resolved config), ``log.jsonl``
(training losses and held-out evaluations), ``checkpoint/`` (a Mirai checkpoint, rewritten
atomically every ``checkpoint_every`` steps and at the end) and ``report.json`` (the final
held-out reconstruction report).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mirai import checkpoint
from mirai.builders.tokenizer.discriminator import PatchDiscriminator, generator_loss, hinge_d_loss
from mirai.builders.tokenizer.evaluate import kmeans_baseline, reconstruction_report
from mirai.config import save_yaml, to_dict
from mirai.data.options import finite_float, non_negative_int, positive_float, positive_int, resolve_device
from mirai.errors import ConfigError, TrainingError, refuse_under_file
from mirai.models.vq import VectorQuantizer, VQModel, build_vq, vq_args


@dataclass
class ModelSection:
    """The VQ tokenizer to train: a named size plus any ``VQArgs`` field (LlamaGen's VQ-VAE)."""
    name: str = "VQ-S4"
    codebook_size: int = 512
    codebook_dim: int = 8
    # Any other ``VQArgs`` field, e.g. {ch: 16, ch_mult: [1, 2, 4], commit_loss_beta: 0.25}.
    arch: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """The named architecture with these settings must exist (checked without building it)."""
        try:
            vq_args(self.name, codebook_size=self.codebook_size, codebook_dim=self.codebook_dim, **self.arch)
        except ConfigError as err:
            raise ConfigError(f"model: {err}") from None
        except TypeError as err:  # a wrongly typed arch value
            raise ConfigError(f"model.arch: {err}") from None


@dataclass
class DataSection:
    """Images the tokenizer trains on, and the held-out tail of the training split it reports on."""
    dataset: Literal["fashion_mnist"] = "fashion_mnist"
    root: str | None = None  # default: the dataset's own search order
    # Images at the end of the training split kept out of training, for the held-out report.
    val_size: int = 2000
    train_limit: int | None = None  # train on only the first N images (quick runs, tests)

    def validate(self) -> None:
        if self.val_size < 1:
            raise ConfigError("data.val_size must be at least 1")
        if self.train_limit is not None and self.train_limit < 1:
            raise ConfigError("data.train_limit must be positive (or null for all images)")


@dataclass
class LossSection:
    """LlamaGen's tokenizer loss: reconstruction + codebook/commitment (+ an optional PatchGAN term)."""
    recon: Literal["l2", "l1"] = "l2"
    codebook_weight: float = 1.0
    adversarial_weight: float = 0.0  # 0 disables the discriminator entirely
    adversarial_start: int = 0  # step at which the adversarial term switches on
    disc_lr: float = 1e-4

    def validate(self) -> None:
        for name in ("codebook_weight", "adversarial_weight"):
            finite_float(getattr(self, name), f"loss.{name}", low=0.0)
        non_negative_int(self.adversarial_start, "loss.adversarial_start")
        positive_float(self.disc_lr, "loss.disc_lr")


@dataclass
class OptimSection:
    """AdamW with linear warm-up then cosine decay to ``lr * min_lr_ratio``."""
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables clipping

    def validate(self) -> None:
        positive_float(self.lr, "optim.lr")
        for beta in self.betas:
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        finite_float(self.weight_decay, "optim.weight_decay", low=0.0)
        non_negative_int(self.warmup_steps, "optim.warmup_steps")
        finite_float(self.min_lr_ratio, "optim.min_lr_ratio", low=0.0, high=1.0)
        finite_float(self.grad_clip, "optim.grad_clip (0 disables clipping)", low=0.0)


@dataclass
class TokenizerTrainConfig:
    """Everything `mirai tokenizer train` reads; saved as config.yaml beside the weights."""
    out_dir: str = "runs/tokenizer"
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch CPU threads; 0 keeps PyTorch's default
    steps: int = 2000
    batch_size: int = 64
    restart_every: int = 100  # dead-code restart interval in steps; 0 disables restarts
    restart_stop: float = 0.8  # fraction of the run after which codes are no longer restarted
    log_every: int = 50
    eval_every: int = 1000  # held-out evaluation interval (also runs at the end)
    checkpoint_every: int = 1000
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)

    def validate(self) -> None:
        """Every setting, sections included, before any data is read (``ConfigError`` naming the first bad one)."""
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        non_negative_int(self.restart_every, "restart_every (0 disables restarts)")
        finite_float(self.restart_stop, "restart_stop (a fraction of the run)", low=0.0, high=1.0)
        non_negative_int(self.threads, "threads (0 keeps PyTorch's default)")
        non_negative_int(self.seed, "seed")
        resolve_device(self.device)
        for section in (self.model, self.data, self.loss, self.optim):  # also when built without from_dict
            section.validate()
        refuse_under_file(Path(self.out_dir), "out_dir", folder="directory for the run")


# ---------------------------------------------------------------------------- data
def fashion_mnist_images(split: str, root: str | None = None) -> np.ndarray:
    """Fashion-MNIST ``split`` as uint8 (N, 28, 28)."""
    from mirai.data.fashion_mnist import load_fashion_mnist

    images, _ = load_fashion_mnist(split, root=root)
    return images


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) Fashion-MNIST -> float (N, 3, 32, 32) in [-1, 1] (the project's convention)."""
    from mirai.data.transforms import fashion_mnist_to_rgb, to_model_range

    return to_model_range(fashion_mnist_to_rgb(images))


def evaluate_checkpoint(path: str | Path, split: str = "test", limit: int | None = None, root: str | None = None,
                        kmeans: bool = False, batch_size: int = 256) -> dict:
    """Reconstruction report of the VQ checkpoint at ``path`` on the first ``limit`` images (all by
    default) of the Fashion-MNIST ``split``, and with ``kmeans`` the k-means patch baseline fitted on
    the training split (``mirai tokenizer eval``). Settings are checked before any data is read."""
    if limit is not None:
        positive_int(limit, "limit (--limit)")
    positive_int(batch_size, "batch_size (--batch-size)")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be train or test, got {split!r}")
    model = checkpoint.load(path, VQModel)
    images = to_model_input(fashion_mnist_images(split, root)[:limit])
    report = {"checkpoint": str(path), "split": split,
              "vq": reconstruction_report(model, images, batch_size=batch_size)}
    if kmeans:
        train = to_model_input(fashion_mnist_images("train", root))
        report["kmeans"] = kmeans_baseline(train, images, model.downsample_factor, model.codebook_size)
    return report


def split_train_val(images: np.ndarray, cfg: DataSection) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) images: the last ``val_size`` held out, then at most ``train_limit`` kept. Raises ConfigError if none remain."""
    if cfg.val_size >= len(images):
        raise ConfigError(f"data.val_size={cfg.val_size} leaves no training images out of {len(images)}")
    train, val = images[: -cfg.val_size], images[-cfg.val_size :]
    if cfg.train_limit is not None:
        train = train[: cfg.train_limit]
    return train, val


# ---------------------------------------------------------------------------- pieces
def learning_rate(step: int, cfg: OptimSection, total: int) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``total`` steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def reseed_dead_codes(
    quantizer: VectorQuantizer,
    dead: torch.Tensor,
    latents: torch.Tensor,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Move the codes flagged in ``dead`` (bool, codebook_size) onto random rows of ``latents``
    (N, D encoder outputs, normalised when the codebook is); returns how many were moved.

    Their Adam moments are zeroed too, so stale momentum does not drag them straight back.
    """
    ids = dead.nonzero().flatten()
    if ids.numel() == 0 or latents.numel() == 0:
        return 0
    pick = torch.randint(len(latents), (ids.numel(),), generator=generator).to(latents.device)
    weight = quantizer.embedding.weight
    weight[ids] = latents[pick].to(weight.dtype)
    state = optimizer.state.get(weight, {}) if optimizer is not None else {}
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][ids] = 0
    return int(ids.numel())


def _recon_loss(recon: torch.Tensor, images: torch.Tensor, kind: str) -> torch.Tensor:
    return F.mse_loss(recon, images) if kind == "l2" else F.l1_loss(recon, images)


class _Log:
    """Appends JSON lines to ``log.jsonl``."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def _save(model: VQModel, out: Path, step: int, cfg: TokenizerTrainConfig, val: dict | None) -> None:
    meta = {"step": step, "train_config": to_dict(cfg)}
    if val is not None:
        meta["val_report"] = val
    checkpoint.save(out / "checkpoint", model, meta=meta)


# ---------------------------------------------------------------------------- training
def train_tokenizer(
    cfg: TokenizerTrainConfig,
    train_images: np.ndarray | None = None,
    val_images: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[VQModel, dict]:
    """Train a tokenizer as ``cfg`` says; returns the model (eval mode) and its held-out report.

    ``train_images``/``val_images`` (uint8 (N, 28, 28)) replace the dataset when given (tests).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    if train_images is None or val_images is None:
        train_images, val_images = split_train_val(fashion_mnist_images("train", cfg.data.root), cfg.data)
    if len(train_images) < cfg.batch_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(train_images)} training images")
    val = to_model_input(val_images)

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    log = _Log(out / "log.jsonl")
    log.path.write_text("")

    model = build_vq(cfg.model.name, cfg.model.codebook_size, cfg.model.codebook_dim, **cfg.model.arch).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)
    disc = disc_opt = None
    if cfg.loss.adversarial_weight > 0:
        disc = PatchDiscriminator(model.args.in_channels).to(device).train()
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.loss.disc_lr, betas=(0.5, 0.9))

    usage = torch.zeros(model.codebook_size, dtype=torch.long, device=device)
    restart_until = int(cfg.restart_stop * cfg.steps)
    order, cursor = torch.randperm(len(train_images), generator=generator), 0
    report: dict = {}
    start_time = time.time()
    bar = tqdm(range(cfg.steps), desc="tokenizer", disable=None if progress else True, dynamic_ncols=True)
    for step in bar:
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(train_images), generator=generator), 0
        batch = order[cursor : cursor + cfg.batch_size].numpy()
        cursor += cfg.batch_size
        x = to_model_input(train_images[batch]).to(device)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg.optim, cfg.steps)

        z = model.encode_latent(x)
        q = model.quantize(z)
        recon = model.decode_latent(q.z_q)
        rec_loss = _recon_loss(recon, x, cfg.loss.recon)
        loss = rec_loss + cfg.loss.codebook_weight * q.codebook_loss + q.commit_loss
        adversarial = disc is not None and step >= cfg.loss.adversarial_start
        if adversarial:
            loss = loss + cfg.loss.adversarial_weight * generator_loss(disc(recon))
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {step}; the last checkpoint in {out / 'checkpoint'} is kept."
                " Lower optim.lr or check the data."
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        if adversarial:
            d_loss = hinge_d_loss(disc(x), disc(recon.detach()))
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()

        usage += torch.bincount(q.indices.flatten(), minlength=model.codebook_size)
        restarted = 0
        if cfg.restart_every and (step + 1) % cfg.restart_every == 0:
            if step < restart_until:
                latents = model.quantize.flatten(z.detach())
                restarted = reseed_dead_codes(model.quantize, usage == 0, latents, opt, generator)
            usage.zero_()

        if (step + 1) % cfg.log_every == 0 or restarted:
            record = {
                "step": step + 1, "loss": loss.item(), "recon": rec_loss.item(),
                "codebook": q.codebook_loss.item(), "commit": q.commit_loss.item(),
                "lr": opt.param_groups[0]["lr"], "restarted": restarted, "seconds": time.time() - start_time,
            }
            if adversarial:
                record["disc"] = d_loss.item()
            log.write(record)
            bar.set_postfix(loss=f"{loss.item():.4f}", recon=f"{rec_loss.item():.4f}")
        last = step + 1 == cfg.steps
        if (step + 1) % cfg.eval_every == 0 or last:
            report = reconstruction_report(model, val, progress=False)
            log.write({"step": step + 1, "val": report})
            bar.write(f"step {step + 1}: held-out PSNR {report['psnr']:.2f} dB, "
                      f"{report['codes_used']}/{report['codebook_size']} codes used")
        if (step + 1) % cfg.checkpoint_every == 0 or last:
            _save(model, out, step + 1, cfg, report or None)

    report = {**report, "steps": cfg.steps, "train_seconds": time.time() - start_time}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return model.eval(), report
