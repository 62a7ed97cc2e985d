"""Sample-quality metrics from features, with the definitions of ADM's evaluator.

ADM's ``evaluations/evaluator.py`` (openai/guided-diffusion) is what the LlamaGen and Mirai
tables were measured with, so every definition here follows it:

* **FID** — Fréchet distance between Gaussians fitted to two feature sets:
  ``|mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))``, with ``np.cov`` (unbiased)
  covariances. When the square root of the product is not finite (near-singular
  covariances) ``eps·I`` (1e-6) is added to both covariances and it is taken again; a
  complex result is accepted only if the imaginary part of its diagonal is below 1e-3.
* **sFID** — the same distance on spatial features (see ``mirai.evaluation.inception``).
* **Inception Score** — ``exp(E_x KL(p(y|x) || p(y)))`` computed on consecutive chunks of
  ``split_size`` = 5000 samples (ten chunks for the usual 50 000) and averaged. ADM fixes
  the chunk size, not the number of chunks; with 10 000 samples it averages two chunks.
* **Precision / recall** (Kynkäänniemi et al. 2019) with k = 3: a point's radius is the
  squared Euclidean distance to its k-th nearest neighbour in its own set (itself
  excluded); precision = fraction of samples within the radius of at least one reference
  point, recall = fraction of reference points within the radius of at least one sample.
  Distances are exact (every row against all columns), as ADM's batched manifold
  estimator computes them; ADM evaluates the distance blocks in float16 where they do not
  overflow, this code in float32, so a pair lying on a radius to within float16 rounding
  may be counted differently.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg

FID_EPS = 1e-6
IS_SPLIT_SIZE = 5000
PR_NEIGHBOURS = 3


def _as_matrix(feats: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    feats = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (samples, features) array, got shape {feats.shape}")
    if len(feats) < 2:
        raise ValueError(f"{what} needs at least 2 samples to estimate a covariance, got {len(feats)}")
    return feats


def feature_statistics(feats: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``(N, D)`` features, in float64."""
    feats = _as_matrix(feats, "features").astype(np.float64)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                                eps: float = FID_EPS) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), ADM's numerics."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in size: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape} (different feature networks?)")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # ADM calls sqrtm(disp=False), which stays silent about singular input (common: fewer
        # samples than dimensions, or features that are always 0); the finiteness test below
        # is what decides, as in ADM.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            warnings.warn(f"Fréchet distance: the covariance product is singular; adding {eps} to the diagonals")
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # A genuine square root of S1·S2 has real trace; a small imaginary part is round-off.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: sqrtm has a large imaginary component "
                             f"({np.max(np.abs(covmean.imag)):.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance(feats_a: np.ndarray | torch.Tensor, feats_b: np.ndarray | torch.Tensor) -> float:
    """FID-style distance between two ``(N, D)`` feature sets."""
    return frechet_distance_from_stats(*feature_statistics(feats_a), *feature_statistics(feats_b))


def inception_score(logits: np.ndarray | torch.Tensor, split_size: int = IS_SPLIT_SIZE) -> float:
    """Mean over consecutive chunks of ``exp(mean KL(softmax(logits) || chunk marginal))``.

    Computed from log-softmax in float64 so that classes with probability 0 (very
    confident logits) contribute 0 instead of ``0·log 0 = nan``.
    """
    logits = torch.as_tensor(_as_matrix(logits, "logits"), dtype=torch.float64)
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for start in range(0, len(log_p), split_size):
        part_log_p = log_p[start:start + split_size]
        part_p = part_log_p.exp()
        log_marginal = part_p.mean(dim=0, keepdim=True).log()
        kl = torch.where(part_p > 0, part_p * (part_log_p - log_marginal), torch.zeros_like(part_p)).sum(dim=1)
        scores.append(float(kl.mean().exp()))
    return float(np.mean(scores))


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances by the norm expansion, clamped at 0 (ADM's form)."""
    # |a|² + |b|² - 2 a·b, fused into one matmul and in-place adds: these blocks are large.
    distances = torch.addmm(b.square().sum(1)[None, :], a, b.T, alpha=-2)
    return distances.add_(a.square().sum(1, keepdim=True)).clamp_min_(0)


def manifold_radii(feats: torch.Tensor, k: int = PR_NEIGHBOURS, block: int = 2048) -> torch.Tensor:
    """Squared distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(feats) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set, got {len(feats)}")
    # The point itself is the smallest distance (0), so the k-th neighbour is the (k+1)-th smallest.
    return torch.cat([_squared_distances(feats[i:i + block], feats).topk(k + 1, dim=1, largest=False).values[:, k]
                      for i in range(0, len(feats), block)])


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """Whether each point lies within the radius of at least one centre."""
    return torch.cat([(_squared_distances(points[i:i + block], centres) <= radii[None, :]).any(dim=1)
                      for i in range(0, len(points), block)])


def precision_recall(real_feats: np.ndarray | torch.Tensor, fake_feats: np.ndarray | torch.Tensor,
                     k: int = PR_NEIGHBOURS, device: str | torch.device = "cpu") -> tuple[float, float]:
    """Improved precision and recall of ``fake_feats`` against ``real_feats`` (k-NN manifolds)."""
    real = torch.as_tensor(_as_matrix(real_feats, "real features"), dtype=torch.float32, device=device)
    fake = torch.as_tensor(_as_matrix(fake_feats, "fake features"), dtype=torch.float32, device=device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    precision = _inside(fake, real, manifold_radii(real, k)).double().mean()
    recall = _inside(real, fake, manifold_radii(fake, k)).double().mean()
    return float(precision), float(recall)
