"""The training loop: next-token prediction plus whatever auxiliary loss the config asks for.

One process or many (``torchrun``, DDP: gloo on CPU, NCCL on GPU). The data order is a pure
function of (seed, epoch), and the step fixes where in an epoch we are, so resuming from a
checkpoint — which also restores optimizer, EMA, heads and RNG state — continues exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mirai.checkpoint import recover_interrupted_writes
from mirai.config import read_yaml, save_yaml, to_dict
from mirai.errors import ConfigError, Interrupted, TrainingError
from mirai.foresight import build_auxiliary_loss
from mirai.foresight.base import Progress, SavedState
from mirai.models import GPT, build_gpt
from mirai.models.ema import ema_decay, update_ema
from mirai.training import state as run_state
from mirai.locks import exclusive_dir
from mirai.training.config import TrainConfig, resume_changes
from mirai.training.data import TrainingData
from mirai.training.distributed import DistInfo, barrier, init_distributed
from mirai.training.metrics import MetricsLogger, truncate_metrics


def all_finite(module: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``module`` is finite (one host sync)."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings (>= 2 dims) only, as LlamaGen does."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "cosine":
        t = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
    return o.lr


def ntp_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of position p predicting token p (the class position predicts x_1)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())


class Objective(nn.Module):
    """The GPT and the auxiliary heads as one module, so that one DDP wrapper syncs both."""

    def __init__(self, gpt: GPT, auxiliary: nn.Module | None):
        super().__init__()
        self.gpt = gpt
        self.auxiliary = auxiliary

    def forward(self, batch: dict, progress: Progress) -> tuple[torch.Tensor, dict]:
        sequence, labels = self.gpt.to_sequence(batch["tokens"]), batch["labels"]  # the model's own order
        layers = self.auxiliary.hidden_layers if self.auxiliary is not None else ()
        logits, hidden = self.gpt.forward_with_hidden(sequence[:, :-1], labels, layers)
        loss = ntp_loss(logits, sequence)
        logs = {"loss/ntp": loss.detach()}
        if self.auxiliary is not None:
            terms, aux_logs = self.auxiliary(batch, hidden, progress)
            for name, term in terms.items():
                loss = loss + term
                logs[f"loss/{name}"] = term.detach()
            logs.update(aux_logs)
        logs["loss/total"] = loss.detach()
        return loss, logs


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_nll: float | None
    checkpoint: Path | None


class Trainer:
    """Builds everything a run needs from a ``TrainConfig`` and runs it (``fit``)."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo | None = None):
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.device)
        self.device = self.dist.device
        self.run_dir = Path(cfg.run_dir)
        # Every rank builds identical weights (the EMA and the heads are never broadcast by DDP)...
        torch.manual_seed(cfg.seed)

        self.data = TrainingData(cfg, rank=self.dist.rank, world_size=self.dist.world_size)
        m = cfg.model
        # Without dropout, class dropout is off too: the null-class row stays in the architecture
        # (null_class) but is never trained, and the saved args say so (class_dropout_prob 0), so
        # nothing samples with guidance from it.
        dropout_off = {} if cfg.dropout else dict(
            token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, attn_dropout_p=0.0,
            class_dropout_prob=0.0, null_class=True,
        )
        self.gpt = build_gpt(
            m.name, vocab_size=self.data.vocab_size, grid_size=self.data.grid_size,
            num_classes=self.data.num_classes, **{**m.overrides, **dropout_off},
        ).to(self.device)
        self.ema = copy.deepcopy(self.gpt).eval().requires_grad_(False)
        auxiliary = build_auxiliary_loss(cfg.foresight, self.gpt, self.ema, ema_warmup=cfg.ema.warmup,
                                         store=self.data.store)
        self.batch_fields = auxiliary.batch_fields if auxiliary is not None else frozenset()
        self.objective = Objective(self.gpt, auxiliary)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.objective, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas,
            fused=self.device.type == "cuda",
        )
        self.step_fn: nn.Module = self.objective
        if self.dist.enabled:
            # Heads get no gradient during a foresight warm-up: let DDP tolerate unused parameters.
            self.step_fn = DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=auxiliary is not None,
            )
        torch.manual_seed(cfg.seed + 1_000 * (1 + self.dist.rank))  # ...then draws its own dropout masks.
        if cfg.compile:
            self.objective.compile()  # in place: the modules (and their state-dict names) stay the same
        self.autocast_dtype = self._autocast_dtype()
        self.total_steps = cfg.steps or math.ceil(cfg.epochs * self.data.steps_per_epoch)
        self._check_foresight_starts()
        self.step = 0
        self.best_val = math.inf
        self.resume_changes: dict = {}  # settings changed by --resume (recorded in config_changes.jsonl)
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ helpers
    def _check_foresight_starts(self) -> None:
        """A warm-up as long as the run (e.g. Mirai-E's default 15 epochs in a short run) would
        silently train a baseline."""
        f = self.cfg.foresight
        if not f.enabled:
            return
        length, unit = f.warmup_spec()
        end = {"step": self.total_steps, "epoch": self.total_steps / self.data.steps_per_epoch, "fraction": 1.0}[unit]
        if length >= end:
            raise ConfigError(
                f"foresight.warmup is {length:g} {unit}(s) but the run ends at {end:g} {unit}(s): the foresight "
                "loss would never start. Shorten it, e.g. foresight.warmup=0.15 foresight.warmup_unit=fraction"
            )

    def _autocast_dtype(self) -> torch.dtype | None:
        p = self.cfg.precision
        if p == "fp32" or (p == "auto" and not (self.device.type == "cuda" and torch.cuda.is_bf16_supported())):
            return None
        return torch.bfloat16

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def progress(self) -> Progress:
        return Progress(step=self.step, epoch=self.step / self.data.steps_per_epoch,
                        fraction=self.step / max(1, self.total_steps))

    def _handle_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def _diverged(self, what: str) -> TrainingError:
        """The error for a diverged step, naming the last checkpoint (all checkpoints are finite:
        a step is checked before anything of it is kept)."""
        folder = self.run_dir / "checkpoints"
        if run_state.has_step_checkpoints(self.run_dir):
            kept = (f"the last checkpoint, {run_state.latest_checkpoint(self.run_dir)}, holds finite weights; lower "
                    "optim.lr (--resume accepts that change and records it), check the data, or use "
                    "precision=fp32, then continue it with --resume (or from an earlier checkpoint, --resume PATH, "
                    "if the run was already diverging when that one was saved)")
        else:
            kept = (f"no checkpoint was saved yet in {folder}; lower optim.lr, check the data, or use "
                    "precision=fp32, and start again")
        return TrainingError(f"training diverged: {what}. Nothing of this step was kept: {kept}")

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        lr = learning_rate(cfg, self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.step_fn.train()
        progress = self.progress()
        logs: dict[str, float] = {}
        micro_batches = self.data.step_batches(self.step, self.device, self.batch_fields)
        for i, batch in enumerate(micro_batches):
            # Gradients are all-reduced once per optimizer step, on the last micro-batch.
            skip_sync = self.dist.enabled and i < len(micro_batches) - 1
            with self.step_fn.no_sync() if skip_sync else nullcontext():
                with self._autocast():
                    loss, step_logs = self.step_fn(batch, progress)
                step_logs = {k: float(v) for k, v in step_logs.items()}
                if not math.isfinite(step_logs["loss/total"]):
                    raise self._diverged(f"loss became {step_logs['loss/total']} in step {self.step + 1} ({step_logs})")
                (loss / len(micro_batches)).backward()
            for k, v in step_logs.items():
                logs[k] = logs.get(k, 0.0) + v / len(micro_batches)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf  # 0: no clipping
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.objective.parameters(), max_norm))
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise self._diverged(f"the gradient norm became {grad_norm} in step {self.step + 1}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # A finite gradient can still overflow the weights (a huge learning rate): stop before the
        # EMA, a teacher or a checkpoint takes them in.
        if not all_finite(self.objective):
            raise self._diverged(f"the weights became non-finite in the update of step {self.step + 1}")
        update_ema(self.ema, self.gpt, ema_decay(cfg.ema.decay, self.step, cfg.ema.warmup))
        if self.objective.auxiliary is not None:
            self.objective.auxiliary.after_optimizer_step(self.gpt, self.step)
        self.step += 1
        logs.update({"lr": lr, "grad_norm": grad_norm, "epoch": self.step / self.data.steps_per_epoch})
        return logs

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validation_nll(self, model: GPT) -> float | None:
        """Mean NLL per token (nats) of ``model`` on the held-out store (canonical view 0)."""
        if self.data.val is None:
            return None
        was_training = model.training
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # (total NLL, token count)
        for batch in self.data.val_batches(self.device):
            sequence = model.to_sequence(batch["tokens"])
            with self._autocast():
                logits = model(sequence[:, :-1], batch["labels"])
            sums[0] += F.cross_entropy(logits.flatten(0, 1).float(), sequence.flatten(), reduction="sum")
            sums[1] += batch["tokens"].numel()
        if self.dist.enabled:
            torch.distributed.all_reduce(sums)
        model.train(was_training)
        return (sums[0] / sums[1]).item()

    def sample_grid(self, name: str) -> Path | None:
        """A grid from the EMA weights, one row per class (at most 10 classes, 10 each); without
        guidance when the run trained no null class (``dropout: false``)."""
        from mirai.data.images import save_image_grid
        from mirai.sampling.pipeline import sample_batch

        vq = self.data.tokenizer(self.device)
        if vq is None:
            return None
        classes = min(10, self.data.num_classes)
        labels = torch.arange(classes, device=self.device).repeat_interleave(10)
        settings = self.cfg.sampling
        if self.gpt.args.class_dropout_prob == 0:  # no trained null class: guidance would be meaningless
            settings = dataclasses.replace(settings, cfg_scale=1.0)
        images, _ = sample_batch(self.ema, vq, labels, settings, seed=self.cfg.seed)
        path = self.run_dir / "samples" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image_grid(images, 10, path)
        return path

    # ------------------------------------------------------------------ checkpoints
    def saved_states(self) -> dict[str, SavedState]:
        """What the auxiliary loss asks the checkpoint to keep besides model, EMA and optimizer."""
        return self.objective.auxiliary.saved_states() if self.objective.auxiliary is not None else {}

    def save(self, val_nll: float | None = None) -> Path:
        """Collective (all ranks call it); rank 0 writes ``checkpoints/step_N`` (and ``best``)."""
        components = dict(cfg=self.cfg, step=self.step, val_nll=val_nll, model=self.gpt, ema=self.ema,
                          optimizer=self.optimizer, states=self.saved_states(), is_main=self.dist.is_main)
        folder = self.run_dir / "checkpoints"
        path = run_state.save_training_checkpoint(folder / f"step_{self.step:07d}", best_val=self.best_val,
                                                  **components)
        if val_nll is not None and val_nll < self.best_val:
            self.best_val = val_nll
            run_state.save_training_checkpoint(folder / "best", best_val=self.best_val, **components)
        return path

    def resume(self, path: str | Path | None = None) -> None:
        """Continue from ``path`` (default: the run's latest step checkpoint), exactly. Settings
        that may change on resume (``RESUMABLE_KEYS``) are recorded by ``fit``; others are refused."""
        path = Path(path) if path else run_state.latest_checkpoint(self.run_dir)
        saved = path / run_state.CONFIG_FILE
        if saved.is_file():
            self.resume_changes = resume_changes(read_yaml(saved), to_dict(self.cfg))
        self.step, self.best_val = run_state.load_training_checkpoint(
            path, model=self.gpt, ema=self.ema, optimizer=self.optimizer, states=self.saved_states(),
            rank=self.dist.rank)
        if self.step > self.total_steps:
            raise ConfigError(f"{path} is at step {self.step}, past this run's {self.total_steps} steps; set "
                              f"steps to at least {self.step} to continue it")

    def _claim_run_dir(self) -> None:
        """Main rank, under the run-directory lock, before training: tidy interrupted checkpoint
        writes, drop metrics past the step training starts from (a run killed before its first
        checkpoint logged steps it will redo), write the config and record resume changes."""
        for line in recover_interrupted_writes(self.run_dir / "checkpoints"):
            tqdm.write(line)
        truncate_metrics(self.run_dir, self.step)
        save_yaml(self.cfg, self.run_dir / "config.yaml")
        if self.resume_changes:
            record = {"step": self.step, "time": time.time(),
                      "changes": {k: list(v) for k, v in self.resume_changes.items()}}
            with (self.run_dir / "config_changes.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train to ``total_steps``, holding the run directory against other processes."""
        with exclusive_dir(self.run_dir, "run directory") if self.dist.is_main else nullcontext():
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg, is_main = self.cfg, self.dist.is_main
        if is_main:
            self._claim_run_dir()
        logger = MetricsLogger(self.run_dir, enabled=is_main, tensorboard=cfg.tensorboard, wandb=cfg.wandb,
                               config=to_dict(cfg))
        previous = {s: signal.signal(s, self._handle_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.run_dir.name}", unit="step",
                   disable=not is_main, dynamic_ncols=True)
        last_ckpt, val_nll = None, None
        try:
            tic, window = time.perf_counter(), 0
            while self.step < self.total_steps:
                logs = self.train_step()
                window += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    elapsed = time.perf_counter() - tic
                    logs["images_per_s"] = window * cfg.optim.batch_size / elapsed
                    tic, window = time.perf_counter(), 0
                    logger.log(self.step, logs)
                    bar.set_postfix(loss=f"{logs['loss/ntp']:.3f}")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                    val_nll = self._evaluate(logger)
                if cfg.sample_every and self.step % cfg.sample_every == 0 and is_main:
                    self.sample_grid(f"step_{self.step:07d}")
                if self._stop_signal is not None:
                    last_ckpt = self.save(val_nll)
                    raise Interrupted(self._stop_signal,
                                      f"saved {last_ckpt} at step {self.step}; continue with --resume")
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    last_ckpt = self.save(val_nll)
            val_nll = self._evaluate(logger)
            last_ckpt = self.save(val_nll)
            if is_main:
                self.sample_grid("final")
            barrier()
        finally:
            bar.close()
            logger.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return TrainResult(self.run_dir, self.step, val_nll, last_ckpt)

    def _evaluate(self, logger: MetricsLogger) -> float | None:
        ema_nll = self.validation_nll(self.ema)
        if ema_nll is not None:
            logger.log(self.step, {"val/nll_ema": ema_nll, "val/nll_raw": self.validation_nll(self.gpt)})
        return ema_nll


def train(cfg: TrainConfig, resume: str | Path | bool | None = None) -> TrainResult:
    """Train from ``cfg`` and return where the run ended.

    ``resume``: ``None``/``False`` starts a new run (refused if ``run_dir`` already holds
    checkpoints); ``True`` continues from the run's latest checkpoint; a path continues from
    that checkpoint; ``"auto"`` does whichever applies: nothing when the latest checkpoint
    already reached ``cfg.steps``, a resume when one exists, else a fresh start. The run
    directory is held against other processes throughout (``BusyError``). Raises
    ``ConfigError`` (e.g. a resume that changes the seed) and ``CheckpointError`` with the fix
    in the message; ``Interrupted`` after SIGTERM/SIGINT, once the state is saved.
    """
    with exclusive_dir(cfg.run_dir, "run directory"):
        has_checkpoints = run_state.has_step_checkpoints(cfg.run_dir)
        if resume == "auto":
            latest = run_state.latest_checkpoint(cfg.run_dir) if has_checkpoints else None
            if latest is not None and cfg.steps and run_state.checkpoint_step(latest) >= cfg.steps:
                meta = json.loads((latest / "config.json").read_text()).get("meta", {})
                return TrainResult(Path(cfg.run_dir), run_state.checkpoint_step(latest), meta.get("val_nll"), latest)
            resume = latest is not None
        if not resume and has_checkpoints:
            raise ConfigError(
                f"{cfg.run_dir} already holds checkpoints: pass --resume to continue it, or choose another run_dir"
            )
        trainer = Trainer(cfg)
        if resume:
            trainer.resume(None if resume is True else resume)
        return trainer.fit()


def summary_json(result: TrainResult) -> str:
    return json.dumps({"run_dir": str(result.run_dir), "step": result.step, "val_nll": result.val_nll,
                       "checkpoint": str(result.checkpoint) if result.checkpoint else None})
