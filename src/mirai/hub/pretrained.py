"""Mirai checkpoints on the Hugging Face Hub: ``save_pretrained``, ``from_pretrained``, ``push_to_hub``.

A Hub repository holds a Mirai checkpoint folder as it is (``config.json`` + ``model.safetensors``
[+ ``ema.safetensors``, ``train_config.yaml``]; see ``mirai.checkpoint``), so a repository, a
local folder and a training run's ``checkpoints/best`` are read by the same code. Downloads go
through ``huggingface_hub.snapshot_download`` (its cache, ``HF_HUB_OFFLINE`` and ``HF_TOKEN``);
uploads through ``huggingface_hub.HfApi.upload_folder``. ``PretrainedMixin`` gives the model
classes (GPT, raster or PAR, and VQModel) the same three as methods.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import TypeVar

from torch import nn

from mirai.atomic import atomic_write_dir
from mirai import checkpoint
from mirai.errors import CheckpointError
from mirai.hub.resolve import HF_SCHEME, hub_download, missing_message, resolve

M = TypeVar("M", bound=nn.Module)
REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def locate(spec: str | Path, revision: str | None = None) -> Path:
    """The local Mirai checkpoint folder for ``spec``: a folder, an asset name, ``hf://OWNER/REPO[/DIR]``
    or a bare Hub repository id ``OWNER/REPO`` (at ``revision``: branch, tag or commit; default main)."""
    text = str(spec)
    if revision is not None and text.startswith(HF_SCHEME):
        raise CheckpointError(f"{text}: give the revision inside the address (hf://OWNER/REPO@REVISION/...) "
                              "or as revision=, not both")
    path = resolve(spec)
    if path.exists():
        return path
    if REPO_ID.fullmatch(text):
        return hub_download(text, "", revision, f"{HF_SCHEME}{text}")
    raise CheckpointError(missing_message(spec))


def save_pretrained(model: nn.Module | str | Path, directory: str | Path, ema: nn.Module | dict | None = None,
                    meta: dict | None = None) -> Path:
    """Write ``model`` as a Mirai checkpoint folder ``directory`` (atomically; replaces one there).

    ``model``: a checkpointable module (GPT, VQModel, ...; with optional ``ema`` weights and
    ``meta``), or an existing checkpoint folder/name, copied whole (a training checkpoint keeps its
    EMA weights and ``train_config.yaml``) after its checksums are verified. ``CheckpointError``
    when the source is not a Mirai checkpoint."""
    if isinstance(model, nn.Module):
        return checkpoint.save(directory, model, ema=ema, meta=meta)
    source = locate(model)
    checkpoint.read_checkpoint(source)  # refuses anything that is not a sound checkpoint
    return atomic_write_dir(directory, lambda tmp: _copy_files(source, tmp))


def _copy_files(source: Path, target: Path) -> None:
    for f in source.iterdir():
        if f.is_file():
            shutil.copyfile(f, target / f.name)


def from_pretrained(repo_id_or_dir: str | Path, cls: type[M], revision: str | None = None,
                    use_ema: bool = False) -> M:
    """The ``cls`` module (e.g. ``GPT``, ``VQModel``) of a Mirai checkpoint, in eval mode.

    ``repo_id_or_dir``: a local folder, an asset name (``fashion/vq8``), ``hf://OWNER/REPO[@REV][/DIR]``
    or a Hub repository id ``OWNER/REPO`` (``revision``: branch, tag or commit). ``use_ema``: load the
    EMA weights (a training checkpoint has them). Raises ``CheckpointError`` for a missing or
    unreachable checkpoint, or one of another kind."""
    return checkpoint.load(locate(repo_id_or_dir, revision), cls, use_ema=use_ema)


def push_to_hub(model: nn.Module | str | Path, repo_id: str, *, revision: str | None = None,
                private: bool | None = None, token: str | None = None, path_in_repo: str | None = None,
                commit_message: str = "Upload Mirai checkpoint", ema: nn.Module | dict | None = None,
                meta: dict | None = None) -> str:
    """Upload ``model`` (a module, or a checkpoint folder/name) to the Hub model repository ``repo_id``
    (created when missing) as a Mirai checkpoint folder; returns the commit URL.

    ``path_in_repo``: a sub-folder (``hf://OWNER/REPO/DIR`` then reads it); ``revision``: the branch.
    Needs a token (``token``, ``HF_TOKEN`` or ``huggingface-cli login``) with write access."""
    from huggingface_hub import HfApi

    if not REPO_ID.fullmatch(repo_id):
        raise CheckpointError(f"repo_id {repo_id!r} is not OWNER/NAME; give e.g. your-name/mirai-fashion-gpt")
    api = HfApi(token=token, library_name="mirai")
    with tempfile.TemporaryDirectory(prefix="mirai-push-") as tmp:
        folder = save_pretrained(model, Path(tmp) / "checkpoint", ema=ema, meta=meta)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, path_in_repo=path_in_repo,
                                 revision=revision, commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))


class PretrainedMixin:
    """``save_pretrained``/``from_pretrained``/``push_to_hub`` as methods of a checkpointable model class."""

    def save_pretrained(self, directory: str | Path, **kwargs) -> Path:
        """``mirai.hub.pretrained.save_pretrained(self, directory, **kwargs)``."""
        return save_pretrained(self, directory, **kwargs)

    @classmethod
    def from_pretrained(cls: type[M], repo_id_or_dir: str | Path, revision: str | None = None,
                        use_ema: bool = False) -> M:
        """``mirai.hub.pretrained.from_pretrained(repo_id_or_dir, cls, revision, use_ema)``."""
        return from_pretrained(repo_id_or_dir, cls, revision=revision, use_ema=use_ema)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """``mirai.hub.pretrained.push_to_hub(self, repo_id, **kwargs)``."""
        return push_to_hub(self, repo_id, **kwargs)
