"""``build_auxiliary_loss``: from a ``ForesightConfig`` to the loss the trainer calls."""

from __future__ import annotations

import torch
from torch import nn

from mirai.errors import ConfigError
from mirai.foresight.config import ForesightConfig
from mirai.foresight.diagnostic import OutputDiagnosticLoss
from mirai.foresight.heads import build_head
from mirai.foresight.loss import ForesightLoss, HeadsLoss
from mirai.foresight.pairs import pairs
from mirai.foresight.sources import EMASource, EncoderSource, Source


def build_source(
    cfg: ForesightConfig,
    layer: int,
    model: nn.Module,
    ema_model: nn.Module | None,
    encoder: nn.Module | None = None,
    features: torch.Tensor | None = None,
) -> Source:
    """The target source named by ``cfg.source``; an encoder is built from ``cfg.encoder`` if not given."""
    if cfg.source == "ema":
        if ema_model is None:
            raise ConfigError("foresight.source=ema needs the EMA model; the trainer must pass it")
        return EMASource(ema_model, layer)
    if not cfg.cache_features:
        features = None
    elif features is None:
        raise ConfigError(
            "foresight.cache_features=true needs the precomputed feature tensor (indexed by batch['feature_index'])"
        )
    if encoder is None and features is None:
        from mirai.foresight.encoders import build_encoder  # imports timm: only when Mirai-I is used

        spec = cfg.encoder_spec(model.args.dim)
        encoder = build_encoder(spec, model.args.grid_size, device=next(model.parameters()).device)
    return EncoderSource(encoder, features)


def build_auxiliary_loss(
    cfg: ForesightConfig,
    model: nn.Module,
    ema_model: nn.Module | None,
    *,
    encoder: nn.Module | None = None,
    features: torch.Tensor | None = None,
) -> HeadsLoss | None:
    """The foresight loss (or the output-level diagnostic) for ``model``; None when disabled.

    ``encoder`` (an object with ``encoder(images01) -> (B, g*g, C)`` and ``feature_dim``)
    overrides ``cfg.encoder``; ``features`` is the cache used with ``cfg.cache_features``.
    The heads are created on the model's device.
    """
    if not cfg.enabled:
        return None
    args = model.args
    schedules, warmup = cfg.schedules(), cfg.warmup_spec()
    common = dict(pair_with=cfg.pair_with, align_class_token=cfg.align_class_token)
    device = next(model.parameters()).device
    if cfg.output_diagnostic:
        head_pairs = pairs(args.grid_size, cfg.layout, "ema", cfg.k, cfg.offsets, **common)
        heads = [build_head(cfg.head, args.dim, args.dim, cfg.head_hidden) for _ in head_pairs]
        loss: HeadsLoss = OutputDiagnosticLoss(model, heads, head_pairs, schedules, warmup, cfg.reduction)
        return loss.to(device)
    layer = cfg.resolve_layer(args.n_layer)
    source = build_source(cfg, layer, model, ema_model, encoder, features)
    head_pairs = pairs(args.grid_size, cfg.layout, cfg.source, cfg.k, cfg.offsets, **common)
    heads = [build_head(cfg.head, args.dim, source.feature_dim, cfg.head_hidden) for _ in head_pairs]
    loss = ForesightLoss(source, heads, head_pairs, schedules, layer, warmup, cfg.reduction)
    return loss.to(device)
