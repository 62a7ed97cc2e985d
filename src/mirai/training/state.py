"""Training checkpoints: exported weights (model + EMA, safetensors) with the full training
state beside them (optimizer, step, RNG of every rank, auxiliary heads, the run's config)."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_file, save

from mirai.checkpoint import Checkpoint, load_state_dict_checked, read_checkpoint, read_torch_file, write_checkpoint
from mirai.config import to_dict
from mirai.errors import CheckpointError

if TYPE_CHECKING:
    from mirai.training.trainer import Trainer

STATE_FILE, HEADS_FILE, CONFIG_FILE = "training_state.pt", "auxiliary.safetensors", "train_config.yaml"
TEACHER_FILE = "teacher.safetensors"  # Mirai-E with foresight.teacher_decay: the teacher's own EMA
STEP_DIR = re.compile(r"^step_(\d+)$")


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _gather(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _safetensors_bytes(module: torch.nn.Module) -> bytes:
    return save({k: v.contiguous().cpu() for k, v in module.state_dict().items()})


def save_training_checkpoint(trainer: "Trainer", val_nll: float | None, name: str | None = None) -> Path:
    """Collective: every rank calls it (RNG states are gathered); rank 0 writes atomically."""
    rng = _gather(_rng_state(trainer.device))
    path = trainer.run_dir / "checkpoints" / (name or f"step_{trainer.step:07d}")
    if not trainer.dist.is_main:
        return path
    buffer = io.BytesIO()
    torch.save({"optimizer": trainer.optimizer.state_dict(), "step": trainer.step,
                "best_val": trainer.best_val, "rng": rng}, buffer)
    extra = {STATE_FILE: buffer.getvalue(), CONFIG_FILE: yaml.safe_dump(to_dict(trainer.cfg), sort_keys=False).encode()}
    aux = trainer.objective.auxiliary
    if aux is not None and len(aux.state_dict()):
        extra[HEADS_FILE] = _safetensors_bytes(aux)
    if trainer.teacher is not None:
        extra[TEACHER_FILE] = _safetensors_bytes(trainer.teacher)
    gpt = trainer.gpt
    meta = {"step": trainer.step, "val_nll": val_nll, "seed": trainer.cfg.seed, "run_dir": str(trainer.run_dir)}
    write_checkpoint(path, Checkpoint("gpt", gpt.name, gpt.args.to_dict(), gpt.state_dict(),
                                      trainer.ema.state_dict(), meta), extra_files=extra)
    _prune(trainer.run_dir / "checkpoints", trainer.cfg.keep_last)
    return path


def _step_dirs(folder: Path) -> list[Path]:
    dirs = [p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)] if folder.is_dir() else []
    return sorted(dirs, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def _prune(folder: Path, keep: int) -> None:
    for old in _step_dirs(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path:
    dirs = _step_dirs(Path(run_dir) / "checkpoints")
    if not dirs:
        raise CheckpointError(f"no checkpoint to resume from in {Path(run_dir) / 'checkpoints'}")
    return dirs[-1]


def load_training_checkpoint(trainer: "Trainer", path: str | Path | None = None) -> Path:
    """Restore weights, EMA, heads, optimizer, step and this rank's RNG from a training checkpoint."""
    path = Path(path) if path else latest_checkpoint(trainer.run_dir)
    ckpt = read_checkpoint(path)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} holds weights only (no {STATE_FILE}): it can seed a new run, not resume one")
    load_state_dict_checked(trainer.gpt, ckpt.model)
    load_state_dict_checked(trainer.ema, ckpt.ema)
    aux = trainer.objective.auxiliary
    if aux is not None and len(aux.state_dict()):
        if not (path / HEADS_FILE).is_file():
            raise CheckpointError(f"{path} has no foresight heads, but this config trains some: resume with "
                                  "the config that made the checkpoint")
        load_state_dict_checked(aux, load_file(str(path / HEADS_FILE)))
    if trainer.teacher is not None:
        if not (path / TEACHER_FILE).is_file():
            raise CheckpointError(f"{path} has no {TEACHER_FILE}, but this config (foresight.teacher_decay) keeps "
                                  "a separate Mirai-E teacher: resume with the config that made the checkpoint")
        load_state_dict_checked(trainer.teacher, load_file(str(path / TEACHER_FILE)))
    state = read_torch_file(path / STATE_FILE)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.step, trainer.best_val = int(state["step"]), float(state["best_val"])
    rng = state["rng"][trainer.dist.rank]
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], trainer.device)
    return path
