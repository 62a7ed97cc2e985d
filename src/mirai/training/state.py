"""Training checkpoints: exported weights (model + EMA, safetensors) with the full training
state beside them (optimizer, step, RNG of every rank, the run's config, and the states the
auxiliary loss hands over, e.g. foresight heads as ``auxiliary.safetensors`` and a Mirai-E
teacher as ``teacher.safetensors``). Components are passed in; nothing here reaches into
the trainer.

With ``distributed.strategy: fsdp`` the training state is sharded instead: every rank writes its
shards of the objective (GPT and heads), optimizer, EMA and any teacher with
``torch.distributed.checkpoint`` (DCP) into the same directory, which still holds consolidated
``model``/``ema`` safetensors in the usual layout (so ``mirai sample`` reads it) and resumes on
any number of ranks (DCP re-shards on load).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from safetensors.torch import save
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict, get_state_dict, set_model_state_dict, set_state_dict,
)

from mirai.atomic import atomic_write_dir
from mirai.checkpoint import (
    Checkpoint, check_finite, load_state_dict_checked, read_checkpoint, read_meta, read_torch_file,
    read_weights, verify_file, write_checkpoint,
)
from mirai.config import load_config, read_yaml, to_dict
from mirai.data.codes import CodeStore
from mirai.errors import CheckpointError, ConfigError, MiraiError
from mirai.foresight.base import SavedState
from mirai.models.gpt import GPT
from mirai.training.config import TrainConfig, resume_changes
from mirai.training.fsdp import full_state_dict

STATE_FILE, CONFIG_FILE = "training_state.pt", "train_config.yaml"
STEP_DIR = re.compile(r"^step_(\d+)$")
DCP_METADATA = ".metadata"  # the index torch.distributed.checkpoint writes beside its shard files


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
    optimizer: torch.optim.Optimizer, states: dict[str, SavedState], is_main: bool, objective: nn.Module | None = None,
    finished: bool = False, tokenizer: dict | None = None, data: dict[str, str | None] | None = None,
) -> Path:
    """Collective: every rank calls it (RNG states are gathered); rank 0 writes ``path`` atomically
    and prunes step checkpoints beyond ``cfg.keep_last`` (see ``_prune``). With ``strategy: fsdp`` the training
    state is sharded (``objective``: the module the optimizer trains; see the module docstring). ``finished``: the
    end-of-run save, after the final validation (a resume from it has nothing left to do). ``tokenizer``: the
    training store's manifest entry of the tokenizer that made its codes; its hash, EMA flag and path are recorded
    so that sampling and analyses can refuse another one (``mirai.sampling.grid.trained_tokenizer``). ``data``: the
    ``store_digest`` of the stores trained and validated on (``codes``, ``val_codes``), by which a resume and a
    bench know the run's data however its path is spelt (``recorded_data_matches``)."""
    rng = _gather(_rng_state(next(model.parameters()).device))
    if cfg.distributed.strategy == "fsdp":
        return _save_sharded(path, cfg=cfg, step=step, best_val=best_val, rng=rng, model=model, ema=ema,
                             objective=objective, optimizer=optimizer, states=states, is_main=is_main,
                             meta=_meta(cfg, step, val_nll, finished, tokenizer, data))
    if not is_main:
        return path
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "best_val": best_val, "rng": rng}, buffer)
    extra = {STATE_FILE: buffer.getvalue(), CONFIG_FILE: yaml.safe_dump(to_dict(cfg), sort_keys=False).encode()}
    for name, state in states.items():
        tensors = {k: v.contiguous().cpu() for k, v in state.module.state_dict().items()}
        check_finite(tensors, f"{path} ({name})")
        extra[f"{name}.safetensors"] = save(tensors)
    name, args = model.checkpoint_config()
    write_checkpoint(path, Checkpoint(model.checkpoint_kind, name, args, model.state_dict(), ema.state_dict(),
                                      _meta(cfg, step, val_nll, finished, tokenizer, data)),
                     extra_files=extra)
    _prune(path.parent, cfg.keep_last, cfg.save_every)
    return path


def link_checkpoint(source: Path, path: Path) -> Path:
    """Publish ``path`` (atomically) as the same checkpoint as ``source``, of hard links to its files: the run's
    ``best`` costs no second copy of weights and optimizer state (copies where the filesystem cannot link).
    Safe because checkpoint files are never changed in place: a rewrite publishes a new directory."""
    def write(tmp: Path) -> None:
        for f in sorted(source.iterdir()):
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)

    return atomic_write_dir(path, write)


def _meta(cfg: TrainConfig, step: int, val_nll: float | None, finished: bool, tokenizer: dict | None,
          data: dict[str, str | None] | None) -> dict:
    """What ``config.json`` records of the run beside the architecture."""
    meta = {"step": step, "val_nll": val_nll, "seed": cfg.seed, "run_dir": str(Path(cfg.run_dir)), "finished": finished}
    if tokenizer and tokenizer.get("sha256"):
        meta["tokenizer"] = {key: tokenizer.get(key) for key in ("sha256", "ema", "path")}
    if data:
        meta["data"] = data
    return meta


def store_digest(store: CodeStore) -> str:
    """SHA-256 of what a code store holds: its manifest's dataset and subset, views, sizes and tokenizer weights,
    without the paths it was read from (a copied or moved store is the same data), every label and file name, and
    the codes of about 1 024 images spread over the store (every image's would mean reading all of an ImageNet
    store's codes at each checkpoint; a change to a few images' codes alone can go unseen)."""
    manifest = store.manifest
    kept = {k: v for k, v in manifest.items() if k not in ("dataset", "tokenizer", "pillow_version")}
    kept["dataset"] = {k: v for k, v in (manifest.get("dataset") or {}).items() if k != "root"}
    kept["tokenizer"] = {k: (manifest.get("tokenizer") or {}).get(k) for k in ("sha256", "ema")}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(store.labels, dtype=np.int64).tobytes())
    digest.update("\n".join(store.files or []).encode())
    digest.update(np.ascontiguousarray(store.codes[:: max(1, len(store.codes) // 1024)]).tobytes())
    return digest.hexdigest()


def recorded_data_matches(checkpoint: Path, cfg: TrainConfig) -> dict[str, bool]:
    """For each code store whose data ``checkpoint`` records (``store_digest``) and that ``cfg`` names and is there
    to read: whether it holds that data, {"codes": True, ...}. Stores without the record (checkpoints saved before
    it) are left out: they can only be compared by path."""
    try:
        recorded = read_meta(checkpoint).get("data") or {}
    except (MiraiError, OSError, ValueError, AttributeError):
        return {}
    same = {}
    for key, digest in recorded.items():
        path = getattr(cfg.data, key, None) if isinstance(digest, str) else None
        if path:
            try:
                same[key] = store_digest(CodeStore.open(path)) == digest
            except MiraiError:
                pass
    return same


def changes_since(checkpoint: Path, cfg: TrainConfig) -> dict[str, tuple]:
    """``resume_changes`` between the config ``checkpoint`` was trained with (none saved: {}) and ``cfg``, where a
    code store that holds the data the checkpoint recorded is no change, however its path is now spelt."""
    saved = checkpoint / CONFIG_FILE
    if not saved.is_file():
        return {}
    trained_with = read_yaml(saved)
    for key, same in recorded_data_matches(checkpoint, cfg).items():
        if same:  # moved or copied, not changed
            trained_with.setdefault("data", {})[key] = getattr(cfg.data, key)
    return resume_changes(trained_with, to_dict(cfg))


def _step_dirs(folder: Path) -> list[Path]:
    dirs = [p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name)] if folder.is_dir() else []
    return sorted(dirs, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def _prune(folder: Path, keep: int, save_every: int) -> None:
    """Keep the newest ``keep`` step checkpoints, but drop those off the save schedule (not a multiple of
    ``save_every``: written on an interruption, or at the end of a run later extended) before any on it.
    An interruption's checkpoint was only a resume point; a scheduled one may be scored later (the bench
    asks for exactly its scoring steps), so the resume point must never push it out."""
    dirs = _step_dirs(folder)
    excess = len(dirs) - keep
    if excess <= 0:
        return
    older = dirs[:-1]  # the newest is always kept: it is where a resume starts
    off = [p for p in older if not save_every or checkpoint_step(p) % save_every]
    for old in (off + [p for p in older if p not in off])[:excess]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoint_step(path: Path) -> int:
    """The optimizer step of a ``step_NNNNNNN`` checkpoint directory."""
    return int(STEP_DIR.match(Path(path).name).group(1))


def has_step_checkpoints(run_dir: str | Path) -> bool:
    """Whether RUN_DIR/checkpoints holds any step-NNNNNNN directory."""
    return bool(_step_dirs(Path(run_dir) / "checkpoints"))


def checkpoints_after(run_dir: str | Path, step: int) -> list[Path]:
    """The step checkpoints under RUN_DIR/checkpoints saved after ``step``: a run resumed from ``step`` there
    would replace them."""
    return [p for p in _step_dirs(Path(run_dir) / "checkpoints") if checkpoint_step(p) > step]


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest step directory under RUN_DIR/checkpoints; CheckpointError if there is none."""
    dirs = _step_dirs(Path(run_dir) / "checkpoints")
    if not dirs:
        raise CheckpointError(f"no checkpoint to resume from in {Path(run_dir) / 'checkpoints'}")
    return dirs[-1]


# Everything a run writes into its directory: the trainer, its console and metrics logger, the sample grids,
# the directory lock, and the demo's scores. A folder holding only these is a run stopped before its first checkpoint.
RUN_FILES = frozenset({".lock", "config.yaml", "config_changes.jsonl", "log.txt", "metrics.jsonl", "evaluation.json"})
RUN_FOLDERS = frozenset({"checkpoints", "samples", "tensorboard", "wandb"})


def check_new_run_dir(run_dir: str | Path) -> None:
    """Refuse (``ConfigError``) to start a run in a folder of other work (a code store, notes, another tool's
    output, a checkpoint an earlier run kept), whose files the run would overwrite or mix with its own. A new or
    empty folder, or one left by a run stopped before its first checkpoint (only what a run writes, each file
    and folder of its kind, ``config.yaml`` a training config), is fine: the run starts it over."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    others = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()
                    if not (p.name in RUN_FILES and p.is_file() or p.name in RUN_FOLDERS and p.is_dir()))
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith(".")) \
        if (run_dir / "checkpoints").is_dir() else []
    if kept:
        raise ConfigError(f"run_dir {run_dir} holds checkpoints of an earlier run ({', '.join(kept[:3])}): continue "
                          f"from one with --resume {run_dir / 'checkpoints' / kept[0]}, or choose another run_dir")
    if not others and (run_dir / "config.yaml").is_file():
        try:
            load_config(TrainConfig, run_dir / "config.yaml")
        except MiraiError:
            others = ["config.yaml, which is not a training config"]
    if others:
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        raise ConfigError(f"run_dir {run_dir} holds files a training run does not write ({shown}); a new run "
                          "would overwrite them or mix its own with them: choose a new or empty run_dir")


def load_saved_states(path: Path, states: dict[str, SavedState]) -> None:
    """Load each ``NAME.safetensors`` of checkpoint ``path`` into ``states[NAME].module``, checked against
    the checkpoint's file hashes; ``CheckpointError`` when one is missing, altered or does not fit."""
    for name, state in states.items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise CheckpointError(f"{path} has no {file.name}, but this config keeps one ({state.made_by}): "
                                  "use the config that made the checkpoint")
        verify_file(path, file.name)
        load_state_dict_checked(state.module, read_weights(file, name))


def load_training_checkpoint(
    path: Path, *, model: GPT, ema: GPT, optimizer: torch.optim.Optimizer, states: dict[str, SavedState],
    rank: int, objective: nn.Module | None = None, world_size: int = 1,
) -> tuple[int, float]:
    """Restore weights, EMA, the given states, optimizer and this rank's RNG from ``path``;
    returns ``(step, best_val)``. A missing file or mismatched tensor is a ``CheckpointError``.
    A sharded checkpoint (``strategy: fsdp``) loads into ``objective`` on any number of ranks."""
    if (path / DCP_METADATA).is_file():
        return _load_sharded(path, objective=objective, ema=ema, optimizer=optimizer, states=states, rank=rank,
                             world_size=world_size)
    ckpt = read_checkpoint(path)
    if ckpt.kind != "gpt":
        raise CheckpointError(f"{path} holds a {ckpt.kind!r} model, not a GPT training checkpoint: give "
                              "RUN/checkpoints/step_NNNNNNN of a run (or --resume alone for the run's latest)")
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} holds weights only (no {STATE_FILE}): it can seed a new run, not resume one")
    load_state_dict_checked(model, ckpt.model)
    load_state_dict_checked(ema, ckpt.ema)
    load_saved_states(path, states)
    verify_file(path, STATE_FILE)
    state = read_torch_file(path / STATE_FILE)
    optimizer.load_state_dict(state["optimizer"])
    _set_rng(state["rng"][rank], next(model.parameters()).device)
    return int(state["step"]), float(state["best_val"])


def _set_rng(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


# ---------------------------------------------------------------------------- sharded (FSDP2)
def _sharded_state(objective: nn.Module, ema: GPT, optimizer: torch.optim.Optimizer,
                   states: dict[str, SavedState]) -> dict:
    """What DCP saves and loads, by the fully qualified parameter names (independent of how many
    ranks hold the shards): the objective (GPT and heads) with its optimizer, the EMA, and the
    saved states that live outside the objective (a teacher)."""
    model_state, optim_state = get_state_dict(objective, optimizer)
    out = {"model": model_state, "optimizer": optim_state, "ema": get_model_state_dict(ema)}
    inside = {id(m) for m in objective.modules()}
    for name, state in states.items():
        if id(state.module) not in inside:
            out[f"state.{name}"] = get_model_state_dict(state.module)
    return out


def _save_sharded(path: Path, *, cfg: TrainConfig, step: int, best_val: float, rng: list, model: GPT, ema: GPT,
                  objective: nn.Module, optimizer: torch.optim.Optimizer, states: dict[str, SavedState],
                  is_main: bool, meta: dict) -> Path:
    # Every rank writes its shards into a staging folder that ``recover_interrupted_writes`` tidies
    # if a rank dies; rank 0 then moves them into the atomically published checkpoint directory.
    stage = path.with_name(f".{path.name}.tmp-shards")
    if is_main:
        shutil.rmtree(stage, ignore_errors=True)
    _barrier()
    _dcp(dcp.save, _sharded_state(objective, ema, optimizer, states), stage)
    model_state, ema_state = full_state_dict(model), full_state_dict(ema)  # gathered on rank 0 only
    if is_main:
        buffer = io.BytesIO()
        torch.save({"step": step, "best_val": best_val, "rng": rng}, buffer)
        extra: dict[str, bytes | Path] = {
            STATE_FILE: buffer.getvalue(), CONFIG_FILE: yaml.safe_dump(to_dict(cfg), sort_keys=False).encode(),
            **{f.name: f for f in stage.iterdir()},
        }
        name, args = model.checkpoint_config()
        write_checkpoint(path, Checkpoint(model.checkpoint_kind, name, args, model_state, ema_state, meta),
                         extra_files=extra)
        shutil.rmtree(stage, ignore_errors=True)
        _prune(path.parent, cfg.keep_last, cfg.save_every)
    _barrier()  # no rank reads or overwrites the checkpoint before it is published
    return path


def _load_sharded(path: Path, *, objective: nn.Module | None, ema: GPT, optimizer: torch.optim.Optimizer,
                  states: dict[str, SavedState], rank: int, world_size: int) -> tuple[int, float]:
    if objective is None:
        raise CheckpointError(f"{path} is a sharded (FSDP) checkpoint: resume it through the trainer "
                              "(mirai train --resume), or load its model.safetensors/ema.safetensors")
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} has shards but no {STATE_FILE}: it was not written completely; "
                              "resume from an earlier checkpoint (--resume PATH)")
    for name in sorted(f.name for f in path.iterdir() if f.name == DCP_METADATA or f.suffix == ".distcp"):
        verify_file(path, name)  # every rank: one failing alone would leave the others waiting in dcp.load
    verify_file(path, STATE_FILE)
    target = _sharded_state(objective, ema, optimizer, states)
    try:
        _dcp(dcp.load, target, path)
    except (CheckpointException, RuntimeError, ValueError, KeyError) as err:  # a missing or mis-shaped entry
        raise CheckpointError(f"{path} does not match this run's model, heads or teacher ({err}); resume with "
                              "the config that made the checkpoint") from err
    set_state_dict(objective, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"])
    set_model_state_dict(ema, target["ema"])
    for name, state in states.items():
        if f"state.{name}" in target:
            set_model_state_dict(state.module, target[f"state.{name}"])
    saved = read_torch_file(path / STATE_FILE)
    # Each rank's dropout stream continues exactly when the world size is the same; on a different
    # number of ranks the streams are the fresh per-rank ones (weights, optimizer and data order
    # still continue exactly).
    if len(saved["rng"]) == world_size:
        _set_rng(saved["rng"][rank], next(objective.parameters()).device)
    return int(saved["step"]), float(saved["best_val"])


def _dcp(call, state: dict, path: Path) -> None:
    """``dcp.save``/``dcp.load`` of ``state`` at ``path``, collective over the ranks of the process
    group, or in this process alone when there is none (a sharded run resumed on one process: DCP
    warns about that case even when it is asked for)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        call(state, checkpoint_id=path, no_dist=not dist.is_initialized())


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
