"""Foresight weights lambda_k over training, and the NTP-only warm-up.

A schedule is both its config (a validated dataclass, one per head in ``ForesightConfig``)
and its evaluation (``schedule(progress) -> float``). Milestones are given in one unit:
``fraction`` of training, ``epoch`` or optimizer ``step``.

- ``const``:  ``values: [v]``
- ``step``:   ``values: [v0, v1, ...]``, ``at: [t1, ...]`` (one milestone fewer than values);
              v_i holds from t_i on, e.g. 2 -> 1 at half of training: values [2, 1], at [0.5].
- ``cosine``: ``values: [start, end]``, half a cosine from start to end between ``at:
              [t_begin, t_end]`` (default: the whole of training, unit fraction), flat outside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from mirai.errors import ConfigError
from mirai.foresight.base import Progress

Unit = Literal["fraction", "epoch", "step"]


@dataclass
class LambdaSchedule:
    """The weight lambda of one head as a function of training progress."""

    kind: Literal["const", "step", "cosine"] = "const"
    values: list[float] = field(default_factory=lambda: [2.0])
    at: list[float] = field(default_factory=list)
    unit: Unit = "fraction"

    def validate(self) -> None:
        where = f"lambda schedule {self.kind}"
        if any(v < 0 for v in self.values):
            raise ConfigError(f"{where}: weights must be non-negative, got {self.values}")
        if any(b <= a for a, b in zip(self.at, self.at[1:])):
            raise ConfigError(f"{where}: milestones 'at' must increase, got {self.at}")
        if any(t < 0 for t in self.at) or (self.unit == "fraction" and any(t > 1 for t in self.at)):
            raise ConfigError(f"{where}: milestones {self.at} lie outside training (unit {self.unit})")
        if self.kind == "const" and (len(self.values) != 1 or self.at):
            raise ConfigError(f"{where}: give one value and no milestones, e.g. values: [2]")
        if self.kind == "step" and (len(self.values) < 2 or len(self.at) != len(self.values) - 1):
            raise ConfigError(
                f"{where}: give n values and n-1 milestones, e.g. values: [2, 1], at: [0.5]; "
                f"got values {self.values}, at {self.at}"
            )
        if self.kind == "cosine":
            if len(self.values) != 2 or len(self.at) not in (0, 2):
                raise ConfigError(f"{where}: give values: [start, end] and optionally at: [begin, end]")
            if not self.at and self.unit != "fraction":
                raise ConfigError(f"{where}: without 'at' it spans the whole of training; use unit fraction")

    def describe(self) -> str:
        """One line for banners and plans, e.g. ``step 0.5->0.25 at 0.5 (fraction)``."""
        values = "->".join(f"{v:g}" for v in self.values)
        at = f" at {', '.join(f'{t:g}' for t in self.at)} ({self.unit})" if self.at else ""
        return f"{self.kind} {values}{at}"

    def __call__(self, progress: Progress) -> float:
        t = progress.position(self.unit)
        if self.kind == "const":
            return float(self.values[0])
        if self.kind == "step":
            return float(self.values[sum(t >= m for m in self.at)])
        begin, end = self.at or (0.0, 1.0)
        u = min(max((t - begin) / (end - begin), 0.0), 1.0)
        start, stop = self.values
        return float(stop + (start - stop) * 0.5 * (1.0 + math.cos(math.pi * u)))


def warming_up(progress: Progress, length: float, unit: str) -> bool:
    """True while training is still in the NTP-only warm-up."""
    return progress.position(unit) < length
