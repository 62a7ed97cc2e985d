"""The training config: one validated dataclass tree, read from YAML with ``key=value`` overrides.

The paper's recipe (LlamaGen's, method.md §6) is the default: AdamW lr 1e-4, betas
(0.9, 0.95), weight decay 0.05 on tensors with >= 2 dims, grad clip 1.0, constant LR, EMA 0.9999.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mirai.errors import ConfigError
from mirai.foresight.config import ForesightConfig
from mirai.sampling.pipeline import SampleSettings


@dataclass
class ModelConfig:
    """A named GPT (``mirai.models.GPT_CONFIGS``) plus any architecture overrides.

    ``vocab_size``, ``grid_size`` and ``num_classes`` default to the code store's manifest and
    are checked against it when given.
    """

    name: str = "GPT-Micro"
    vocab_size: int | None = None
    grid_size: int | None = None
    num_classes: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    codes: str = ""  # code store made by `mirai extract` (training split)
    val_codes: str | None = None  # held-out store for validation NLL
    val_images: int = 2000  # how many held-out images the validation NLL uses (0 = all)

    def validate(self) -> None:
        if not self.codes:
            raise ConfigError("data.codes is empty: give the code store from `mirai extract` (data.codes=DIR)")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    batch_size: int = 256  # global batch, over all processes and accumulation steps
    grad_accum: int = 1
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine (decays to min_lr_ratio * lr at the end)
    min_lr_ratio: float = 0.0

    def validate(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule {self.schedule!r}: choose 'constant' or 'cosine'")
        if self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("optim.lr, optim.batch_size and optim.grad_accum must be positive")


@dataclass
class EMAConfig:
    decay: float = 0.9999
    # Short runs: min(decay, (1 + t) / (10 + t)) lets the EMA follow the model early on.
    warmup: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"ema.decay must lie in [0, 1), got {self.decay}")


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    steps: int = 0  # optimizer steps; 0 means use `epochs`
    epochs: float = 0.0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPUs that support it, else fp32) | bf16 | fp32
    compile: bool = False
    dropout: bool = True  # false turns every dropout (and class dropout) off, e.g. for equivalence tests
    log_every: int = 50
    eval_every: int = 500  # validation NLL (0 = only at the end)
    sample_every: int = 0  # sample grid (0 = only at the end)
    save_every: int = 1000
    keep_last: int = 2
    tensorboard: bool = False
    wandb: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    foresight: ForesightConfig = field(default_factory=ForesightConfig)
    sampling: SampleSettings = field(default_factory=SampleSettings)

    def validate(self) -> None:
        if (self.steps > 0) == (self.epochs > 0):
            raise ConfigError("set exactly one of steps and epochs (e.g. steps=2000)")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision {self.precision!r}: choose auto, bf16 or fp32")
        if self.keep_last < 1:
            raise ConfigError("keep_last must be at least 1")
