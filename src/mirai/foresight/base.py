"""The contract between the trainer and any auxiliary (foresight) loss.

The trainer runs the GPT once, asks it for the hidden states the loss wants, and adds
whatever terms the loss returns to the next-token loss. It never learns where the targets
come from (an encoder, the EMA model, cached features, or the tokens themselves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


@dataclass(frozen=True)
class Progress:
    """Where training stands; schedules and warm-ups are expressed in one of these units."""

    step: int  # optimizer steps done
    epoch: float  # epochs done, fractional
    fraction: float  # fraction of the planned training done, 0..1

    def position(self, unit: str) -> float:
        """This point of training measured in ``unit`` ("step", "epoch" or "fraction")."""
        if unit == "step":
            return float(self.step)
        if unit == "epoch":
            return float(self.epoch)
        if unit == "fraction":
            return float(self.fraction)
        raise ValueError(f"unknown progress unit {unit!r}; use step, epoch or fraction")


class AuxiliaryLoss(Protocol):
    """A training-only loss computed from GPT hidden states.

    ``hidden_layers`` are the 1-based GPT blocks whose outputs the trainer must hand over
    (``model(tokens[:, :-1], labels, hidden_layers=loss.hidden_layers)``).
    """

    hidden_layers: tuple[int, ...]

    def __call__(
        self, batch: dict, hidden: dict[int, Tensor], progress: Progress
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Returns (named loss terms, already weighted, to ADD to the NTP loss; scalar logs).

        An empty terms dict means "nothing to add this step" (e.g. during a warm-up).
        """
        ...
