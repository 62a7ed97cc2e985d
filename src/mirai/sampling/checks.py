"""The checks of every user-facing sampling value, shared by the Python API and ``mirai sample``.

Each check raises ``ConfigError`` (``CheckpointError`` for weights) with one line that names the
value, the rule it breaks and what to pass instead. ``generate`` and ``SampleSettings`` call
these, so ``generate(..., top_k=0)`` from Python is refused exactly like ``--top-k 0``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import numpy as np
import torch

from mirai.checkpoint import nonfinite_keys
from mirai.errors import CheckpointError, ConfigError
from mirai.models.gpt import GPTArgs

SEED_LIMIT = 2**32  # seeds are mixed with batch indices into a 64-bit generator seed


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (``maximum`` None: unbounded), else ``ConfigError``."""
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_seed(seed: Any) -> int:
    """A sampling seed: an integer in [0, 2**32)."""
    return check_int("seed", seed, 0, SEED_LIMIT - 1)


def _check_real(name: str, value: Any, rule: str, ok) -> None:
    if not _is_real(value) or not math.isfinite(value) or not ok(value):
        raise ConfigError(f"{name} must be {rule}, got {value!r}")


def check_sampling(
    cfg_scale: float,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    guidance_interval: Sequence[float] | None,
    vocab_size: int | None = None,
) -> None:
    """How tokens are drawn: ``cfg_scale`` >= 0 (1 = no guidance), ``temperature`` >= 0 (0 = greedy),
    ``top_k`` in [1, vocab_size], ``top_p`` in (0, 1], ``guidance_interval`` a pair
    0 <= start <= end <= 1; all finite. ``vocab_size`` None skips top-k's upper bound."""
    _check_real("cfg_scale", cfg_scale, "a finite number >= 0 (1 = no guidance, e.g. 1.5 or 2)", lambda v: v >= 0)
    _check_real("temperature", temperature, "a finite number >= 0 (1 = the model's distribution, 0 = greedy)",
                lambda v: v >= 0)
    if top_k is not None:
        check_int("top_k", top_k, 1, vocab_size)
    if top_p is not None:
        _check_real("top_p", top_p, "a number in (0, 1] (1 = no nucleus filtering)", lambda v: 0 < v <= 1)
    if guidance_interval is not None:
        pair = list(guidance_interval) if isinstance(guidance_interval, (list, tuple)) else []
        if not (len(pair) == 2 and all(_is_real(v) and math.isfinite(v) for v in pair)
                and 0 <= pair[0] <= pair[1] <= 1):
            raise ConfigError(
                f"guidance_interval must be (start, end) fractions with 0 <= start <= end <= 1, such as (0, 0.5), "
                f"got {guidance_interval!r}"
            )


def in_guidance_interval(position: int, n_tokens: int, interval: Sequence[float] | None) -> bool:
    """Whether the pass starting at token ``position`` of ``n_tokens`` is guided: its fraction lies in
    [start, end) of ``interval`` (None: every pass)."""
    return interval is None or interval[0] <= position / n_tokens < interval[1]


def check_guidance(args: GPTArgs, cfg_scale: float, interval: Sequence[float] | None = None) -> None:
    """Guidance (``cfg_scale`` != 1) needs a null class that training taught (class dropout > 0), and a
    ``guidance_interval`` must hold one of the decoding passes of a GPT with ``args`` (pass start i / N in
    [start, end)): one that holds none would guide nothing at twice the cost, under a record that says guided.
    Takes the architecture, not the weights, so a bench checks its runs' guidance before training them."""
    if cfg_scale == 1:
        return
    if not args.class_dropout_prob > 0:
        raise ConfigError(
            f"cfg_scale {cfg_scale} needs classifier-free guidance, but this GPT was trained without class dropout "
            "(class_dropout_prob 0), so its null class was never learned: sample with cfg_scale 1, "
            "or train with class dropout"
        )
    n = args.seq_len
    starts = [step.produce[0] for step in args.decode_schedule()]
    if not any(in_guidance_interval(i, n, interval) for i in starts):
        # PAR's passes start only at some tokens: name them, so that a fraction i/N that lies inside the
        # interval but starts no pass does not read as a contradiction.
        which = "every i" if len(starts) == n else f"i = {', '.join(map(str, starts[:8]))}{', ...' * (len(starts) > 8)}"
        raise ConfigError(
            f"guidance_interval {tuple(interval)} holds none of this model's decoding passes (they start at "
            f"token fractions i/{n}, {which}), so nothing would be guided: widen it, or sample with cfg_scale 1"
        )


def as_labels(labels: Any, num_classes: int, device: torch.device | None = None) -> torch.Tensor:
    """``labels`` (tensor, array or sequence of class ids) as a 1-D int64 tensor, each id in
    [0, num_classes); on ``device`` when given (else a tensor keeps its own device)."""
    try:
        tensor = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    except (TypeError, ValueError, RuntimeError):
        tensor = None
    if tensor is not None and (tensor.dim() != 1 or tensor.numel() == 0):
        raise ConfigError(f"labels must be a non-empty 1-D list of class ids, got shape {tuple(tensor.shape)}")
    if tensor is None or tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise ConfigError(f"labels must be integer class ids in [0, {num_classes}), got {labels!r:.80}")
    bad = tensor[(tensor < 0) | (tensor >= num_classes)]
    if bad.numel():
        values = sorted(set(bad.tolist()))
        null = f" ({num_classes} is the unconditional null class, which guidance adds itself)" \
            if num_classes in values else ""
        raise ConfigError(
            f"class label(s) {values[:8]} are outside this model's {num_classes} classes{null}: "
            f"use ids 0..{num_classes - 1}"
        )
    return tensor.long().to(device) if device is not None else tensor.long()


def check_finite_weights(module: torch.nn.Module, what: str) -> None:
    """``CheckpointError`` naming ``what`` when any floating-point weight of ``module`` is NaN or inf."""
    bad = nonfinite_keys(module.state_dict())
    if bad:
        raise CheckpointError(
            f"{what} holds NaN/inf weights ({len(bad)} tensors, first {bad[0]}): it cannot be sampled; "
            "use an earlier checkpoint of the run"
        )
