"""Foresight alignment (Mirai-I / Mirai-E): pairs, heads, schedules, sources, the loss.

The trainer sees one object, built by ``build_auxiliary_loss(cfg, model, ema_model)``: an
``nn.Module`` holding only the heads, with ``hidden_layers`` and
``loss(batch, hidden, progress) -> (terms, logs)`` (``base.AuxiliaryLoss``). Image
encoders live in ``mirai.foresight.encoders`` and are imported only when used.
"""

from mirai.foresight.base import AuxiliaryLoss, Progress
from mirai.foresight.build import build_auxiliary_loss
from mirai.foresight.config import ForesightConfig
from mirai.foresight.diagnostic import OutputDiagnosticLoss
from mirai.foresight.heads import MLPHead, TransformerHead, build_head
from mirai.foresight.loss import ForesightLoss
from mirai.foresight.schedules import LambdaSchedule
from mirai.foresight.sources import EMASource, EncoderSource

# Bound last: the function ``pairs`` replaces the submodule of the same name as the
# package attribute, so ``mirai.foresight.pairs(grid_size, ...)`` is the function.
from mirai.foresight.pairs import pairs  # noqa: E402

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
    "TransformerHead",
    "build_auxiliary_loss",
    "build_head",
    "pairs",
]
