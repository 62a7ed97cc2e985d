"""What a training step minimises: next-token prediction plus the auxiliary loss (foresight), as one module.

The trainer only calls ``Objective(batch, progress)``; which auxiliary loss it holds (Mirai-I, Mirai-E or
none) and in which order the GPT reads its tokens (raster or PAR) stay behind this seam.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mirai.foresight.base import Progress
from mirai.models import GPT


def ntp_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of position p predicting token p (the class position predicts x_1)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())


class Objective(nn.Module):
    """The GPT and the auxiliary heads as one module, so that one DDP wrapper syncs both."""

    def __init__(self, gpt: GPT, auxiliary: nn.Module | None):
        super().__init__()
        self.gpt = gpt
        self.auxiliary = auxiliary

    def forward(self, batch: dict, progress: Progress) -> tuple[torch.Tensor, dict]:
        # Progress is read here, outside the compiled steps: a new weight is a new input, not a new graph.
        weights, weight_logs = self.auxiliary.weights(progress) if self.auxiliary is not None else (None, {})
        loss, logs = self._ntp_step(batch) if weights is None else self._auxiliary_step(batch, weights)
        return loss, {**logs, **weight_logs, "loss/total": loss.detach()}

    def compile(self, *args, **kwargs) -> None:
        """``torch.compile`` in place (modules and state-dict names stay) the two kinds of step, each on first
        use: NTP only (warm-up, or no auxiliary loss) and NTP plus it. The warm-up's end recompiles nothing."""
        self._ntp_step = torch.compile(self._ntp_step, *args, **kwargs)
        self._auxiliary_step = torch.compile(self._auxiliary_step, *args, **kwargs)

    def _ntp_step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self._ntp(batch)[:2]

    def _auxiliary_step(self, batch: dict, weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss, logs, hidden = self._ntp(batch)
        terms, aux_logs = self.auxiliary(batch, hidden, weights)
        for name, term in terms.items():
            loss = loss + term
            logs[f"loss/{name}"] = term.detach()
        return loss, {**logs, **aux_logs}

    def _ntp(self, batch: dict) -> tuple[torch.Tensor, dict, dict[int, torch.Tensor]]:
        # The same call in both steps: where a graph breaks (FSDP), its own frame compiles once.
        sequence, labels = self.gpt.to_sequence(batch["tokens"]), batch["labels"]  # the model's own order
        layers = self.auxiliary.hidden_layers if self.auxiliary is not None else ()
        logits, hidden = self.gpt.forward_with_hidden(sequence[:, :-1], labels, layers)
        loss = ntp_loss(logits, sequence)
        return loss, {"loss/ntp": loss.detach()}, hidden
