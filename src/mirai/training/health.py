"""Divergence checks that never stall a step: non-finite losses and gradient norms are recorded
on the device and read only when the loop reads the device anyway (log, evaluation, sample and
checkpoint steps), together with one test of the weights (issue 15, "no sync in the hot loop").

A run that went non-finite stays non-finite (NaN and infinity propagate through AdamW into the
weights, the EMA and any teacher), so checking before every checkpoint write is enough to keep
every checkpoint finite; the recorded steps say where it started.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mirai.errors import TrainingError
from mirai.training import state as run_state

LOSS, GRAD_NORM = 0, 1
_NAMES = {LOSS: "loss", GRAD_NORM: "gradient norm"}


def all_finite(module: nn.Module) -> torch.Tensor:
    """A 0-d bool tensor on the module's device: whether every floating-point parameter and buffer
    of ``module`` is finite. Not read here: the caller decides when to wait for it."""
    # A sharded (FSDP2) tensor is tested on this rank's shard: a non-finite shard makes the next
    # loss non-finite on every rank, which the loss record catches.
    tensors = [getattr(t, "to_local", lambda t=t: t)() for t in (*module.parameters(), *module.buffers())
               if t.is_floating_point()]
    if not tensors:
        return torch.tensor(True)
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


class DivergenceWatch:
    """The first step (1-based) whose loss or gradient norm was not finite, and that value.

    ``state`` is a float64 device tensor ``[loss step, loss value, grad-norm step, grad-norm
    value]``, step -1 while all were finite; ``observe`` only queues device work."""

    def __init__(self, device: torch.device):
        self.state = torch.tensor([-1.0, 0.0, -1.0, 0.0], dtype=torch.float64, device=device)

    def observe(self, which: int, value: torch.Tensor, step: int) -> None:
        """Record ``value`` (0-d, ``LOSS`` or ``GRAD_NORM``) of 1-based optimizer step ``step``."""
        first = self.state[2 * which]
        new = ~torch.isfinite(value.detach()) & (first < 0)
        self.state[2 * which] = torch.where(new, float(step), first)
        self.state[2 * which + 1] = torch.where(new, value.detach().double(), self.state[2 * which + 1])

    def pending(self, module: nn.Module) -> torch.Tensor:
        """``state`` plus whether ``module``'s weights are finite (1.0/0.0): five values to read in
        the same transfer as the logs (``describe`` turns them into a message)."""
        return torch.cat([self.state, all_finite(module).double().reshape(1).to(self.state.device)])

    @staticmethod
    def describe(values: list[float], step: int) -> str | None:
        """What went non-finite first, from the five ``pending`` values read at 1-based step
        ``step``, or None when nothing did."""
        seen = [(values[2 * k], k) for k in (LOSS, GRAD_NORM) if values[2 * k] >= 0]
        if seen:
            first, which = min(seen)
            return f"the {_NAMES[which]} became {values[2 * which + 1]} in step {int(first)}"
        if values[4] < 1:
            return f"the weights became non-finite by step {step}"
        return None


def diverged_error(run_dir: Path, what: str) -> TrainingError:
    """The error for a diverged run, naming its last checkpoint (every checkpoint is finite: the
    run is checked before each is written) and what to change before continuing from it."""
    if run_state.has_step_checkpoints(run_dir):
        kept = (f"the last checkpoint, {run_state.latest_checkpoint(run_dir)}, holds finite weights; lower "
                "optim.lr (--resume accepts that change and records it), check the data, or use "
                "precision=fp32, then continue it with --resume (or from an earlier checkpoint, --resume PATH, "
                "if the run was already diverging when that one was saved)")
    else:
        kept = (f"no checkpoint was saved yet in {Path(run_dir) / 'checkpoints'}; lower optim.lr, check the data, "
                "or use precision=fp32, and start again")
    return TrainingError(f"training diverged: {what}. Nothing trained since was saved: {kept}")
