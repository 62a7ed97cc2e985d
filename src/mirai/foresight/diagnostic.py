"""Output-level foresight, the injection-level ablation of Table 1.

Instead of aligning an intermediate hidden state with the EMA's hidden states, K extra
heads on the *last* block predict future tokens with cross-entropy. Head k uses the same
pairs as Mirai-E's head k and predicts, at student position p, the token that the paired
teacher position p' predicts: x_{p'+1}, i.e. ``tokens[:, p']``. So with K=3 (current,
right, below) the heads predict the next token (a second next-token head), the token
after it, and the token below it. Each head maps d -> d and shares the GPT's final norm
and output layer (as in multi-token prediction), so it adds no vocabulary-sized matrix;
the shared layers are referenced, not registered, so the module's parameters are the
heads alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mirai.foresight.loss import HeadsLoss
from mirai.foresight.schedules import LambdaSchedule


class OutputDiagnosticLoss(HeadsLoss):
    """Cross-entropy of extra last-block heads on the tokens the Mirai-E pairs point at."""

    name = "output_foresight"

    def __init__(
        self,
        model: nn.Module,
        heads: list[nn.Module],
        head_pairs: list[tuple[torch.Tensor, torch.Tensor]],
        schedules: list[LambdaSchedule],
        warmup: tuple[float, str] = (0.0, "epoch"),
        reduction: str = "sum",
    ):
        super().__init__(heads, head_pairs, schedules, model.args.n_layer, warmup, reduction)
        self._unembed = (model.norm, model.output)  # a tuple, so they are not registered as submodules

    def targets(self, batch: dict) -> torch.Tensor:
        return batch["tokens"]

    def head_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        norm, output = self._unembed
        logits = output(norm(pred)).float()
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())
