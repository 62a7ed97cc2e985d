"""``ForesightConfig``: the ``foresight:`` section of a training config.

Fields left at ``None`` take the paper's default for the chosen source, from the one table in
``mirai.foresight.defaults`` (resolved by the accessors below rather than written into the
config, so a saved config says "default" where the user did not choose).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from mirai.errors import ConfigError
from mirai.foresight.defaults import default_encoder, default_layer, source_defaults
from mirai.foresight.pairs import RASTER_FUTURE, REFERENCE_SHIFTS, head_shifts, raster_past
from mirai.foresight.schedules import LambdaSchedule


MAX_HEADS = 64  # far above the paper's K (1 to 9); a larger k is a typo, and its pairs would cost memory
METHODS = {"encoder": "Mirai-I", "ema": "Mirai-E"}  # the paper's name for each source's method
# Settings read by one method only: the other source ignores them (the rest are read by both).
ONLY_READ_BY = {"encoder": "encoder", "cache_features": "encoder", "teacher_decay": "ema", "align_class_token": "ema",
                "output_diagnostic": "ema"}


def encoder_name(spec: str | dict | None) -> str:
    """The name in a ``build_encoder`` spec (a name, a folder, or ``{"name": ...}``); "" for None."""
    if isinstance(spec, dict):
        return str(spec.get("name", ""))
    return "" if spec is None else str(spec)


@dataclass
class ForesightConfig:
    """Foresight alignment settings; ``source: none`` trains with next-token prediction only."""

    source: Literal["none", "encoder", "ema"] = "none"
    layout: Literal["grid2d", "raster1d", "reference"] = "grid2d"
    k: int | None = None  # number of heads; defaults to len(offsets) or the source's K
    offsets: list[tuple[int, int]] | None = None  # explicit (d_row, d_col) per head, grid2d only
    layer: int | None = None  # 1-based GPT block aligned; None: round(2/3 * n_layer)
    head: Literal["mlp", "transformer"] = "mlp"
    head_hidden: int | None = None  # MLP width; None: min(2048, 4 * model width)
    lambdas: list[LambdaSchedule] | None = None  # one for every head, or one per head
    warmup: float | None = None  # NTP-only span before foresight starts, in warmup_unit
    warmup_unit: Literal["fraction", "epoch", "step"] = "epoch"
    reduction: Literal["sum", "mean"] = "sum"  # over heads: sum (authors' scripts) or mean (paper Eq. 11)
    align_class_token: bool = True  # Mirai-E: also pair the class position with the teacher's
    pair_with: Literal["current", "next"] = "current"  # cell of the token just read, or the one predicted
    # Mirai-E only: the teacher's own EMA decay (a shorter or longer horizon than the sampled EMA's);
    # None: the paper's choice, the trainer's EMA (the weights that are sampled) is the teacher.
    teacher_decay: float | None = None
    # Mirai-I only (ignored by other sources, so one file can switch source by override):
    encoder: str | dict | None = None  # mirai.foresight.encoders.build_encoder spec; None: see encoder_spec
    cache_features: bool = False  # encode every stored view once before training, then read those features
    output_diagnostic: bool = False  # Table 1 ablation: CE heads on the last block instead of alignment

    @property
    def enabled(self) -> bool:
        return self.source != "none"

    @property
    def method(self) -> str:
        """The paper's name for this source's method: Mirai-I (a frozen encoder), Mirai-E (the EMA), or ""."""
        return METHODS.get(self.source, "")

    def num_heads(self) -> int:
        """Heads the loss builds: 0 under ``source: none``, else len(offsets), k, or the source's K."""
        if not self.enabled:
            return 0
        if self.offsets is not None:
            return len(self.offsets)
        return self.k if self.k is not None else source_defaults(self.source).k

    def schedules(self) -> list[LambdaSchedule]:
        """One lambda schedule per head (none under ``source: none``)."""
        if not self.enabled:
            return []
        given = self.lambdas or [source_defaults(self.source).lambda_schedule()]
        return given * self.num_heads() if len(given) == 1 else list(given)

    def warmup_spec(self) -> tuple[float, str]:
        """(length, unit) of the NTP-only warm-up; (0, "step") under ``source: none``."""
        if not self.enabled:
            return 0.0, "step"
        return source_defaults(self.source).warmup if self.warmup is None else (self.warmup, self.warmup_unit)

    def check_warmup_ends(self, run_end: dict[str, float]) -> None:
        """``ConfigError`` when the warm-up lasts the whole run, which would silently train a baseline.
        ``run_end`` gives the run's length in each unit known so far (``{"epoch": 40}`` from a config
        alone; steps, epochs and fraction once the data's size is known)."""
        length, unit = self.warmup_spec()
        if unit in run_end and length >= run_end[unit]:
            raise ConfigError(
                f"foresight.warmup is {length:g} {unit}(s) but the run ends at {run_end[unit]:g} {unit}(s): the "
                "foresight loss would never start. Shorten it, e.g. foresight.warmup=0.15 foresight.warmup_unit=fraction"
            )

    def encoder_spec(self, model_dim: int) -> str | dict:
        """The encoder to build: as configured, else DINOv2-B/14, or DINOv2-L/14 from GPT-L's width up (Table 8)."""
        return self.encoder if self.encoder is not None else default_encoder(model_dim)

    def reads(self, key: str) -> bool:
        """Whether this config's source reads the setting ``key`` (a field name): none is read without
        foresight, and each method ignores the other's own settings (``ONLY_READ_BY``)."""
        return self.enabled and ONLY_READ_BY.get(key, self.source) == self.source

    def warnings(self) -> list[str]:
        """What the training banner and the bench plan warn about, each naming what to change:
        ``ignored_settings``, and heads that repeat a target under the authors' ``reference`` shifts
        (allowed, as their scripts do it, whereas repeated explicit offsets are refused)."""
        found = self.ignored_settings()
        if self.enabled and self.layout == "reference" and self.offsets is None:
            shifts = head_shifts(self.layout, self.num_heads())
            repeats = [f"head {k} repeats head {shifts.index(s)}'s shift {s}"
                       for k, s in enumerate(shifts) if s in shifts[:k]]
            if repeats:
                found.append(f"foresight.layout=reference with k={len(shifts)}: in the authors' fall-back every head "
                             f"from the {len(REFERENCE_SHIFTS) + 1}th on shifts by its index, so (counting heads from "
                             f"0) {', '.join(repeats)}: those targets count twice; use foresight.k<=16, or layout "
                             "grid2d or raster1d")
        return found

    def ignored_settings(self) -> list[str]:
        """Settings away from their default that the chosen source never reads (allowed, so that one
        file can switch source by override; a resumed run may change them): one message per setting,
        naming the source that reads it."""
        default, found = ForesightConfig(), []
        for key in (f.name for f in fields(self)):
            if key == "source" or self.reads(key) or getattr(self, key) == getattr(default, key):
                continue
            reader = ONLY_READ_BY.get(key)
            fix = f"{reader} ({METHODS[reader]})" if reader else "encoder (Mirai-I) or ema (Mirai-E)"
            why = ("this run trains without foresight (foresight.source=none)" if not self.enabled else
                   f"read only by {METHODS[reader]} (foresight.source={reader}); this run's source is {self.source!r}")
            found.append(f"foresight.{key} is set but {why}, so it is ignored: drop it, or set foresight.source={fix}")
        return found

    def describe(self, n_layer: int | None = None, model_dim: int | None = None) -> str:
        """One line for the training banner and the bench plan: source (and encoder), heads and their
        offsets or raster shifts, block, lambda, warm-up, then any setting away from its default, e.g.
        ``ema, 3 heads (1,0) (1,1) (2,0) at block 3, lambda step 0.5->0.25 at 0.5 (fraction), warm-up
        15% of training``. ``n_layer`` and ``model_dim`` (the GPT's) resolve the default block and encoder."""
        if not self.enabled:
            return "none"
        shifts = head_shifts(self.layout, self.num_heads(), self.offsets)
        heads = " ".join(f"({s[0]},{s[1]})" if isinstance(s, tuple) else f"+{s}" for s in shifts)
        layer = self.layer if n_layer is None else n_layer if self.output_diagnostic else self.resolve_layer(n_layer)
        schedules = [schedule.describe() for schedule in self.schedules()]
        length, unit = self.warmup_spec()
        if self.source == "encoder":
            encoder = self.encoder if self.encoder is not None or model_dim is None else self.encoder_spec(model_dim)
            what = f"encoder {encoder_name(encoder) or 'default'}"
        else:
            what = self.source
        parts = [f"{what}, {len(shifts)} head{'s' if len(shifts) > 1 else ''} {heads}"
                 + (f" at block {layer}" if layer else ""),
                 "lambda " + ("; ".join(schedules) if len(set(schedules)) > 1 else schedules[0]),
                 "warm-up " + ("none" if length == 0 else f"{length:.0%} of training" if unit == "fraction"
                               else f"{length:g} {unit}{'s' if length != 1 else ''}")]
        default = ForesightConfig(source=self.source)
        for key in ("layout", "head", "head_hidden", "reduction", "pair_with", "teacher_decay", "align_class_token",
                    "output_diagnostic"):
            relevant = key not in ("teacher_decay", "align_class_token", "output_diagnostic") or self.source == "ema"
            if relevant and getattr(self, key) != getattr(default, key) and not (key == "layout" and self.offsets):
                parts.append(f"{key} {getattr(self, key)}")
        return ", ".join(parts)

    def check_order(self, order: str) -> None:
        """In raster order a Mirai-E offset into the past pairs nothing on any grid: refuse it with the config,
        not when its run starts training. (In PAR order a raster-past cell can come later in the sequence.)"""
        past = [tuple(o) for o in self.offsets or [] if raster_past(o)]
        if self.source == "ema" and order == "raster" and past:
            verb = "points" if len(past) == 1 else "point"
            raise ConfigError(f"foresight.offsets {', '.join(map(str, past))} {verb} into the past: a Mirai-E "
                              f"teacher state must come at or after the student's position; use raster-future "
                              f"offsets {RASTER_FUTURE}")

    def resolve_layer(self, n_layer: int) -> int:
        layer = self.layer if self.layer is not None else default_layer(n_layer)
        if not 1 <= layer <= n_layer:
            raise ConfigError(f"foresight.layer={layer} is outside the model's blocks 1..{n_layer}: give a block in "
                              f"that range, or foresight.layer=null for the default, 2/3 of the depth "
                              f"(block {default_layer(n_layer)})")
        return layer

    def validate(self) -> None:
        """Raise ConfigError on a bad value, whatever the source: a setting that ``source: none`` ignores
        today is read as soon as an override switches the source, so it must already be valid then."""
        if self.k is not None and not 1 <= self.k <= MAX_HEADS:
            raise ConfigError(f"foresight.k must be between 1 and {MAX_HEADS} heads (the paper uses 1 to 9), got {self.k}")
        head_shifts(self.layout, max(self.num_heads(), 1), self.offsets)  # raises on a bad layout/offsets mix
        given = [tuple(offset) for offset in self.offsets or []]
        repeated = sorted({offset for offset in given if given.count(offset) > 1})
        if repeated:  # two heads on one target learn the same thing twice: surely a typo in the list
            raise ConfigError(f"foresight.offsets repeats {', '.join(map(str, repeated))}; give each (d_row, d_col) once")
        if self.offsets is not None and self.k is not None and self.k != len(self.offsets):
            raise ConfigError(f"foresight.k={self.k} disagrees with the {len(self.offsets)} offsets given: set "
                              f"foresight.k=null (one head per offset) or foresight.k={len(self.offsets)}")
        if len(given) > MAX_HEADS:
            raise ConfigError(f"foresight.offsets gives {len(given)} heads; at most {MAX_HEADS}")
        if self.layer is not None and self.layer < 1:
            raise ConfigError(f"foresight.layer is 1-based, got {self.layer}")
        if self.head_hidden is not None and (self.head != "mlp" or self.head_hidden < 1):
            raise ConfigError(f"foresight.head_hidden={self.head_hidden} with head: {self.head}: it sets the width of "
                              "the mlp head, so give a positive int with head: mlp, or drop it")
        # Without a source the head count is what k or offsets says, if either does.
        heads = self.num_heads() if self.enabled else len(given) or self.k
        if self.lambdas is not None and (not self.lambdas or heads and len(self.lambdas) not in (1, heads)):
            raise ConfigError(
                f"foresight.lambdas has {len(self.lambdas)} schedules for {heads or 'its'} heads;"
                " give one for all heads or one per head (or drop it for the source's default)"
            )
        for schedule in self.lambdas or []:
            schedule.validate()
        if self.teacher_decay is not None and not 0 <= self.teacher_decay < 1:
            raise ConfigError(f"foresight.teacher_decay must lie in [0, 1), got {self.teacher_decay}")
        if self.warmup is None and self.warmup_unit != "epoch":
            raise ConfigError(f"foresight.warmup_unit={self.warmup_unit} needs foresight.warmup (the source's default "
                              "warm-up is in epochs): give foresight.warmup, or set foresight.warmup_unit=epoch")
        if self.warmup is not None and not 0 <= self.warmup < (1 if self.warmup_unit == "fraction" else math.inf):
            raise ConfigError(f"foresight.warmup={self.warmup} {self.warmup_unit}: it must be non-negative"
                              + (", and below 1 as a fraction of training (the foresight loss would never start)"
                                 if self.warmup_unit == "fraction" else ""))
        if self.enabled and self.output_diagnostic and self.source != "ema":
            raise ConfigError(
                "foresight.output_diagnostic replaces Mirai-E's alignment by output-level heads; set source: ema"
            )


def unread_on_resume(key: str, saved: dict, current: dict) -> bool:
    """Whether the flattened setting ``key`` (``foresight.teacher_decay``) of two flattened train
    configs is one the run's source never reads, the source unchanged: a resumed run may change it,
    as it changes nothing the checkpoint was trained with (the banner says to drop such settings)."""
    source = saved.get("foresight.source", "none")
    return (key.startswith("foresight.") and current.get("foresight.source", "none") == source
            and not ForesightConfig(source=source).reads(key.split(".")[1]))
