"""Exponential moving averages of weights (LlamaGen's ``update_ema``), shared by the trainer's
sampled EMA and any EMA teacher a foresight source keeps."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(decay: float, step: int, warmup: bool) -> float:
    """The decay used after optimizer step ``step`` (0-based): ``decay``, capped at
    ``(1 + step) / (10 + step)`` while ``warmup`` so early weights are forgotten quickly."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model``, parameter by parameter (buffers untouched)."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
