"""How well a tokenizer reconstructs held-out images, and the k-means baseline it must beat.

Metrics are on the [0, 1] pixel scale: MSE and PSNR (peak 1) are computed per image and
averaged over images, after clipping the reconstruction to the valid range. Codebook
usage is the fraction of codes that occur at least once on the evaluated images;
perplexity is exp(entropy) of their code histogram (equal to the codebook size when
every code is used equally often).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from mirai.models.vq import VQModel


def _image_errors(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image MSE on the [0, 1] scale of [-1, 1] tensors (B, C, H, W)."""
    diff = (recon.clamp(-1, 1) - images) / 2
    return diff.pow(2).flatten(1).mean(1)


def _summary(errors: torch.Tensor, counts: torch.Tensor) -> dict:
    probs = counts.double() / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    return {
        "n_images": int(errors.numel()),
        "mse": errors.double().mean().item(),
        "psnr": (-10 * torch.log10(errors.double().clamp_min(1e-10))).mean().item(),
        "codebook_size": int(counts.numel()),
        "codes_used": int((counts > 0).sum()),
        "codebook_usage": (counts > 0).double().mean().item(),
        "perplexity": math.exp(entropy),
    }


@torch.no_grad()
def reconstruction_report(
    model: VQModel, images: torch.Tensor, batch_size: int = 256, progress: bool = True
) -> dict:
    """MSE, PSNR, codebook usage and perplexity of ``model`` on ``images`` (N, 3, H, W) in [-1, 1]."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    errors, counts = [], torch.zeros(model.codebook_size, dtype=torch.long)
    for start in tqdm(range(0, len(images), batch_size), desc="reconstruct", disable=None if progress else True,
                      leave=False):
        x = images[start : start + batch_size].to(device)
        indices = model.encode_to_indices(x)
        errors.append(_image_errors(model.decode_indices(indices), x).cpu())
        counts += torch.bincount(indices.flatten().cpu(), minlength=model.codebook_size)
    model.train(was_training)
    report = _summary(torch.cat(errors), counts)
    report["grid"] = list(indices.shape[1:])
    return report


def _patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N * H/p * W/p, C * p * p) non-overlapping patches."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, c * patch * patch)


def _grey_if_possible(images: torch.Tensor) -> tuple[torch.Tensor, int]:
    # Grey images replicated to 3 channels (Fashion-MNIST) cluster identically on one channel,
    # at a third of the cost; the reconstruction is replicated back afterwards.
    if images.size(1) > 1 and bool((images == images[:, :1]).all()):
        return images[:, :1], images.size(1)
    return images, 1


def kmeans_baseline(
    train_images: torch.Tensor,
    eval_images: torch.Tensor,
    patch: int,
    codebook_size: int,
    fit_patches: int = 200_000,
    seed: int = 0,
) -> dict:
    """Fit k-means with ``codebook_size`` centres to ``patch``x``patch`` pixel patches of
    ``train_images`` and report how well it reconstructs ``eval_images`` (both (N, C, H, W)
    in [-1, 1]), with the same metrics as ``reconstruction_report``.

    This is the simplest tokenizer with the same token grid and vocabulary as a VQ of
    downsample factor ``patch``: each patch is replaced by its nearest centre.
    """
    from sklearn.cluster import KMeans

    if train_images.shape[2] % patch or train_images.shape[3] % patch:
        raise ValueError(f"image size {tuple(train_images.shape[2:])} is not a multiple of the patch size {patch}")
    train, repeat = _grey_if_possible(train_images)
    evaluate, _ = _grey_if_possible(eval_images)
    samples = _patches(train, patch).numpy().astype(np.float64)
    rng = np.random.default_rng(seed)
    if len(samples) > fit_patches:
        samples = samples[rng.choice(len(samples), fit_patches, replace=False)]
    kmeans = KMeans(n_clusters=codebook_size, n_init=1, max_iter=100, random_state=seed).fit(samples)

    n, c, h, w = evaluate.shape
    labels = torch.from_numpy(kmeans.predict(_patches(evaluate, patch).numpy().astype(np.float64)))
    centres = torch.from_numpy(kmeans.cluster_centers_).float()
    recon = centres[labels].reshape(n, h // patch, w // patch, c, patch, patch)
    recon = recon.permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
    errors = _image_errors(recon.repeat(1, repeat, 1, 1), eval_images)
    report = _summary(errors, torch.bincount(labels, minlength=codebook_size))
    report.update(grid=[h // patch, w // patch], patch=patch, fit_patches=len(samples))
    return report
