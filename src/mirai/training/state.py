"""Training checkpoints: exported weights (model + EMA, safetensors) with the full training
state beside them (optimizer, step, RNG of every rank, the run's config, and the states the
auxiliary loss hands over, e.g. foresight heads as ``auxiliary.safetensors`` and a Mirai-E
teacher as ``teacher.safetensors``). Components are passed in; nothing here reaches into
the trainer.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import save

from mirai.checkpoint import (
    Checkpoint, check_finite, load_state_dict_checked, read_checkpoint, read_torch_file, read_weights, verify_file,
    write_checkpoint,
)
from mirai.config import to_dict
from mirai.errors import CheckpointError
from mirai.foresight.base import SavedState
from mirai.models.gpt import GPT
from mirai.training.config import TrainConfig

STATE_FILE, CONFIG_FILE = "training_state.pt", "train_config.yaml"
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


def save_training_checkpoint(
    path: Path, *, cfg: TrainConfig, step: int, best_val: float, val_nll: float | None, model: GPT, ema: GPT,
    optimizer: torch.optim.Optimizer, states: dict[str, SavedState], is_main: bool,
) -> Path:
    """Collective: every rank calls it (RNG states are gathered); rank 0 writes ``path`` atomically
    and prunes step checkpoints beyond ``cfg.keep_last``."""
    rng = _gather(_rng_state(next(model.parameters()).device))
    if not is_main:
        return path
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "best_val": best_val, "rng": rng}, buffer)
    extra = {STATE_FILE: buffer.getvalue(), CONFIG_FILE: yaml.safe_dump(to_dict(cfg), sort_keys=False).encode()}
    for name, state in states.items():
        tensors = {k: v.contiguous().cpu() for k, v in state.module.state_dict().items()}
        check_finite(tensors, f"{path} ({name})")
        extra[f"{name}.safetensors"] = save(tensors)
    meta = {"step": step, "val_nll": val_nll, "seed": cfg.seed, "run_dir": str(Path(cfg.run_dir))}
    name, args = model.checkpoint_config()
    write_checkpoint(path, Checkpoint(model.checkpoint_kind, name, args, model.state_dict(), ema.state_dict(), meta),
                     extra_files=extra)
    _prune(path.parent, cfg.keep_last)
    return path


def _step_dirs(folder: Path) -> list[Path]:
    dirs = [p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)] if folder.is_dir() else []
    return sorted(dirs, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def _prune(folder: Path, keep: int) -> None:
    for old in _step_dirs(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_step(path: Path) -> int:
    """The optimizer step of a ``step_NNNNNNN`` checkpoint directory."""
    return int(STEP_DIR.match(Path(path).name).group(1))


def has_step_checkpoints(run_dir: str | Path) -> bool:
    return bool(_step_dirs(Path(run_dir) / "checkpoints"))


def latest_checkpoint(run_dir: str | Path) -> Path:
    dirs = _step_dirs(Path(run_dir) / "checkpoints")
    if not dirs:
        raise CheckpointError(f"no checkpoint to resume from in {Path(run_dir) / 'checkpoints'}")
    return dirs[-1]


def load_training_checkpoint(
    path: Path, *, model: GPT, ema: GPT, optimizer: torch.optim.Optimizer, states: dict[str, SavedState],
    rank: int,
) -> tuple[int, float]:
    """Restore weights, EMA, the given states, optimizer and this rank's RNG from ``path``;
    returns ``(step, best_val)``. A missing file or mismatched tensor is a ``CheckpointError``."""
    ckpt = read_checkpoint(path)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} holds weights only (no {STATE_FILE}): it can seed a new run, not resume one")
    load_state_dict_checked(model, ckpt.model)
    load_state_dict_checked(ema, ckpt.ema)
    for name, state in states.items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{path} has no {file.name}, but this config keeps one ({state.made_by}): "
                                  "resume with the config that made the checkpoint")
        verify_file(path, file.name)
        load_state_dict_checked(state.module, read_weights(file, name))
    verify_file(path, STATE_FILE)
    state = read_torch_file(path / STATE_FILE)
    optimizer.load_state_dict(state["optimizer"])
    rng = state["rng"][rank]
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], next(model.parameters()).device)
    return int(state["step"]), float(state["best_val"])
