"""The paper's per-source defaults, in one table (docs/method.md sections 3-5).

A ``ForesightConfig`` field left at ``None`` takes its value from here when the loss is
built, so a saved config says "default" where the user did not choose:

=================  ===========================  ================================
setting            Mirai-I (``encoder``)        Mirai-E (``ema``)
=================  ===========================  ================================
K (heads)          1                            3 (current, right, below)
lambda             const 2 (Table 7)            step 2 -> 1 at half of training (Table 3)
NTP-only warm-up   none                         15 epochs (Table 10)
layer              round(2/3 * n_layer) (8 of 12 for GPT-B) for both
encoder            DINOv2-B/14; DINOv2-L/14 from GPT-L's width up (Table 8)
=================  ===========================  ================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mirai.errors import ConfigError
from mirai.foresight.schedules import LambdaSchedule

SOURCES = ("encoder", "ema")


@dataclass(frozen=True)
class SourceDefaults:
    """Defaults of one foresight source."""

    k: int
    warmup: tuple[float, str]  # (length, unit) of the NTP-only warm-up
    lambda_args: dict = field(default_factory=dict)  # LambdaSchedule fields

    def lambda_schedule(self) -> LambdaSchedule:
        """A fresh schedule (schedules are mutable config objects, so none is shared)."""
        return LambdaSchedule(**{k: list(v) if isinstance(v, list) else v for k, v in self.lambda_args.items()})


SOURCE_DEFAULTS: dict[str, SourceDefaults] = {
    "encoder": SourceDefaults(k=1, warmup=(0.0, "epoch"), lambda_args=dict(kind="const", values=[2.0])),
    "ema": SourceDefaults(k=3, warmup=(15.0, "epoch"),
                          lambda_args=dict(kind="step", values=[2.0, 1.0], at=[0.5], unit="fraction")),
}


def source_defaults(source: str) -> SourceDefaults:
    """The defaults of ``source``; ``ConfigError`` naming the valid sources otherwise."""
    if source not in SOURCE_DEFAULTS:
        raise ConfigError(f"unknown foresight source {source!r}; choose one of {list(SOURCES)}")
    return SOURCE_DEFAULTS[source]


def default_layer(n_layer: int) -> int:
    """The 1-based block aligned by default: round(2/3 * n_layer), at least 1."""
    return max(1, round(2 * n_layer / 3))


def default_encoder(model_dim: int) -> str:
    """DINOv2-B/14, or DINOv2-L/14 for GPTs as wide as GPT-L (1024) or wider (Table 8)."""
    return "dinov2_vitl14" if model_dim >= 1024 else "dinov2_vitb14"
