"""Where foresight targets come from. A source answers ``targets(batch) -> (B, T, C)``.

Sources are deliberately not ``nn.Module``s: they hold frozen networks (the EMA model, an
image encoder) that must never be registered under the loss module, or they would end up
in the optimizer and in the saved training state of the heads.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol

import torch
from torch import nn

from mirai.errors import ConfigError


class Source(Protocol):
    feature_dim: int

    def targets(self, batch: dict) -> torch.Tensor:
        """Stop-gradient targets (B, T, C), indexed by the target positions of ``pairs``."""
        ...


@contextmanager
def frozen_eval(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode (no dropout) without grad, then restore every submodule's mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


class EMASource:
    """Mirai-E: the EMA model itself, on the same tokens and true labels, cut after block ``layer``.

    By default no copy of the weights is made: the EMA the trainer keeps for sampling is the
    teacher. With ``foresight.teacher_decay`` the trainer passes a separate EMA copy instead.
    Eval mode switches off token/residual dropout and class dropout (so the label is the
    true one). Targets: teacher positions 0..N-1 (it reads ``tokens[:, :-1]``), width d.
    """

    def __init__(self, ema_model: nn.Module, layer: int):
        n_layer = ema_model.args.n_layer
        if not 1 <= layer <= n_layer:
            raise ConfigError(f"foresight layer {layer} is outside the EMA model's blocks 1..{n_layer}")
        self.ema, self.layer = ema_model, layer
        self.feature_dim = ema_model.args.dim

    def targets(self, batch: dict) -> torch.Tensor:
        with frozen_eval(self.ema):
            return self.ema(batch["tokens"][:, :-1], batch["labels"], stop_after=self.layer)


class EncoderSource:
    """Mirai-I: patch features of a frozen image encoder, one per grid cell in raster order.

    ``encoder(images01) -> (B, g*g, C)`` with ``encoder.feature_dim == C``; images are the
    exact crop/flip views that produced the tokens, in [0, 1]. With ``features`` (a cache
    of shape (num_items, g*g, C), e.g. precomputed once for every stored view), batches
    carrying ``feature_index`` are served from it instead of running the encoder.
    """

    def __init__(self, encoder: nn.Module | None = None, features: torch.Tensor | None = None):
        if encoder is None and features is None:
            raise ConfigError("the encoder source needs an encoder or a tensor of cached features")
        if encoder is not None:
            for p in encoder.parameters():
                p.requires_grad_(False)
        self.encoder, self.features = encoder, features
        self.feature_dim = int(features.shape[-1] if features is not None else encoder.feature_dim)

    def targets(self, batch: dict) -> torch.Tensor:
        tokens = batch["tokens"]
        if self.features is not None and "feature_index" in batch:
            index = batch["feature_index"].to(self.features.device)
            out = self.features[index].to(tokens.device, non_blocking=True).float()
        elif self.encoder is not None and "images" in batch:
            with frozen_eval(self.encoder):
                out = self.encoder(batch["images"])
        else:
            raise ConfigError(
                "the encoder source needs batch['images'] (with an encoder) or batch['feature_index']"
                " (with cached features); the batch has neither usable"
            )
        if out.shape[:2] != tokens.shape[:2]:
            raise ConfigError(
                f"encoder features have shape {tuple(out.shape)} but the batch has {tuple(tokens.shape)} tokens;"
                " the encoder's patch grid must equal the token grid (resolution 14*g for DINOv2)"
            )
        return out
