"""``build_auxiliary_loss``: from a ``ForesightConfig`` to the loss the trainer calls."""

from __future__ import annotations

from torch import nn

from mirai.errors import ConfigError
from mirai.foresight.config import ForesightConfig
from mirai.foresight.diagnostic import OutputDiagnosticLoss
from mirai.foresight.heads import build_head
from mirai.foresight.loss import ForesightLoss, HeadsLoss
from mirai.foresight.pairs import head_pairs
from mirai.foresight.sources import EMASource, EncoderSource, Source, ViewStore, cache_store_features


def build_source(
    cfg: ForesightConfig,
    layer: int,
    model: nn.Module,
    ema: nn.Module | None,
    *,
    ema_warmup: bool = False,
    store: ViewStore | None = None,
    encoder: nn.Module | None = None,
) -> Source:
    """The target source named by ``cfg.source``; an encoder is built from ``cfg.encoder`` if not
    given, and with ``cfg.cache_features`` its features of every view in ``store`` are computed here."""
    if cfg.source == "ema":
        if ema is None:
            raise ConfigError("foresight.source=ema needs the EMA model; the trainer must pass it")
        return EMASource(model, ema, layer, cfg.teacher_decay, ema_warmup)
    if cfg.cache_features and store is None:
        raise ConfigError("foresight.cache_features=true needs the code store whose views it encodes")
    if encoder is None:
        from mirai.foresight.encoders import build_encoder  # imports timm: only when Mirai-I is used

        spec = cfg.encoder_spec(model.args.dim)
        encoder = build_encoder(spec, model.args.grid_size, device=next(model.parameters()).device)
    if cfg.cache_features:
        return EncoderSource(features=cache_store_features(encoder, store), num_views=store.num_views)
    return EncoderSource(encoder)


def build_auxiliary_loss(
    cfg: ForesightConfig,
    model: nn.Module,
    ema: nn.Module | None,
    *,
    ema_warmup: bool = False,
    store: ViewStore | None = None,
    encoder: nn.Module | None = None,
) -> HeadsLoss | None:
    """The foresight loss (or the output-level diagnostic) for ``model``; None when disabled.

    ``ema`` is the EMA the trainer samples from (Mirai-E's teacher unless
    ``cfg.teacher_decay`` gives the teacher its own copy, which then follows ``ema_warmup``
    like the sampled EMA). ``store`` is the code store the run trains on (read only for
    ``cfg.cache_features``). ``encoder`` (``encoder(images01) -> (B, g*g, C)`` with
    ``feature_dim``) overrides ``cfg.encoder``. The heads are created on the model's device.
    """
    if not cfg.enabled:
        return None
    cfg.validate()  # a config built in Python skips from_dict's checks (k > MAX_HEADS built them all)
    args = model.args
    schedules, warmup = cfg.schedules(), cfg.warmup_spec()
    common = dict(pair_with=cfg.pair_with, align_class_token=cfg.align_class_token, cells=model.sequence_cells())
    device = next(model.parameters()).device
    if cfg.output_diagnostic:
        if args.order != "raster":
            raise ConfigError("foresight.output_diagnostic (the Table 1 ablation) is defined for raster order; "
                              "use it without order: par")
        pairs = head_pairs(args.grid_size, cfg.layout, "ema", cfg.k, cfg.offsets, **common)
        heads = [build_head(cfg.head, args.dim, args.dim, cfg.head_hidden) for _ in pairs]
        loss: HeadsLoss = OutputDiagnosticLoss(model, heads, pairs, schedules, warmup, cfg.reduction)
        return loss.to(device)
    layer = cfg.resolve_layer(args.n_layer)
    source = build_source(cfg, layer, model, ema, ema_warmup=ema_warmup, store=store, encoder=encoder)
    pairs = head_pairs(args.grid_size, cfg.layout, cfg.source, cfg.k, cfg.offsets, **common)
    heads = [build_head(cfg.head, args.dim, source.feature_dim, cfg.head_hidden) for _ in pairs]
    loss = ForesightLoss(source, heads, pairs, schedules, layer, warmup, cfg.reduction)
    return loss.to(device)
