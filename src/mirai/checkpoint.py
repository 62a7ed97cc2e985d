"""Safe checkpoints: Mirai's own directory format and LlamaGen's ``.pt`` files.

Mirai format — a directory::

    config.json         {"format": "mirai", "version": 1, "kind": "gpt", "name": ..., "args": {...}, "meta": {...}}
    model.safetensors   the weights
    ema.safetensors     EMA weights, when training kept them

``config.json`` is enough to rebuild the module: a caller names the class it expects
(``load(path, GPT)``), and any class that follows ``Checkpointable`` can be saved and
rebuilt. This module sits below the models and knows none of them; the one place that opens
a file of unknown kind keeps an explicit table (``mirai.convert.MODEL_KINDS``). Directories
are written to a temporary sibling and renamed into place, so a crash never leaves a
half-written checkpoint where a good one was.

LlamaGen's ``.pt`` files are read with ``torch.load(weights_only=True)`` only: a file that
holds arbitrary pickled objects is refused, never executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterable, Protocol, TypeVar, runtime_checkable

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mirai.atomic import atomic_write_dir
from mirai.config import saved_config_error
from mirai.errors import CheckpointError, ConfigError, MiraiError, refuse_under_file
from mirai.hub.resolve import missing_message, refuse_a_file_of_a_checkpoint, resolve

FORMAT_VERSION = 1
CONFIG_FILE, MODEL_FILE, EMA_FILE = "config.json", "model.safetensors", "ema.safetensors"

M = TypeVar("M", bound=nn.Module)


@runtime_checkable
class Checkpointable(Protocol):
    """What a module class provides to be saved and rebuilt from ``config.json``.

    ``checkpoint_kind`` names the family in the file (``"gpt"``, ``"vq"``, ...);
    ``checkpoint_config()`` returns ``(name, args)`` with JSON-able args, and the class method
    ``from_checkpoint_config(name, args)`` builds an untrained module from them, checking ``args`` with
    ``mirai.config.from_dict`` (a bad key or value is a ``ValueError``, reported naming the file).
    """

    checkpoint_kind: ClassVar[str]

    def checkpoint_config(self) -> tuple[str, dict]: ...

    @classmethod
    def from_checkpoint_config(cls, name: str, args: dict) -> nn.Module: ...


@dataclass
class Checkpoint:
    """What a checkpoint holds, before any module is built."""

    kind: str
    name: str
    args: dict
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    meta: dict = field(default_factory=dict)
    config_file: Path | None = None  # the config.json it was read from (None: made in memory)

    def build(self, cls: type[M], use_ema: bool = False, strict: bool = True) -> M:
        """Rebuild ``cls`` (which must be of this checkpoint's kind) and load the (EMA) weights."""
        if self.kind != cls.checkpoint_kind:
            raise CheckpointError(
                f"this checkpoint holds a {self.kind!r} model, but a {cls.checkpoint_kind!r} one "
                f"({cls.__name__}) is needed here"
            )
        try:  # the class checks its stored args (from_dict): unknown keys, ill-typed or inconsistent values
            if not isinstance(self.args, dict):
                raise ConfigError(f"args: expected a mapping of model settings, got {self.args!r:.80}")
            module = cls.from_checkpoint_config(self.name, self.args)
        except ValueError as err:  # ConfigError, or a plain ValueError from the args' own checks
            raise saved_config_error(self.config_file or CONFIG_FILE, err) from None
        state = self.ema if use_ema else self.model
        if use_ema and state is None:
            raise CheckpointError("this checkpoint has no EMA weights; load its raw weights instead (--raw-weights "
                                  "for mirai sample, serve and analyze; mirai extract without --ema; use_ema=False "
                                  "in Python)")
        load_state_dict_checked(module, state, strict=strict)
        return module


def load_state_dict_checked(module: nn.Module, state: dict[str, torch.Tensor], strict: bool = True) -> None:
    """``load_state_dict`` that ignores a stray ``freqs_cis`` and lists every bad key clearly."""
    state = {k: v for k, v in state.items() if k != "freqs_cis"}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if strict and (missing or unexpected):
        raise CheckpointError(
            "checkpoint does not match the model: "
            + (f"missing keys {missing}; " if missing else "")
            + (f"unexpected keys {unexpected}; " if unexpected else "")
            + "check the model name and its vocabulary/grid/class-count arguments"
        )
    bad_shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state.keys() & expected.keys()
        if state[k].shape != expected[k].shape
    ]
    if bad_shapes:
        raise CheckpointError(
            "checkpoint shapes do not match the model (wrong vocabulary, grid, class count or size?): "
            + "; ".join(bad_shapes)
        )
    module.load_state_dict(state, strict=strict)


# ---------------------------------------------------------------------------- writing
def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


# Checksums are verified on every load unless MIRAI_VERIFY_CHECKSUMS=0 (hashing runs at about
# 1 GB/s: worth skipping only for multi-GB checkpoints read often).
VERIFY_ENV = "MIRAI_VERIFY_CHECKSUMS"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (checkpoint and asset fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(directory: Path, name: str) -> None:
    """Check ``directory/name`` against the SHA-256 its ``config.json`` recorded at save time
    (checkpoints written before checksums existed, and files they do not list, pass);
    ``CheckpointError`` naming the file on a mismatch, or when a file it records is gone."""
    if os.environ.get(VERIFY_ENV, "1") == "0":
        return
    recorded = json.loads((directory / CONFIG_FILE).read_text()).get("sha256", {})
    if name not in recorded:
        return
    if not (directory / name).exists():  # loading on without it would swap in other weights unnoticed
        raise CheckpointError(
            f"{directory / name} is missing, though {CONFIG_FILE} records it as saved with this checkpoint "
            f"(a partial copy or a deleted file). Copy the checkpoint again from its source (set "
            f"{VERIFY_ENV}=0 to load only what is there)")
    if file_sha256(directory / name) != recorded[name]:
        raise CheckpointError(
            f"{directory / name} does not match the checksum recorded when it was saved: the file is damaged "
            f"(bit rot, a partial copy) or was modified. Restore it from a copy, or use another checkpoint "
            f"(set {VERIFY_ENV}=0 to load it anyway)"
        )


def nonfinite_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold NaN or infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Refuse (``CheckpointError``) to keep non-finite weights: a checkpoint must always be a safe
    point to resume or sample from."""
    bad = nonfinite_keys(state)
    if bad:
        raise CheckpointError(f"refusing to save {what}: {len(bad)} tensor(s) hold NaN or infinity "
                              f"(e.g. {bad[:3]}); nothing was written. Lower the learning rate or check the data")


# The files a Mirai checkpoint directory may hold (weights, training state, FSDP's shards); anything else in a
# folder about to be replaced is the user's, and is never deleted with it.
CHECKPOINT_FILES = re.compile(r"config\.json|.+\.safetensors|training_state\.pt|train_config\.yaml|.+\.distcp|\.metadata")


def check_output_dir(path: str | Path, name: str, *, holds: str = "checkpoint", marker: str = CONFIG_FILE,
                     fmt: str = "mirai", own: re.Pattern = CHECKPOINT_FILES, inputs: Iterable[str | Path] = (),
                     overwrite: bool = False) -> Path:
    """Refuse (``ConfigError``) a directory about to be written whole (a ``holds``: its ``marker`` file is JSON
    saying ``"format": fmt``, and its files' names all match ``own``) that is one of the ``inputs``, a file, a
    folder holding anything else (even beside a ``holds``: replacing it would delete those files), an existing
    ``holds`` (unless ``overwrite``), or lies under a file. Nothing is created: call this before any work."""
    path = Path(path)
    for given in inputs:
        if path.resolve() == Path(given).resolve():
            raise ConfigError(f"{name} {path} is also the input; writing it would destroy the input: "
                              "choose another directory")
    refuse_under_file(path, name, folder=f"{holds} directory")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    try:
        is_ours = json.loads((path / marker).read_text()).get("format") == fmt
    except (OSError, ValueError, AttributeError):  # missing, a folder, not JSON, not a mapping
        is_ours = False
    if not is_ours:
        raise ConfigError(f"{name} {path} is a folder that holds other files, not a {holds}; give a new directory")
    foreign = sorted(p.name for p in path.iterdir() if not own.fullmatch(p.name))
    if foreign:
        raise ConfigError(f"{name} {path} holds a {holds} and other files ({', '.join(foreign[:4])}), which "
                          "replacing it would delete: move them out, or choose another directory")
    if not overwrite:
        raise ConfigError(f"{name} {path} already holds a {holds}; pass --overwrite (Python: overwrite=True) to "
                          "replace it or choose another directory")
    return path


def write_checkpoint(path: str | Path, ckpt: Checkpoint, extra_files: dict[str, bytes | Path] | None = None) -> Path:
    """Write a ``Checkpoint`` as a Mirai directory (atomically); non-finite weights are refused.
    ``extra_files`` values are contents, or finished files on the same filesystem that are moved in
    (e.g. the shards ``torch.distributed.checkpoint`` wrote from every rank)."""
    check_finite(ckpt.model, f"{path} (model weights)")
    if ckpt.ema is not None:
        check_finite(ckpt.ema, f"{path} (EMA weights)")

    def write(tmp: Path) -> None:
        save_file(_contiguous(ckpt.model), str(tmp / MODEL_FILE))
        if ckpt.ema is not None:
            save_file(_contiguous(ckpt.ema), str(tmp / EMA_FILE))
        for name, data in (extra_files or {}).items():
            if isinstance(data, Path):
                os.replace(data, tmp / name)
            else:
                (tmp / name).write_bytes(data)
        # Written last, with the SHA-256 of every other file, so a load can tell bit rot from weights.
        config = {
            "format": "mirai", "version": FORMAT_VERSION, "kind": ckpt.kind,
            "name": ckpt.name, "args": ckpt.args, "meta": ckpt.meta,
            "sha256": {f.name: file_sha256(f) for f in sorted(tmp.iterdir())},
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))

    return atomic_write_dir(path, write)


def save(
    path: str | Path, model: nn.Module, ema: nn.Module | dict | None = None, meta: dict | None = None
) -> Path:
    """Save a ``Checkpointable`` ``model`` (and optionally EMA weights) as a Mirai checkpoint directory."""
    if not isinstance(model, Checkpointable):
        raise CheckpointError(f"cannot save a {type(model).__name__}: it does not define checkpoint_kind/"
                              "checkpoint_config (mirai.checkpoint.Checkpointable)")
    name, args = model.checkpoint_config()
    ema_state = ema.state_dict() if isinstance(ema, nn.Module) else ema
    return write_checkpoint(path, Checkpoint(model.checkpoint_kind, name, args, model.state_dict(), ema_state,
                                             meta or {}))


# ---------------------------------------------------------------------------- reading
# Module names that wrappers insert into state-dict keys: DDP (module), torch.compile (_orig_mod),
# FSDP1 (_fsdp_wrapped_module) and activation checkpointing (_checkpoint_wrapped_module).
WRAPPER_NAMES = frozenset({"module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper names from keys, as whole dotted components only (``module.layers.0.w``
    -> ``layers.0.w``; a model's own ``submodule.w`` is left alone)."""
    return {".".join(part for part in key.split(".") if part not in WRAPPER_NAMES): v for key, v in state.items()}


def read_torch_file(path: str | Path) -> dict:
    """Read a ``.pt``/``.pth`` file (or a name ``mirai.hub.resolve`` knows) with ``weights_only=True``;
    refuse pickled code."""
    path = resolve(path, "weights file")
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols would stand before our own error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load's unpickler raises KeyError, IndexError, ... on arbitrary bytes
        detail, unpickling = str(err), isinstance(err, pickle.UnpicklingError)
        if _is_config(path):  # a config given where weights belong: "corrupt pickle" would mislead
            raise CheckpointError(f"{path} is a YAML or JSON config, not a weights file: give a checkpoint folder "
                                  "or a .pt/.safetensors file") from None
        if unpickling and "Unsupported global" in detail:
            reason = "it holds pickled Python objects that are not plain tensors"
        elif unpickling or "Invalid magic number" in detail:  # the latter: pickle.dump of protocol 1-3
            reason = "it is corrupt, a plain pickle rather than a torch.save file, or pickled data other than tensors"
        else:
            raise CheckpointError(f"{path} is not a readable PyTorch file (corrupt or truncated?): "
                                  f"{type(err).__name__}: {err}") from None
        raise CheckpointError(
            f"{path} was not loaded: {reason}. Only weights are read (torch.load with weights_only=True), "
            "because unpickling arbitrary objects can run code. Re-save just the state dict "
            "(torch.save(model.state_dict(), ...)) where you trust the file."
        ) from None


def _is_config(path: str | Path) -> bool:
    """Whether the file is a small YAML or JSON mapping (a text pickle of protocol 0 reads as a plain string)."""
    try:
        if Path(path).stat().st_size > 1 << 20:
            return False
        return isinstance(yaml.safe_load(Path(path).read_text(encoding="utf-8")), dict)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


CONTAINER_KEYS = ("model", "module", "state_dict")  # where LlamaGen-style files keep the (raw) state dict


def llamagen_state_dicts(raw: dict, path: str | Path = "") -> tuple[dict, dict | None]:
    """(weights, ema weights or None) from any LlamaGen container layout."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a state dict or a dict of state dicts, got {type(raw).__name__}")
    ema = raw.get("ema") if isinstance(raw.get("ema"), dict) else None
    for key in CONTAINER_KEYS:
        if isinstance(raw.get(key), dict):
            model = raw[key]
            break
    else:
        model = raw
    if not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(
            f"{path}: no state dict found (top-level keys {sorted(raw)[:10]}); expected 'model', 'ema', "
            "'module', 'state_dict' or a bare state dict"
        )
    return _strip_prefixes(model), (_strip_prefixes(ema) if ema is not None else None)


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def read_weights(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``.pt/.pth/.bin`` file read with
    ``weights_only=True``, unwrapped from ``{"model": ...}``/``{"state_dict": ...}`` containers
    and wrapper prefixes. ``what`` names the file's role in error messages (``CheckpointError``)."""
    path = resolve(path, what)
    if not path.is_file():
        raise CheckpointError(f"{what} file {path} does not exist")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path}: {what} must be one of {', '.join(WEIGHT_SUFFIXES)} files")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path} is corrupt or truncated: {err}") from None
    state, _ = llamagen_state_dicts(read_torch_file(path), path)
    return state


def read_manifest(path: Path, fmt: str, version: int, error: type[MiraiError], fix: str) -> dict:
    """The JSON manifest at ``path``, checked to say ``"format": fmt`` and a version this code reads.

    Every failure raises ``error`` naming the file and ending with ``fix`` (what to do)."""
    if not path.is_file():
        raise error(f"{path.parent} has no {path.name}: {fix}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{path} is corrupt JSON ({err}); {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise error(f"{path} is not a {fmt!r} manifest (no 'format: {fmt}'); {fix}")
    if manifest.get("version", 0) > version:
        raise error(f"{path.parent} was written by a newer Mirai (format version {manifest['version']}); "
                    "upgrade mirai")
    return manifest


def _refuse_a_folder_of_checkpoints(path: Path) -> None:
    """``CheckpointError`` listing the checkpoints when ``path`` is a run directory or its
    ``checkpoints/`` folder (a common slip for ``--gpt``) rather than one checkpoint."""
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())
    steps, best = [n for n in names if n.startswith("step_")], "best" in names
    if folder != path or steps or best:
        what = "a training run directory" if folder != path else "a folder of checkpoints"
        found = ", ".join(steps[-2:] + ["best (lowest validation NLL)"] * best)
        if not found:
            raise CheckpointError(f"{path} is {what}, not a checkpoint, and {folder} holds none yet")
        raise CheckpointError(f"{path} is {what}, not a checkpoint: give one of {folder}/{{{found}}}"
                              + (" (the last step_* is the latest)" if steps else ""))


def read_meta(path: str | Path) -> dict:
    """The ``meta`` a Mirai checkpoint's ``config.json`` records (for a training checkpoint: step, val_nll, seed,
    run_dir, finished), without reading its weights. ``OSError``/``ValueError`` for a missing or corrupt file."""
    return json.loads((Path(path) / CONFIG_FILE).read_text()).get("meta", {})


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a Mirai checkpoint directory, given as a path or a name ``mirai.hub.resolve`` knows
    (LlamaGen ``.pt`` files go through ``mirai.convert``)."""
    path = resolve(path)
    if not path.exists():
        raise CheckpointError(missing_message(path))
    if path.is_file():
        refuse_a_file_of_a_checkpoint(path)
        raise CheckpointError(
            f"{path} is a file, not a Mirai checkpoint directory; convert a LlamaGen .pt first with "
            "`mirai convert llamagen`"
        )
    if not (path / CONFIG_FILE).exists():
        _refuse_a_folder_of_checkpoints(path)
    config = read_manifest(path / CONFIG_FILE, "mirai", FORMAT_VERSION, CheckpointError,
                           "not a Mirai checkpoint (or an interrupted write)")
    if "kind" not in config:
        raise CheckpointError(f"{path / CONFIG_FILE} names no model 'kind': not a Mirai checkpoint config")

    def tensors(name: str) -> dict[str, torch.Tensor] | None:
        verify_file(path, name)
        return read_weights(path / name, name) if (path / name).exists() else None

    model = tensors(MODEL_FILE)
    if model is None:
        raise CheckpointError(f"{path} has no {MODEL_FILE}")
    return Checkpoint(config["kind"], config.get("name", ""), config.get("args", {}), model,
                      tensors(EMA_FILE), config.get("meta", {}), path / CONFIG_FILE)


def load(path: str | Path, cls: type[M], use_ema: bool = False) -> M:
    """Rebuild the ``cls`` module stored at ``path`` (a Mirai directory) with its weights, in eval mode.

    Raises ``CheckpointError`` when the directory is missing, corrupt, or holds another kind; ``TypeError`` when
    ``cls`` is not a class (a name such as "VQModel": import the class, ``from mirai.models import VQModel``).
    """
    if not isinstance(cls, type):
        raise TypeError(f"cls is the model class to build (e.g. mirai.models.GPT), not {cls!r}")
    ckpt = read_checkpoint(path)
    try:
        return ckpt.build(cls, use_ema=use_ema).eval()
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
