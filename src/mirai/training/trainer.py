"""The training loop: next-token prediction plus whatever auxiliary loss the config asks for.

One process or many (``torchrun``; DDP, or FSDP2 with ``distributed.strategy: fsdp``: gloo on CPU,
NCCL on GPU). The data order is a pure
function of (seed, epoch), and the step fixes where in an epoch we are, so resuming from a
checkpoint — which also restores optimizer, EMA, heads and RNG state — continues exactly.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mirai.atomic import recover_interrupted_writes
from mirai.checkpoint import CONFIG_FILE, read_meta
from mirai.config import save_yaml, to_dict
from mirai.errors import CheckpointError, ConfigError, Interrupted, refuse_under_file
from mirai.foresight import build_auxiliary_loss
from mirai.foresight.base import Progress, SavedState
from mirai.models import GPT
from mirai.models.ema import ema_decay, update_ema
from mirai.sampling.pipeline import SampleSettings
from mirai.training import state as run_state
from mirai.locks import check_not_held, exclusive_dir
from mirai.training.config import TrainConfig
from mirai.training.data import TrainingData
from mirai.training.distributed import DistInfo, barrier, init_distributed, wrap_for_training
from mirai.training.fsdp import gather_for_sampling, replicated
from mirai.training import console as text
from mirai.training.health import GRAD_NORM, LOSS, DivergenceWatch, diverged_error
from mirai.training.metrics import LogWindow, MetricsLogger, truncate_metrics
from mirai.training.objective import Objective
from mirai.training.optim import adamw_kernel, learning_rate, param_groups

# Signals that save a checkpoint and stop: a scheduler's SIGTERM, Ctrl-C, and SIGHUP when the terminal that
# started the run closes (POSIX only).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))


@dataclass
class TrainResult:
    """What a finished (or interrupted-and-saved) run left: its last step, validation NLL and files."""
    run_dir: Path
    step: int
    val_nll: float | None
    checkpoint: Path | None
    samples: Path | None = None  # the final sample grid
    log: Path | None = None  # RUN_DIR/log.txt, what the console printed

    def to_json(self) -> str:
        """The one-line JSON summary that `mirai train` prints last (paths as strings)."""
        return json.dumps({"run_dir": str(self.run_dir), "step": self.step, "val_nll": self.val_nll,
                           "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                           "samples": str(self.samples) if self.samples else None,
                           "metrics": str(Path(self.run_dir) / "metrics.jsonl")})


class Trainer:
    """Builds everything a run needs from a ``TrainConfig`` and runs it (``fit``)."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo | None = None):
        self.cfg = cfg
        self.dist = dist or init_distributed(cfg.device)
        self.device = self.dist.device
        self.run_dir = Path(cfg.run_dir)
        self.console = text.Console(enabled=self.dist.is_main)
        self.console.say(f"mirai train: loading the data and building {cfg.model.name} for {self.run_dir}")
        # Every rank builds identical weights (the EMA and the heads are never broadcast by DDP)...
        torch.manual_seed(cfg.seed)

        self.data = TrainingData(cfg, rank=self.dist.rank, world_size=self.dist.world_size)
        args = cfg.model_args(self.data.vocab_size, self.data.grid_size, self.data.num_classes)
        self.gpt = GPT(args, name=cfg.model.name).to(self.device)
        try:  # the sample grids draw with these: checked now, not at the first grid, hours in
            self.grid_settings().check_for(args)
        except ConfigError as err:
            raise ConfigError(f"sampling (the run's sample grids): {err}") from None
        self.ema = copy.deepcopy(self.gpt).eval().requires_grad_(False)
        auxiliary = build_auxiliary_loss(cfg.foresight, self.gpt, self.ema, ema_warmup=cfg.ema.warmup,
                                         store=self.data.store)
        self.batch_fields = auxiliary.batch_fields if auxiliary is not None else frozenset()
        self.objective = Objective(self.gpt, auxiliary)
        # DDP or FSDP2 (which also shards the EMA and a teacher), before the optimizer sees the parameters.
        frozen = [self.ema, *(s.module for s in self.saved_states().values() if isinstance(s.module, GPT))]
        self.step_fn: nn.Module = wrap_for_training(self.objective, self.gpt, frozen, cfg.distributed, self.dist,
                                                    find_unused=auxiliary is not None)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.objective, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=cfg.optim.betas,
            **adamw_kernel(self.device),
        )
        torch.manual_seed(cfg.seed + 1_000 * (1 + self.dist.rank))  # ...then draws its own dropout masks.
        if cfg.compile:
            self.objective.compile()  # in place: the modules (and their state-dict names) stay the same
        self.autocast_dtype = self._autocast_dtype()
        self.total_steps = cfg.steps or math.ceil(cfg.epochs * self.data.steps_per_epoch)
        self._check_foresight_starts()
        self.step = 0
        self.best_val = math.inf
        self.watch = DivergenceWatch(self.device)  # non-finite losses and gradient norms, kept on the device
        self.resume_changes: dict = {}  # settings changed by --resume (recorded in config_changes.jsonl)
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------ helpers
    def _check_foresight_starts(self) -> None:
        """A warm-up as long as the run (e.g. Mirai-E's default 15 epochs in a short run) would
        silently train a baseline."""
        self.cfg.foresight.check_warmup_ends({"step": self.total_steps, "fraction": 1.0,
                                              "epoch": self.total_steps / self.data.steps_per_epoch})

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

    def check_finite(self, values: list[float] | None = None) -> None:
        """Raise the divergence error if a loss, gradient norm or weight went non-finite since the
        run started. ``values``: the ``DivergenceWatch.pending`` values when the caller already read
        them with its logs; else they are read here (one device sync). Called before every
        checkpoint write, sample grid and evaluation, and at log steps."""
        if values is None:
            values = self.watch.pending(self.objective).tolist()
        what = DivergenceWatch.describe(values, self.step)
        if what is not None:
            raise diverged_error(self.run_dir, what)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, torch.Tensor | float]:
        """One optimizer step; returns its logs, device values as 0-d tensors. Nothing here reads
        the device (no GPU sync): non-finite values are recorded in ``self.watch``, which
        ``check_finite`` reads before anything of the run is kept."""
        cfg = self.cfg
        lr = learning_rate(cfg, self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.step_fn.train()
        progress = self.progress()
        logs: dict[str, torch.Tensor | float] = {}
        micro_batches = self.data.step_batches(self.step, self.device, self.batch_fields)
        for i, batch in enumerate(micro_batches):
            # Gradients are all-reduced once per optimizer step, on the last micro-batch.
            skip_sync = self.dist.enabled and i < len(micro_batches) - 1
            with self.step_fn.no_sync() if skip_sync else nullcontext():
                with self._autocast():
                    loss, step_logs = self.step_fn(batch, progress)
                self.watch.observe(LOSS, step_logs["loss/total"], self.step + 1)
                (loss / len(micro_batches)).backward()
            for k, v in step_logs.items():
                logs[k] = logs.get(k, 0.0) + v / len(micro_batches)
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf  # 0: no clipping
        grad_norm = replicated(torch.nn.utils.clip_grad_norm_(self.objective.parameters(), max_norm)).detach()
        self.watch.observe(GRAD_NORM, grad_norm, self.step + 1)
        # A non-finite step still updates the weights (they stay non-finite); check_finite stops
        # the run before a checkpoint, a grid or an evaluation takes them in.
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
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

    def grid_settings(self) -> SampleSettings:
        """``cfg.sampling``, unguided when the run trained no null class (``TrainConfig.grid_settings``)."""
        return self.cfg.grid_settings(self.gpt.args)

    def sample_grid(self, name: str) -> Path | None:
        """A grid from the EMA weights, one row per class (at most 10 classes, 10 each); without
        guidance when the run trained no null class (``dropout: false``). Every rank calls it; rank 0 draws."""
        from mirai.sampling.grid import write_sample_grid
        from mirai.sampling.pipeline import sample_batch

        ema = gather_for_sampling(self.ema, self.dist.is_main, self.device)  # collective when sharded
        vq = self.data.tokenizer(self.device) if ema is not None else None
        if vq is None:
            return None
        classes = min(10, self.data.num_classes)
        labels = torch.arange(classes, device=self.device).repeat_interleave(10)
        settings = self.grid_settings()
        images, _ = sample_batch(ema, vq, labels, settings, seed=self.cfg.seed)
        path = self.run_dir / "samples" / f"{name}.png"  # and a PDF beside it
        run = "/".join(self.run_dir.parts[-2:])  # VARIANT/seed_S for a bench run
        write_sample_grid(images, labels.cpu().numpy(), path, f"{run} (EMA weights)", self.step, settings,
                          self.data.store.class_names)
        return path

    # ------------------------------------------------------------------ checkpoints
    def saved_states(self) -> dict[str, SavedState]:
        """What the auxiliary loss asks the checkpoint to keep besides model, EMA and optimizer."""
        return self.objective.auxiliary.saved_states() if self.objective.auxiliary is not None else {}

    def save(self, val_nll: float | None = None, finished: bool = False) -> Path:
        """Collective (all ranks call it); rank 0 writes ``checkpoints/step_N`` (and ``best``).
        ``TrainingError`` instead when the run went non-finite (``check_finite``). ``finished``: the end-of-run save."""
        self.check_finite()
        components = dict(cfg=self.cfg, step=self.step, val_nll=val_nll, model=self.gpt, ema=self.ema,
                          optimizer=self.optimizer, states=self.saved_states(), is_main=self.dist.is_main,
                          objective=self.objective, finished=finished,
                          tokenizer=self.data.store.manifest.get("tokenizer"), data=self.store_digests)
        folder = self.run_dir / "checkpoints"
        improved = val_nll is not None and val_nll < self.best_val
        if improved:  # first, so that a resume from this step knows its own validation is the best so far
            self.best_val = val_nll
        path = run_state.save_training_checkpoint(folder / f"step_{self.step:07d}", best_val=self.best_val,
                                                  **components)
        if improved and self.dist.is_main:
            run_state.link_checkpoint(path, folder / "best")
        return path

    @cached_property
    def store_digests(self) -> dict[str, str | None]:
        """``store_digest`` of the training and validation stores, recorded in every checkpoint: the stores do not
        change during a run, so they are read once."""
        val = self.data.val
        return {"codes": run_state.store_digest(self.data.store),
                "val_codes": run_state.store_digest(val) if val is not None else None}

    def resume(self, path: str | Path | None = None) -> Path:
        """Continue from ``path`` (default: the run's latest step checkpoint), exactly, and return it. Settings
        that may change on resume (``RESUMABLE_KEYS``) are recorded by ``fit``; others are refused."""
        path = Path(path) if path else run_state.latest_checkpoint(self.run_dir)
        self.resume_changes = run_state.changes_since(path, self.cfg)
        self.step, self.best_val = run_state.load_training_checkpoint(
            path, model=self.gpt, ema=self.ema, optimizer=self.optimizer, states=self.saved_states(),
            rank=self.dist.rank, objective=self.objective, world_size=self.dist.world_size)
        if self.step > self.total_steps:
            raise ConfigError(f"{path} is at step {self.step}, past this run's {self.total_steps} steps; set "
                              f"steps to at least {self.step} to continue it")
        return path

    def _claim_run_dir(self) -> None:
        """Main rank, under the run-directory lock, before training: tidy interrupted checkpoint
        writes, drop metrics past the step training starts from (a run killed before its first
        checkpoint logged steps it will redo), write the config and record resume changes."""
        for line in recover_interrupted_writes(self.run_dir / "checkpoints"):
            self.console.say(line)
        truncate_metrics(self.run_dir, self.step)
        save_yaml(self.cfg, self.run_dir / "config.yaml")
        if self.resume_changes:
            record = {"step": self.step, "time": time.time(),
                      "changes": {k: list(v) for k, v in self.resume_changes.items()}}
            with (self.run_dir / "config_changes.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            changed = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in self.resume_changes.items())
            self.console.say(f"resumed at step {self.step} with changed settings: {changed} (config.yaml now holds "
                             "them; the earlier values are in config_changes.jsonl)")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train to ``total_steps``, holding the run directory against other processes."""
        with exclusive_dir(self.run_dir, "run_dir") if self.dist.is_main else nullcontext():
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg, is_main, say = self.cfg, self.dist.is_main, self.console.say
        log_path = self.console.open_log(self.run_dir)
        if is_main:
            self._claim_run_dir()
        logger = MetricsLogger(self.run_dir, enabled=is_main, tensorboard=cfg.tensorboard, wandb=cfg.wandb,
                               config=to_dict(cfg))
        for line in text.start_banner(self) if is_main else ():
            say(line)
        previous = {s: signal.signal(s, self._handle_signal) for s in STOP_SIGNALS}
        # A bar only on a terminal (tqdm's disable=None): in a log file its frames are noise, and
        # the text lines report the same progress.
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.run_dir.name}", unit="step",
                   disable=None if is_main else True, dynamic_ncols=True)
        last_ckpt = val_nll = samples = None
        window, start_step, start = LogWindow(), self.step, time.perf_counter()
        try:
            tic, steps = time.perf_counter(), 0
            while self.step < self.total_steps:
                window.add(self.train_step())
                val_nll = None  # a checkpoint records only a validation of its own step's weights
                steps += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    logs, health = window.read(self.watch.pending(self.objective))  # the window's one device read
                    self.check_finite(health)
                    logs["images_per_s"] = steps * cfg.optim.batch_size / (time.perf_counter() - tic)
                    tic, steps = time.perf_counter(), 0
                    logger.log(self.step, logs)
                    bar.set_postfix(loss=f"{logs['loss/ntp']:.3f}")
                    say(text.step_line(self.step, self.total_steps, logs, self.data.grid_size ** 2,
                                       time.perf_counter() - start, start_step))
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total_steps:
                    val_nll = self._evaluate(logger)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.check_finite()
                    say(f"step {self.step} | samples {self.sample_grid(f'step_{self.step:07d}')}")
                if self._stop_signal is not None:
                    last_ckpt = self.save(val_nll)
                    raise Interrupted(self._stop_signal, f"saved {last_ckpt} at step {self.step}",
                                      hint="continue with --resume")
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    last_ckpt = self.save(val_nll)
                    say(f"step {self.step} | checkpoint {last_ckpt}")
            bar.close()  # the loop is done: what follows says what it does
            if self.data.val is not None:
                say("final validation (EMA and raw weights)...")
            val_nll = self._evaluate(logger)
            last_ckpt = self.save(val_nll, finished=True)
            say(f"step {self.step} | checkpoint {last_ckpt}")
            say("drawing the final sample grid from the EMA weights...")
            samples = self.sample_grid("final")
            barrier()
            best = self.run_dir / "checkpoints" / "best"
            for line in text.summary_lines(self.step, time.perf_counter() - start, val_nll, last_ckpt,
                                           best if best.is_dir() else None, samples, logger.path, log_path):
                say(line)
        except BaseException as error:  # the text log says why the run stopped (the CLI prints it too)
            why = signal.Signals(error.signum).name if isinstance(error, Interrupted) else type(error).__name__
            self.console.record(f"stopped at step {self.step}: {why}: {error}")
            raise
        finally:
            self.console.close()
            self.data.close()  # stop DataLoader workers (data.workers) now, not at garbage collection
            bar.close()
            logger.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return TrainResult(self.run_dir, self.step, val_nll, last_ckpt, samples, log_path)

    def _evaluate(self, logger: MetricsLogger) -> float | None:
        self.check_finite()
        ema_nll = self.validation_nll(self.ema)
        if ema_nll is not None:
            raw_nll = self.validation_nll(self.gpt)
            logger.log(self.step, {"val/nll_ema": ema_nll, "val/nll_raw": raw_nll})
            self.console.say(text.val_line(self.step, ema_nll, raw_nll))
        return ema_nll


def _ended(run_dir: str | Path, step: int, meta: dict, checkpoint: Path) -> TrainResult:
    """What a run that had already ended left (its final grid, when drawn)."""
    grid = Path(run_dir) / "samples" / "final.png"
    return TrainResult(Path(run_dir), step, meta.get("val_nll"), checkpoint, grid if grid.is_file() else None)


def train(cfg: TrainConfig, resume: str | Path | bool | None = None) -> TrainResult:
    """Train from ``cfg`` and return where the run ended.

    ``resume``: ``None``/``False`` starts a new run (refused if ``run_dir`` already holds
    checkpoints); ``True`` continues from the run's latest checkpoint; a path continues from
    that checkpoint; ``"auto"`` does whichever applies: nothing when the latest checkpoint
    already reached ``cfg.steps`` (with a config a resume would accept), a resume when one exists, else a fresh
    start. A resume from the checkpoint a run saved when it ended, with ``steps`` unchanged, does nothing either.
    A resume from a checkpoint older than others in ``run_dir`` is refused: it would replace them. The run
    directory is held against other processes throughout (``BusyError``). Raises
    ``ConfigError`` (e.g. a resume that changes the seed) and ``CheckpointError`` with the fix
    in the message; ``Interrupted`` after SIGTERM/SIGINT/SIGHUP (``STOP_SIGNALS``), once the state is saved.
    """
    run_dir = Path(cfg.run_dir)
    refuse_under_file(run_dir, "run_dir", folder="run directory")
    if (run_dir / CONFIG_FILE).is_file():  # a checkpoint or model folder; runs keep config.yaml
        raise ConfigError(f"run_dir {run_dir} holds {CONFIG_FILE}: it is a checkpoint or model folder, not a run "
                          "directory; choose another run_dir")
    # Under torchrun every rank calls this: rank 0 alone holds the run directory (as in ``fit``).
    holds_dir = int(os.environ.get("RANK", "0")) == 0
    if holds_dir:  # a run another process is starting has no checkpoint yet: say it is busy
        check_not_held(run_dir, "run_dir")
    if not run_state.has_step_checkpoints(run_dir):  # checked before the lock file, which must not land in a
        if resume is True:                               # folder of other work
            raise CheckpointError(f"no checkpoint to resume from in {run_dir / 'checkpoints'}: leave out --resume "
                                  "(in Python, resume=None) to start a new run there")
        if resume in (None, False, "auto"):
            run_state.check_new_run_dir(run_dir)
    with exclusive_dir(cfg.run_dir, "run_dir") if holds_dir else nullcontext():
        has_checkpoints = run_state.has_step_checkpoints(cfg.run_dir)
        if resume == "auto":
            latest = run_state.latest_checkpoint(cfg.run_dir) if has_checkpoints else None
            step = run_state.checkpoint_step(latest) if latest is not None else 0
            meta = read_meta(latest) if latest is not None else {}
            # Done, unless stopped by a signal at its last step (end-of-run work left; older runs lack the flag),
            # and only for the config it ended with: another seed or model is refused as a resume refuses it.
            if latest is not None and cfg.steps and step == cfg.steps and meta.get("finished", True):
                run_state.changes_since(latest, cfg)
                return _ended(cfg.run_dir, step, meta, latest)
            resume = latest is not None
        if not resume and has_checkpoints:
            raise ConfigError(f"{cfg.run_dir} already holds checkpoints: pass --resume (Python: resume=True) to "
                              "continue it, or choose another run_dir")
        trainer = Trainer(cfg)
        if resume:
            path = trainer.resume(None if resume is True else resume)
            later = run_state.checkpoints_after(cfg.run_dir, trainer.step)
            if later:  # training on from here would replace them, and the metrics logged after this step
                raise ConfigError(f"{cfg.run_dir} holds checkpoints after step {trainer.step} of {path} "
                                  f"({', '.join(p.name for p in later)}), which resuming from it would replace: "
                                  f"to branch from step {trainer.step}, resume into a new run (add run_dir=NEW); "
                                  f"to roll this run back, delete those checkpoints first")
            meta = read_meta(path)
            if meta.get("finished") and trainer.step == trainer.total_steps:  # not even the end-of-run work is left
                trainer.console.say(f"{path} ended this run at step {trainer.step}: nothing to do (raise steps to go on)")
                return _ended(cfg.run_dir, trainer.step, meta, path)
        return trainer.fit()
