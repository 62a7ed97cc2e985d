"""What ``mirai train`` prints: a start banner with warnings about the config, a plain text line
every ``log_every`` steps, a line per later phase, and a closing summary with the paths of what
the run wrote. Everything printed is appended to ``RUN_DIR/log.txt`` too (main rank only), so a
run started in the background can be read as it goes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from mirai.training.config import TrainConfig

LOG_FILE = "log.txt"


class Console:
    """Prints lines above any progress bar and appends them to ``RUN_DIR/log.txt``.

    Lines said before ``open_log`` (while data and model load, before the run directory is
    locked) are kept and written when it opens. A disabled console (ranks other than 0) says nothing.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._log = None
        self._pending: list[str] = []

    def say(self, line: str) -> None:
        if not self.enabled:
            return
        tqdm.write(line)  # above the bar when one is drawn; plain print otherwise
        if self._log is None:
            self._pending.append(line)
        else:
            self._log.write(line + "\n")
            self._log.flush()

    def record(self, line: str) -> None:
        """Append ``line`` to the text log only (e.g. an error that the CLI prints itself)."""
        if self._log is not None:
            self._log.write(line + "\n")
            self._log.flush()

    def open_log(self, run_dir: Path) -> Path | None:
        """Start appending to ``run_dir/log.txt``; returns its path (None when disabled)."""
        if not self.enabled:
            return None
        path = Path(run_dir) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = path.open("a")
        self._log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        for line in self._pending:
            self._log.write(line + "\n")
        self._pending.clear()
        self._log.flush()
        return path

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``12.3s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.1f}s"


def count(n: float) -> str:
    """``12.3M``, ``4.5k`` or ``812``."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def config_warnings(cfg: TrainConfig, total_steps: int, steps_per_epoch: int, images: int,
                    has_val: bool, has_tokenizer: bool) -> list[str]:
    """Settings that run but are probably not what was meant (the banner prints them; none is an
    error): each names the setting and what to change. ``images``: training images in the store."""
    o, found = cfg.optim, []
    if o.warmup_steps >= total_steps:
        found.append(f"optim.warmup_steps={o.warmup_steps} >= the run's {total_steps} steps: the learning rate "
                     f"never reaches optim.lr={o.lr:g}; shorten the warm-up (LlamaGen uses none)")
    for key, name in (("eval_every", "validation NLL"), ("sample_every", "sample grid"),
                      ("save_every", "checkpoint"), ("log_every", "log line")):
        every = getattr(cfg, key)
        if key == "eval_every" and not has_val:
            continue  # no validation at all: the warning below says so once
        if every > total_steps:
            found.append(f"{key}={every} is longer than the run ({total_steps} steps): the only {name} is the "
                         f"final one; set {key} <= {total_steps}")
    if cfg.eval_every and not has_val:
        found.append(f"eval_every={cfg.eval_every} but data.val_codes is not set: no validation NLL will be computed; "
                     "set data.val_codes to a held-out store (mirai extract on the validation split), or eval_every=0")
    if has_val and Path(cfg.data.val_codes).resolve() == Path(cfg.data.codes).resolve():
        found.append(f"data.val_codes is data.codes ({cfg.data.codes}): the validation NLL is measured on training "
                     "images and says nothing about overfitting; extract the held-out split (mirai extract --split "
                     "test) and give it as data.val_codes")
    dropped = images - steps_per_epoch * o.batch_size
    if dropped > 0.1 * images:
        found.append(f"optim.batch_size={o.batch_size} leaves {dropped} of the {images} training images out of "
                     f"every epoch (only whole batches are used); choose a batch size that divides {images}")
    if not cfg.ema.warmup and 1.0 / (1.0 - cfg.ema.decay) > total_steps:
        found.append(f"ema.decay={cfg.ema.decay:g} averages over ~{1 / (1 - cfg.ema.decay):.0f} steps, more than "
                     f"the run's {total_steps}: the EMA (what is sampled) stays close to the initial weights; "
                     "set ema.warmup=true or a smaller ema.decay")
    if not has_tokenizer:
        found.append("the code store names no tokenizer that can be loaded: no sample grids will be drawn")
    found += cfg.foresight.warnings()
    if not cfg.dropout:
        found.append("dropout=false also turns class dropout off: no null class is trained, so samples use "
                     "no classifier-free guidance")
    return found


def start_banner(trainer) -> list[str]:
    """``banner_lines`` for a ``mirai.training.trainer.Trainer`` about to train (main rank)."""
    store, aux = trainer.data.store, trainer.objective.auxiliary
    with torch.random.fork_rng(devices=[]):  # building the VQ draws initial weights: keep the run's RNG
        has_tokenizer = trainer.data.tokenizer(torch.device("cpu")) is not None
    steps_per_epoch, total = trainer.data.steps_per_epoch, trainer.total_steps
    return banner_lines(
        trainer.cfg, gpt_params=sum(p.numel() for p in trainer.gpt.parameters()),
        aux_params=sum(p.numel() for p in aux.parameters() if p.requires_grad) if aux is not None else 0,
        device=str(trainer.device), processes=trainer.dist.world_size,
        precision="bf16 autocast" if trainer.autocast_dtype == torch.bfloat16 else "fp32",
        images=len(store), views=store.num_views, steps_per_epoch=steps_per_epoch, total_steps=total,
        start_step=trainer.step, n_layer=trainer.gpt.args.n_layer, model_dim=trainer.gpt.args.dim,
        warnings=config_warnings(trainer.cfg, total, steps_per_epoch, len(store), trainer.data.val is not None,
                                 has_tokenizer))


def banner_lines(cfg: TrainConfig, *, gpt_params: int, aux_params: int, device: str, processes: int,
                 precision: str, images: int, views: int, steps_per_epoch: int, total_steps: int,
                 start_step: int, warnings: list[str], n_layer: int | None = None,
                 model_dim: int | None = None) -> list[str]:
    """The start banner: what trains on what, for how long, where it is written, and ``warnings``.
    ``n_layer`` and ``model_dim`` (the GPT's) name the default foresight block and encoder."""
    f, o = cfg.foresight, cfg.optim
    method = f"foresight alignment ({f.method})" if f.enabled else "baseline (next-token prediction only)"
    heads = f" + {count(aux_params)} in training-only heads" if aux_params else ""
    start = f", resuming at step {start_step}" if start_step else ""
    lines = [
        f"  run dir    {Path(cfg.run_dir).resolve()}",
        f"  model      {cfg.model.name}, {count(gpt_params)} parameters{heads}; {method}",
        *([f"  foresight  {f.describe(n_layer, model_dim)}"] if f.enabled else []),
        f"  device     {device} x {processes} process{'es' if processes > 1 else ''}, precision {precision}"
        f"{', compiled' if cfg.compile else ''}",
        f"  data       {images} images x {views} views ({cfg.data.codes}); batch {o.batch_size}"
        f"{f' ({o.grad_accum} accumulation steps)' if o.grad_accum > 1 else ''}",
        f"  schedule   {total_steps} steps = {total_steps / steps_per_epoch:.2f} epochs of {steps_per_epoch} steps"
        f"{start}; lr {o.lr:g} {o.schedule}, warm-up {o.warmup_steps} steps",
        f"  every      log {cfg.log_every}, validation {cfg.eval_every or 'end only'}, samples "
        f"{cfg.sample_every or 'end only'}, checkpoint {cfg.save_every or 'end only'} (steps)",
    ]
    return lines + [f"  warning: {w}" for w in warnings]


def step_line(step: int, total: int, logs: dict[str, float], tokens_per_image: int, elapsed: float,
              start_step: int) -> str:
    """One log line: step, losses (means over the log interval: total, then each term), lr,
    gradient norm, throughput, ETA. ``elapsed``: seconds since training (re)started at ``start_step``."""
    terms = [f"{k.split('/', 1)[1]} {v:.4f}" for k, v in logs.items() if k.startswith("loss/") and k != "loss/total"]
    terms = " ".join(terms) if len(terms) > 1 else ""  # the NTP loss alone is the total
    parts = [f"step {step}/{total}", f"loss {logs['loss/total']:.4f}" + (f" ({terms})" if terms else "")]
    parts.append(f"lr {logs['lr']:.2e}")
    if "grad_norm" in logs:
        parts.append(f"grad {logs['grad_norm']:.3f}")
    if "images_per_s" in logs:
        images = logs["images_per_s"]
        parts.append(f"{count(images)} img/s {count(images * tokens_per_image)} tok/s")
    if step > start_step and step < total:
        parts.append(f"eta {duration(elapsed / (step - start_step) * (total - step))}")
    return " | ".join(parts)


def val_line(step: int, ema_nll: float, raw_nll: float) -> str:
    """Validation NLL (nats per token) of the EMA and the raw weights, and the EMA's perplexity."""
    return (f"step {step} | validation NLL {ema_nll:.4f} (EMA), {raw_nll:.4f} (raw); perplexity "
            f"{math.exp(min(ema_nll, 50)):.1f} (EMA)")


def summary_lines(step: int, elapsed: float, val_nll: float | None, checkpoint: Path | None,
                  best: Path | None, samples: Path | None, metrics: Path, log: Path | None) -> list[str]:
    """The closing summary: where the run's checkpoint, samples, metrics and text log are."""
    nll = f"; validation NLL {val_nll:.4f} (EMA)" if val_nll is not None else ""
    lines = [f"done: step {step} in {duration(elapsed)}{nll}",
             f"  checkpoint {checkpoint}" + (f" (best validation: {best})" if best else "")]
    if samples is not None:
        lines.append(f"  samples    {samples}")
    lines.append(f"  metrics    {metrics}")
    if log is not None:
        lines.append(f"  text log   {log}")
    return lines
