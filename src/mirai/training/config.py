"""The training config: one validated dataclass tree, read from YAML with ``key=value`` overrides.

The paper's recipe (LlamaGen's, docs/method.md §6) is the default: AdamW lr 1e-4, betas
(0.9, 0.95), weight decay 0.05 on tensors with >= 2 dims, grad clip 1.0, constant LR, EMA 0.9999.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from mirai.config import flatten, to_dict
from mirai.errors import ConfigError
from mirai.foresight.config import ForesightConfig, unread_on_resume
from mirai.models.gpt import GPTArgs
from mirai.models.registry import gpt_args
from mirai.sampling.pipeline import SampleSettings


STORE_FIELDS = {"vocab_size", "grid_size", "num_classes"}  # GPT arguments that come from the code store


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

    def args(self) -> GPTArgs:
        """The architecture as far as the config fixes it. The grid may still be unknown (it comes from
        the code store): then any grid that the PAR regions divide stands in for it."""
        known = {k: v for k, v in (("vocab_size", self.vocab_size), ("num_classes", self.num_classes)) if v}
        grid = self.grid_size or self.overrides.get("regions_per_side", 1)
        return gpt_args(self.name, **{**self.overrides, **known, "grid_size": grid})

    def validate(self) -> None:
        """The name, override keys and values, checked where the config is read (before any data work)."""
        fixed = sorted(STORE_FIELDS & set(self.overrides))
        if fixed:  # the code store fixes these; its own fields are checked against it (TrainingData)
            raise ConfigError(f"model.overrides sets {', '.join(fixed)}, which the code store fixes: set "
                              f"{', '.join('model.' + k for k in fixed)} instead (checked against the store), or leave "
                              "them out to take the store's")
        self.args()


MAX_PREFETCH = 64  # steps each DataLoader worker may hold ready (DataLoader's prefetch_factor)


@dataclass
class DataConfig:
    """Where training batches come from (a code store, optional images for Mirai-I) and how they are loaded."""
    codes: str = ""  # code store made by `mirai extract` (training split)
    val_codes: str | None = None  # held-out store for validation NLL
    val_images: int = 2000  # how many held-out images the validation NLL uses (0 = all)
    # DataLoader worker processes per rank that prepare training steps ahead (0: in the training
    # process). "auto": 0 for token-only batches (a memory-mapped slice; passing it between processes
    # costs more than reading it) and on CPU devices (workers would take the training's cores);
    # up to 8 per GPU process when batches carry rendered image views (Mirai-I).
    workers: int | Literal["auto"] = "auto"
    prefetch: int = 2  # steps each worker prepares ahead (DataLoader's prefetch_factor)

    def validate(self) -> None:
        if not self.codes:
            raise ConfigError("data.codes is empty: give the code store from `mirai extract` (data.codes=DIR)")
        if self.val_images < 0:
            raise ConfigError(f"data.val_images must be 0 (all) or positive, got {self.val_images}")
        if self.workers != "auto" and self.workers < 0:
            raise ConfigError(f"data.workers must be auto, 0 (in the training process) or positive, got {self.workers}")
        if not 1 <= self.prefetch <= MAX_PREFETCH:  # each prefetched step is held in (pinned) memory
            raise ConfigError(f"data.prefetch must be between 1 and {MAX_PREFETCH} (steps per worker), got {self.prefetch}")


@dataclass
class OptimConfig:
    """AdamW and its schedule (LlamaGen's defaults: lr 1e-4, betas (0.9, 0.95), weight decay 0.05)."""
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
        for key in ("lr", "batch_size", "grad_accum"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"optim.{key} must be positive, got {getattr(self, key)}")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("optim.grad_clip (0 = no clipping), optim.weight_decay and optim.warmup_steps "
                              "must be non-negative")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


@dataclass
class EMAConfig:
    """The EMA of the weights used for sampling (and as Mirai-E's teacher unless it has its own decay)."""
    decay: float = 0.9999
    # Short runs: min(decay, (1 + t) / (10 + t)) lets the EMA follow the model early on.
    warmup: bool = False

    def validate(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"ema.decay must lie in [0, 1), got {self.decay}")


@dataclass
class DistributedConfig:
    """How several processes share the model. ``ddp`` replicates it on every rank; ``fsdp`` shards
    parameters, gradients, optimizer state, the EMA and an EMA teacher per transformer block
    (FSDP2, ``torch.distributed.fsdp.fully_shard``) and writes sharded checkpoints
    (``torch.distributed.checkpoint``) that resume on any number of ranks."""

    strategy: str = "ddp"  # ddp | fsdp
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    # fsdp only: the dtype blocks compute in (auto: bf16 on CUDA, fp32 on CPU); the sharded master
    # weights, the optimizer state and the gradient reduction stay fp32.
    param_dtype: str = "auto"  # auto | bf16 | fp32

    def validate(self) -> None:
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"distributed.strategy {self.strategy!r}: choose ddp or fsdp")
        if self.param_dtype not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"distributed.param_dtype {self.param_dtype!r}: choose auto, bf16 or fp32")


@dataclass
class TrainConfig:
    """One training run, saved as RUN_DIR/config.yaml: model, data, optimiser, foresight, schedule, checkpoints."""
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
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    foresight: ForesightConfig = field(default_factory=ForesightConfig)
    sampling: SampleSettings = field(default_factory=SampleSettings)

    def model_args(self, vocab_size: int, grid_size: int, num_classes: int) -> GPTArgs:
        """The GPT this run trains on a code store with this codebook, grid side and classes. Without
        dropout, class dropout is off too: the null-class row stays in the architecture (``null_class``) but
        is never trained, and the saved args say so (``class_dropout_prob`` 0), so nothing samples with
        guidance from it. ``ConfigError`` for an architecture the GPT refuses (e.g. PAR regions that do not
        divide the store's grid); the store's own fields are checked against ``model`` by ``TrainingData``."""
        off = {} if self.dropout else dict(token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
                                           attn_dropout_p=0.0, class_dropout_prob=0.0, null_class=True)
        return gpt_args(self.model.name, **{**self.model.overrides, "vocab_size": vocab_size, "grid_size": grid_size,
                                            "num_classes": num_classes, **off})

    def grid_settings(self, args: GPTArgs) -> SampleSettings:
        """How the run's sample grids draw from a GPT with ``args``: ``sampling``, unguided when the run
        trained no null class (guidance would be meaningless)."""
        return replace(self.sampling, cfg_scale=1.0) if args.class_dropout_prob == 0 else self.sampling

    def validate(self) -> None:
        self.foresight.check_order(self.model.args().order)
        if self.steps < 0 or self.epochs < 0:
            raise ConfigError(f"steps and epochs must not be negative (got steps={self.steps}, epochs={self.epochs})")
        if (self.steps > 0) == (self.epochs > 0):
            raise ConfigError(f"set exactly one of steps and epochs, the other to 0 (got steps={self.steps}, "
                              f"epochs={self.epochs}); e.g. steps=2000 epochs=0 to train by steps")
        # Caught here in the config's own unit (--print-config, the bench's planning); the trainer checks
        # the other units once it knows the data's steps per epoch.
        self.foresight.check_warmup_ends({"step": self.steps} if self.steps else {"epoch": self.epochs})
        if not 0 <= self.seed < 2**32:  # as sampling's seeds; the data order's generator takes seed x 1 000 003
            raise ConfigError(f"seed must be non-negative and below 2**32 = {2**32}, got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device {self.device!r}: choose auto, cpu or cuda")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision {self.precision!r}: choose auto, bf16 or fp32")
        if self.keep_last < 1:
            raise ConfigError("keep_last must be at least 1")
        if self.log_every < 1:
            raise ConfigError(f"log_every must be at least 1 (log every N steps), got {self.log_every}")
        for key in ("eval_every", "sample_every", "save_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be 0 (only at the end) or a positive number of steps, "
                                  f"got {getattr(self, key)}")
        if self.compile and self.distributed.activation_checkpointing:
            # torch.compile of the whole objective records the per-block recomputation hooks' tensors
            # differently than they are recomputed: the first backward fails inside PyTorch.
            raise ConfigError("compile=true cannot be combined with distributed.activation_checkpointing=true "
                              "(the first backward would fail): turn one of them off")


# Settings a resumed run may change: how long it runs, where and how fast, what it logs, and the
# learning rate and clipping (the usual recovery from a diverging run), and foresight settings that the
# run's source never reads. Anything else (seed, batch, model, data, schedules, EMA, foresight) would
# silently mix two runs in one directory.
RESUMABLE_KEYS = (
    "run_dir", "steps", "epochs", "device", "precision", "compile", "log_every", "eval_every", "sample_every",
    "save_every", "keep_last", "tensorboard", "wandb", "optim.lr", "optim.grad_clip", "data.val_codes",
    "data.val_images", "data.workers", "data.prefetch", "sampling", "distributed.activation_checkpointing",
    "distributed.param_dtype",
)


def resume_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved, current)}`` for every setting that differs between the config a checkpoint
    was trained with and the one resuming it; ``ConfigError`` when one of them may not change."""
    # A checkpoint written before a setting existed was trained with that setting's default. A default
    # that is a parent or child of a saved key (``model.overrides: {}`` beside ``model.overrides.order``)
    # is the same setting written at another depth, not a missing one.
    saved_flat = flatten(saved)
    missing = {k: v for k, v in flatten(to_dict(TrainConfig())).items()
               if not any(s == k or s.startswith(k + ".") or k.startswith(s + ".") for s in saved_flat)}
    old, new = {**missing, **saved_flat}, flatten(current)
    changed = {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}
    refused = [k for k in changed if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)
               and not unread_on_resume(k, old, new)]
    if refused:
        detail = "; ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise ConfigError(
            f"--resume would change {detail}, which the checkpoint was not trained with. Resume with the run's "
            "own config (its config.yaml), or start a new run in another run_dir. Only these may change on "
            f"resume: {', '.join(RESUMABLE_KEYS)}, and foresight settings that the run's source does not read"
        )
    return changed
