"""From class labels to images: GPT sampling + VQ decoding, in batches, resumable, across ranks.

Every batch has its own seed derived from (seed, batch index), so a sample set is the same
whether it is made in one go, resumed after an interruption, or split across GPUs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from mirai.data.transforms import to_uint8_hwc
from mirai.errors import ConfigError
from mirai.models.gpt import GPT
from mirai.sampling.generate import generate

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class SampleSettings:
    """How tokens are drawn. Defaults: LlamaGen-B's evaluation settings (method.md §7)."""

    cfg_scale: float = 2.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance_interval: tuple[float, float] | None = None
    precision: str = "fp32"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: choose one of {sorted(PRECISIONS)}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.guidance_interval is not None and not 0 <= self.guidance_interval[0] <= self.guidance_interval[1] <= 1:
            raise ConfigError(f"guidance_interval must be (start, end) with 0 <= start <= end <= 1")


def check_pair(gpt: GPT, vq: torch.nn.Module) -> None:
    """The GPT's vocabulary and grid must match the tokenizer that decodes its tokens."""
    codebook = vq.quantize.embedding.weight.shape[0]
    if gpt.args.vocab_size != codebook:
        raise ConfigError(
            f"GPT vocabulary ({gpt.args.vocab_size}) differs from the tokenizer's codebook ({codebook}): "
            "use the tokenizer the GPT was trained with"
        )


@torch.no_grad()
def sample_batch(
    gpt: GPT, vq: torch.nn.Module, labels: torch.Tensor, settings: SampleSettings, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHWC) and tokens (N, g*g) for one batch of labels."""
    device = next(gpt.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens = generate(
        gpt, labels.to(device), cfg_scale=settings.cfg_scale, temperature=settings.temperature,
        top_k=settings.top_k, top_p=settings.top_p, generator=generator,
        guidance_interval=settings.guidance_interval, dtype=PRECISIONS[settings.precision],
    )
    g = gpt.args.grid_size
    images = vq.decode_indices(tokens.view(-1, g, g))
    return to_uint8_hwc(images), tokens.cpu().numpy()


def class_labels(
    num_classes: int, num_samples: int, mode: str = "balanced", seed: int = 0
) -> np.ndarray:
    """Labels for an evaluation set: ``balanced`` (each class equally often, shuffled) or
    ``uniform`` (drawn independently, as LlamaGen's sample_ddp does)."""
    rng = np.random.default_rng(seed)
    if mode == "balanced":
        labels = np.arange(num_samples) % num_classes
        rng.shuffle(labels)
        return labels
    if mode == "uniform":
        return rng.integers(0, num_classes, size=num_samples)
    raise ConfigError(f"class sampling {mode!r}: choose 'balanced' or 'uniform'")


def _save_part(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def sample_to_npz(
    gpt: GPT,
    vq: torch.nn.Module,
    labels: Sequence[int] | np.ndarray,
    out: str | Path,
    settings: SampleSettings,
    seed: int = 0,
    batch_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> Path | None:
    """Sample one image per label into ADM-format ``out`` (``arr_0``, ``labels``, ``tokens``).

    Finished batches are kept in ``out``'s ``.parts`` folder, so an interrupted run resumes
    where it stopped. With several ranks, each takes every ``world_size``-th batch; rank 0
    merges once all parts exist (call after a barrier). Returns the file on rank 0.
    """
    check_pair(gpt, vq)
    out = Path(out)
    parts = out.with_name(out.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=np.int64)
    n_batches = math.ceil(len(labels) / batch_size)
    mine = [b for b in range(rank, n_batches, world_size) if not (parts / f"{b:06d}.npz").exists()]
    device = next(gpt.parameters()).device
    for b in tqdm(mine, desc="sampling", unit="batch", disable=not progress or rank != 0):
        chunk = torch.from_numpy(labels[b * batch_size : (b + 1) * batch_size])
        images, tokens = sample_batch(gpt, vq, chunk.to(device), settings, seed=seed * 1_000_003 + b)
        _save_part(parts / f"{b:06d}.npz", arr_0=images, labels=chunk.numpy(), tokens=tokens)
    if rank != 0:
        return None
    files = [parts / f"{b:06d}.npz" for b in range(n_batches)]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        return None  # other ranks are still working; they merge on a later call
    loaded = [np.load(f) for f in files]
    merged = {key: np.concatenate([d[key] for d in loaded]) for key in ("arr_0", "labels", "tokens")}
    _save_part(out, **merged)
    for f in files:
        f.unlink()
    parts.rmdir()
    return out
