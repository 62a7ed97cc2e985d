"""Foresight alignment (Mirai-I / Mirai-E): pairs, heads, schedules, sources, the loss.

The trainer sees one object, built by ``build_auxiliary_loss(cfg, model, ema, ...)``: an
``nn.Module`` holding only the heads, that follows ``base.AuxiliaryLoss`` (the hidden
layers and batch fields it needs, ``loss.weights(progress) -> (weights, logs)`` outside the
compiled step, ``loss(batch, hidden, weights) -> (terms, logs)`` inside it, a
hook after each optimizer step and the states a checkpoint keeps). Per-source defaults are
in ``defaults``; image encoders live in ``encoders`` and are imported only when used.
"""

from mirai.foresight.base import AuxiliaryLoss, Progress, SavedState
from mirai.foresight.build import build_auxiliary_loss
from mirai.foresight.config import ForesightConfig
from mirai.foresight.defaults import SOURCE_DEFAULTS
from mirai.foresight.diagnostic import OutputDiagnosticLoss
from mirai.foresight.heads import MLPHead, TransformerHead, build_head
from mirai.foresight.loss import ForesightLoss
from mirai.foresight.pairs import head_pairs
from mirai.foresight.schedules import LambdaSchedule
from mirai.foresight.sources import EMASource, EncoderSource

__all__ = [
    "AuxiliaryLoss",
    "EMASource",
    "EncoderSource",
    "ForesightConfig",
    "ForesightLoss",
    "LambdaSchedule",
    "MLPHead",
    "OutputDiagnosticLoss",
    "Progress",
    "SOURCE_DEFAULTS",
    "SavedState",
    "TransformerHead",
    "build_auxiliary_loss",
    "build_head",
    "head_pairs",
]
