"""Named GPT architectures (timm-style registry): LlamaGen's sizes plus small CPU sizes."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from mirai.errors import ConfigError
from mirai.models.gpt import GPT, GPTArgs

T = TypeVar("T")

# name -> (n_layer, n_head, dim); LlamaGen's names and sizes, then GPT-S and small CPU models.
GPT_CONFIGS: dict[str, dict] = {
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),  # 111M
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),  # 343M
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),  # 775M
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),  # 1.4B
    "GPT-XXXL": dict(n_layer=48, n_head=40, dim=2560),  # 3.9B
    "GPT-1B": dict(n_layer=22, n_head=32, dim=2048),  # 1.2B
    "GPT-3B": dict(n_layer=24, n_head=32, dim=3200),  # 3.1B, head dim 100
    # The appendix's low-resource model (F, Table 14) is only "LlamaGen-B with half the parameters":
    # B's depth and head width (64) kept, width 768 -> 512: 58.2M, 0.52x GPT-B at V=16384, 16x16 tokens.
    "GPT-S": dict(n_layer=12, n_head=8, dim=512),
    "GPT-Mini": dict(n_layer=6, n_head=4, dim=256),  # CPU work: a few M parameters
    "GPT-Micro": dict(n_layer=4, n_head=4, dim=128),  # CPU demo: about 1M parameters
    # GPT-S's rule at CPU scale (Fashion-MNIST low-resource bench): Micro's depth and head width (32) kept,
    # width 128 -> 96: 0.54M, 0.46x GPT-Micro at V=512, 8x8 tokens.
    "GPT-Micro-S": dict(n_layer=4, n_head=3, dim=96),
    "GPT-Nano": dict(n_layer=2, n_head=2, dim=64),  # tests
}


def named_args(cls: type[T], configs: dict[str, dict], name: str, what: str, overrides: dict) -> T:
    """``cls`` built from the named entry of ``configs`` with ``overrides``; bad names and fields are
    ``ConfigError``s that list the valid ones (``what`` names the model family in messages)."""
    if name not in configs:
        raise ConfigError(f"unknown {what} config {name!r}; choose one of {sorted(configs)}")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown {what} argument(s) {unknown}; valid ones are {sorted(valid)}")
    try:
        return cls(**{**configs[name], **overrides})
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from err


def gpt_args(name: str, **kwargs) -> GPTArgs:
    """``GPTArgs`` of a named config with any field overridden (LlamaGen's field names)."""
    return named_args(GPTArgs, GPT_CONFIGS, name, "GPT", kwargs)


def build_gpt(
    name: str, vocab_size: int = 16384, grid_size: int = 16, num_classes: int = 1000, **overrides
) -> GPT:
    """Build a named GPT, e.g. ``build_gpt("GPT-B", vocab_size=16384, grid_size=16)``."""
    return GPT(gpt_args(name, vocab_size=vocab_size, grid_size=grid_size, num_classes=num_classes, **overrides),
               name=name)


def infer_gpt_name(n_layer: int, dim: int) -> str | None:
    """The registered name whose depth and width match, if any (used to read LlamaGen files)."""
    for name, cfg in GPT_CONFIGS.items():
        if cfg["n_layer"] == n_layer and cfg["dim"] == dim:
            return name
    return None
