"""Safe checkpoints: Mirai's own directory format and LlamaGen's ``.pt`` files.

Mirai format — a directory::

    config.json         {"format": "mirai", "version": 1, "kind": "gpt", "name": ..., "args": {...}, "meta": {...}}
    model.safetensors   the weights
    ema.safetensors     EMA weights, when training kept them

``config.json`` is enough to rebuild the module (``kind`` picks a builder registered with
``register_kind``). Directories are written to a temporary sibling and renamed into place,
so a crash never leaves a half-written checkpoint where a good one was.

LlamaGen's ``.pt`` files are read with ``torch.load(weights_only=True)`` only: a file that
holds arbitrary pickled objects is refused, never executed.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mirai.errors import CheckpointError

FORMAT_VERSION = 1
CONFIG_FILE, MODEL_FILE, EMA_FILE = "config.json", "model.safetensors", "ema.safetensors"

# kind -> (builder from (name, args), function returning (name, args) of a module)
_BUILDERS: dict[str, Callable[[str, dict], nn.Module]] = {}
_DESCRIBERS: dict[type, tuple[str, Callable[[nn.Module], tuple[str, dict]]]] = {}


def register_kind(kind: str, cls: type, build: Callable[[str, dict], nn.Module], describe: Callable) -> None:
    """Teach the checkpoint code to save modules of type ``cls`` and rebuild them from JSON."""
    _BUILDERS[kind] = build
    _DESCRIBERS[cls] = (kind, describe)


def _ensure_registered() -> None:
    # Importing the packages that define checkpointable networks registers their kinds.
    import mirai.evaluation.fashion_classifier  # noqa: F401
    import mirai.foresight.encoders  # noqa: F401
    import mirai.models  # noqa: F401


@dataclass
class Checkpoint:
    """What a checkpoint holds, before any module is built."""

    kind: str
    name: str
    args: dict
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    meta: dict = field(default_factory=dict)

    def build(self, use_ema: bool = False, strict: bool = True) -> nn.Module:
        """Rebuild the module and load the (EMA) weights into it."""
        _ensure_registered()
        if self.kind not in _BUILDERS:
            raise CheckpointError(f"unknown checkpoint kind {self.kind!r}; known kinds: {sorted(_BUILDERS)}")
        module = _BUILDERS[self.kind](self.name, self.args)
        state = self.ema if use_ema else self.model
        if use_ema and state is None:
            raise CheckpointError("this checkpoint has no EMA weights; load it without use_ema")
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


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmpdir)`` and move the finished directory to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a published checkpoint should be readable like any file
    try:
        write(tmp)
        for f in tmp.iterdir():  # make the data durable before the rename publishes it
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_checkpoint(path: str | Path, ckpt: Checkpoint, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a ``Checkpoint`` as a Mirai directory (atomically)."""

    def write(tmp: Path) -> None:
        config = {
            "format": "mirai", "version": FORMAT_VERSION, "kind": ckpt.kind,
            "name": ckpt.name, "args": ckpt.args, "meta": ckpt.meta,
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        save_file(_contiguous(ckpt.model), str(tmp / MODEL_FILE))
        if ckpt.ema is not None:
            save_file(_contiguous(ckpt.ema), str(tmp / EMA_FILE))
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)

    return atomic_write_dir(path, write)


def describe(module: nn.Module) -> tuple[str, str, dict]:
    """(kind, name, args) of a registered module type."""
    _ensure_registered()
    for cls, (kind, fn) in _DESCRIBERS.items():
        if isinstance(module, cls):
            name, args = fn(module)
            return kind, name, args
    raise CheckpointError(f"cannot save a {type(module).__name__}: no checkpoint kind is registered for it")


def save(
    path: str | Path, model: nn.Module, ema: nn.Module | dict | None = None, meta: dict | None = None
) -> Path:
    """Save ``model`` (and optionally EMA weights) as a Mirai checkpoint directory."""
    kind, name, args = describe(model)
    ema_state = ema.state_dict() if isinstance(ema, nn.Module) else ema
    return write_checkpoint(path, Checkpoint(kind, name, args, model.state_dict(), ema_state, meta or {}))


# ---------------------------------------------------------------------------- reading
def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes left by DDP, FSDP and torch.compile."""
    prefixes = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            key = key.replace(prefix, "")
        out[key] = value
    return out


def read_torch_file(path: str | Path) -> dict:
    """Read a ``.pt``/``.pth`` file with ``weights_only=True``; refuse pickled code."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err)
        if "Unsupported global" in detail:
            reason = "it holds pickled Python objects that are not plain tensors"
        else:
            reason = "it is corrupt, or it holds pickled data other than plain tensors"
        raise CheckpointError(
            f"{path} was not loaded: {reason}. Only weights are read (torch.load with weights_only=True), "
            "because unpickling arbitrary objects can run code. Re-save just the state dict "
            "(torch.save(model.state_dict(), ...)) where you trust the file."
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch file (corrupt or truncated?): {err}") from None


def llamagen_state_dicts(raw: dict, path: str | Path = "") -> tuple[dict, dict | None]:
    """(weights, ema weights or None) from any LlamaGen container layout."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a state dict or a dict of state dicts, got {type(raw).__name__}")
    ema = raw.get("ema") if isinstance(raw.get("ema"), dict) else None
    for key in ("model", "module", "state_dict"):
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


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a Mirai checkpoint directory (LlamaGen ``.pt`` files go through ``mirai.convert``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file, not a Mirai checkpoint directory; convert a LlamaGen .pt first with "
            "`mirai convert llamagen`"
        )
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no {CONFIG_FILE}: not a Mirai checkpoint (or an interrupted write)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is corrupt JSON: {err}") from None
    if config.get("format") != "mirai" or "kind" not in config:
        raise CheckpointError(f"{config_path} is not a Mirai checkpoint config (no 'format: mirai' / 'kind')")
    if config.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer Mirai (format {config['version']}); upgrade mirai")

    def tensors(name: str) -> dict[str, torch.Tensor] | None:
        file = path / name
        if not file.exists():
            return None
        try:
            return load_file(str(file))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{file} is corrupt or truncated: {err}") from None

    model = tensors(MODEL_FILE)
    if model is None:
        raise CheckpointError(f"{path} has no {MODEL_FILE}")
    return Checkpoint(config["kind"], config.get("name", ""), config.get("args", {}), model,
                      tensors(EMA_FILE), config.get("meta", {}))


def load(path: str | Path, use_ema: bool = False, kind: str | None = None) -> nn.Module:
    """Rebuild the module stored at ``path`` (a Mirai directory) with its weights, in eval mode."""
    ckpt = read_checkpoint(path)
    if kind is not None and ckpt.kind != kind:
        raise CheckpointError(f"{path} holds a {ckpt.kind!r} checkpoint, but a {kind!r} one is needed here")
    return ckpt.build(use_ema=use_ema).eval()
