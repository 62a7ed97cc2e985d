"""The foresight loss: L_F = sum_k lambda_k * mean_{b, pairs} -cos(f_k, rho_k(h)) (docs/method.md section 2).

``reduction="sum"`` adds the weighted heads (the authors' scripts, which produced the
published tables); ``"mean"`` divides by K (the paper's Eq. 11). The module's only
parameters are the heads; the source (EMA model or encoder) stays outside it.
``HeadsLoss`` holds what the foresight loss shares with the output-level diagnostic
(heads, pairs, lambda schedules, warm-up); the subclasses say what a head is scored on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from mirai.foresight.base import Progress, SavedState
from mirai.foresight.schedules import LambdaSchedule, warming_up
from mirai.foresight.sources import Source


class HeadsLoss(nn.Module, ABC):
    """K heads on GPT block ``layer``; head k is scored at its (student, target) pairs, weighted lambda_k."""

    name = "heads"
    batch_fields: frozenset[str] = frozenset()

    def __init__(
        self,
        heads: list[nn.Module],
        head_pairs: list[tuple[torch.Tensor, torch.Tensor]],
        schedules: list[LambdaSchedule],
        layer: int,
        warmup: tuple[float, str] = (0.0, "epoch"),
        reduction: str = "sum",
    ):
        super().__init__()
        if not len(heads) == len(head_pairs) == len(schedules):
            raise ValueError(f"{len(heads)} heads, {len(head_pairs)} pair lists and {len(schedules)} schedules")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.heads, self.schedules = nn.ModuleList(heads), schedules
        self.layer, self.hidden_layers = layer, (layer,)
        self.warmup, self.reduction = warmup, reduction
        self._weights: tuple[list[float], torch.Tensor] | None = None  # the last lambdas and their tensor
        for k, (student, target) in enumerate(head_pairs):  # buffers: they follow .to(device), never saved
            self.register_buffer(f"student{k}", student, persistent=False)
            self.register_buffer(f"target{k}", target, persistent=False)

    @abstractmethod
    def targets(self, batch: dict) -> torch.Tensor:
        """What the heads are scored against, (B, T, ...), indexed by target position."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Nothing to update by default: the heads are trained by the optimizer."""

    def saved_states(self) -> dict[str, SavedState]:
        """The heads, saved as ``auxiliary.safetensors`` (the file name of older checkpoints too)."""
        return {"auxiliary": SavedState(self, "foresight heads")} if len(self.state_dict()) else {}

    @abstractmethod
    def head_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of one head's predictions (B, P, out) against its targets (B, P, ...)."""

    def weights(self, progress: Progress) -> tuple[torch.Tensor | None, dict[str, float]]:
        """(lambda_k as a (K,) float32 tensor on the heads' device, or None during the warm-up;
        the lambda logs). Computed outside a compiled step and handed to ``forward`` as a tensor,
        so that a new lambda changes an input of the compiled graph, not the graph."""
        lambdas = [schedule(progress) for schedule in self.schedules]
        if warming_up(progress, *self.warmup):
            return None, {f"{self.name}/lambda{k}": 0.0 for k in range(len(lambdas))}
        device = self.student0.device
        if self._weights is None or self._weights[0] != lambdas or self._weights[1].device != device:
            # Filled on the device: a copy of the host list would wait for the GPU (pageable memory).
            fills = [torch.full((), lam, dtype=torch.float32, device=device) for lam in lambdas]
            self._weights = lambdas, torch.stack(fills)
        return self._weights[1], {f"{self.name}/lambda{k}": lam for k, lam in enumerate(lambdas)}

    def forward(
        self, batch: dict, hidden: dict[int, torch.Tensor], weights: torch.Tensor | Progress
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """``weights``: lambda_k, (K,) float32, from ``weights(progress)`` (what the trainer's compiled
        step is given); or a ``Progress``, from which they are taken here, for one-call use outside a
        compiled step (no terms during the warm-up; the lambda logs join the logs)."""
        if isinstance(weights, Progress):
            weights, lambda_logs = self.weights(weights)
            if weights is None:
                return {}, lambda_logs
            terms, logs = self(batch, hidden, weights)
            return terms, {**logs, **lambda_logs}
        return self.score(hidden[self.layer], self.targets(batch), weights)

    def score(self, h: torch.Tensor, f: torch.Tensor, weights: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict]:
        """The weighted loss of states ``h`` (B, T, dim) of block ``layer`` against targets ``f`` from
        ``targets`` (B, T, ...), with ``weights`` lambda_k (K,); ``forward`` without computing ``f``."""
        losses = []
        for k, head in enumerate(self.heads):
            student, target = getattr(self, f"student{k}"), getattr(self, f"target{k}")
            # The whole sequence goes through the head: the transformer head attends across it.
            losses.append(self.head_loss(head(h)[:, student], f[:, target]))
        per_head = torch.stack(losses)
        total = (per_head * weights).sum()
        if self.reduction == "mean":
            total = total / len(losses)
        logs: dict = {f"{self.name}/loss{k}": v for k, v in enumerate(per_head.detach().unbind())}  # no read
        return {self.name: total}, logs


class ForesightLoss(HeadsLoss):
    """Negative cosine similarity between each head's projection and the source's stop-gradient targets."""

    name = "foresight"

    def __init__(
        self,
        source: Source,
        heads: list[nn.Module],
        head_pairs: list[tuple[torch.Tensor, torch.Tensor]],
        schedules: list[LambdaSchedule],
        layer: int,
        warmup: tuple[float, str] = (0.0, "epoch"),
        reduction: str = "sum",
    ):
        super().__init__(heads, head_pairs, schedules, layer, warmup, reduction)
        self.source = source  # a plain object, so the EMA model / encoder is not registered here
        self.batch_fields = source.batch_fields

    def targets(self, batch: dict) -> torch.Tensor:
        return self.source.targets(batch)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        self.source.after_optimizer_step(model, step)

    def saved_states(self) -> dict[str, SavedState]:
        return {**super().saved_states(), **self.source.saved_states()}

    def head_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -F.cosine_similarity(pred.float(), target.float(), dim=-1).mean()
