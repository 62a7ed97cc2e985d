"""The contract between the trainer and any auxiliary (foresight) loss.

The trainer runs the GPT once, asks it for the hidden states the loss wants, and adds
whatever terms the loss returns to the next-token loss. It never learns where the targets
come from (an encoder, cached features, an EMA teacher, the tokens themselves): the loss
says which extra batch fields it reads, updates whatever it keeps after each optimizer
step, and hands the trainer the state to save (as torchtitan's components hand theirs to
the checkpointer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from torch import Tensor, nn


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


class SavedState(NamedTuple):
    """A module whose weights a training checkpoint keeps as ``NAME.safetensors``; ``made_by``
    names the config setting that creates it, for the error when a checkpoint lacks it."""

    module: nn.Module
    made_by: str


class AuxiliaryLoss(Protocol):
    """A training-only loss computed from GPT hidden states.

    ``hidden_layers`` are the 1-based GPT blocks whose outputs the trainer must hand over
    (``model.forward_with_hidden(tokens[:, :-1], labels, loss.hidden_layers)``);
    ``batch_fields`` the optional batch fields it reads (``"images"``: the pixels of each
    row's view, in [0, 1]).
    """

    hidden_layers: tuple[int, ...]
    batch_fields: frozenset[str]

    def weights(self, progress: Progress) -> tuple[Tensor | None, dict[str, float]]:
        """Everything that depends on ``progress``, computed outside the (possibly compiled) step:
        (a device tensor of weights for ``__call__``, or None when the loss adds nothing this step,
        e.g. during a warm-up; host-side logs such as the weights). Handing the weights in as a
        tensor keeps the compiled graph the same from step to step (no recompilation)."""
        ...

    def __call__(
        self, batch: dict, hidden: dict[int, Tensor], weights: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Returns (named loss terms, already weighted, to ADD to the NTP loss; scalar logs: a
        value computed on the device stays a 0-d tensor, never read here, so a step does not wait
        for the device; the trainer reads its logs once per ``log_every`` steps). Not called
        while ``weights`` returns None; must not read the training progress (it may be compiled).
        """
        ...

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called once after every optimizer step ``step`` (0-based) with the trained model."""
        ...

    def saved_states(self) -> dict[str, SavedState]:
        """The modules a training checkpoint must keep, by file stem (e.g. heads, a teacher)."""
        ...
