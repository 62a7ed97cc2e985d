"""One resolver for every model file or folder Mirai reads: ``resolve(spec) -> local Path``.

``spec`` may be

* a local path (a Mirai checkpoint folder, a LlamaGen/PAR ``.pt``, ...): returned as it is;
* a committed asset name, ``fashion/vq8``, ``fashion/vq16``, ``fashion/encoder8``, ``fashion/encoder8_ssl`` or
  ``fashion/evaluator`` (the folders under ``mirai/assets``), so commands work from any
  directory, as ``--config fashion/baseline.yaml`` does;
* ``hf://OWNER/REPO[@REVISION][/PATH]``: a file (``PATH`` ending in a weight suffix) fetched with
  ``huggingface_hub.hf_hub_download``, or a folder (a Mirai checkpoint: the whole repository, or
  the sub-folder ``PATH``) fetched with ``huggingface_hub.snapshot_download``. Both honour
  ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` (cached files only);
* a short name of a released LlamaGen or PAR file, ``llamagen:c2i_B_256``, ``par:XL-4x``, ...
  (``RELEASED``), fetched from its Hub repository the same way.

A path that exists locally always wins over a name. A spec that matches nothing is returned
unchanged, so the caller's own "does not exist" error (with ``NAME_HINT``) names it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mirai.errors import CheckpointError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
HF_SCHEME = "hf://"
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".json", ".yaml", ".npz")

NAME_HINT = ("give a local path, a committed asset name (e.g. fashion/vq8), hf://OWNER/REPO[@REVISION][/FILE] "
             "or a released name (e.g. llamagen:c2i_B_256; see docs/pretrained.md)")


@dataclass(frozen=True)
class ReleasedFile:
    """One released checkpoint: where it is on the Hub and what the file itself does not say.

    ``grid_size`` is the token grid the GPT was trained on (``image_size`` / 16 with LlamaGen's
    16x tokenizer); ``regions_per_side`` is PAR's M (1 for LlamaGen); VQ files have ``model`` None
    and ``grid_size`` 0 (a tokenizer works at any image size).
    """

    repo_id: str
    filename: str
    kind: str  # "gpt" or "vq"
    model: str | None = None
    image_size: int = 0
    grid_size: int = 0
    regions_per_side: int = 1

    def describe(self) -> str:
        """One line for the console: what the table says about this file."""
        if self.kind == "vq":
            return f"{self.filename}: VQ tokenizer from {self.repo_id}"
        par = f", PAR with {self.regions_per_side}x{self.regions_per_side} regions" if self.regions_per_side > 1 else ""
        return (f"{self.filename}: LlamaGen's {self.model}, {self.image_size} px, {self.grid_size}x{self.grid_size} tokens{par} "
                f"(from Mirai's table of released files; --grid-size overrides)")


def _llamagen(filename: str, model: str | None = None, image_size: int = 0) -> ReleasedFile:
    kind = "vq" if model is None else "gpt"
    return ReleasedFile("FoundationVision/LlamaGen", filename, kind, model, image_size, image_size // 16)


def _par(filename: str, model: str, regions_per_side: int) -> ReleasedFile:
    return ReleasedFile("Epiphqny/PAR", filename, "gpt", model, 384, 24, regions_per_side)


# Class-conditional ImageNet files, as listed in the READMEs of github.com/FoundationVision/LlamaGen
# ("Class-conditional image generation on ImageNet": huggingface.co/FoundationVision/LlamaGen) and
# github.com/YuqingWang1029/PAR ("AR models": huggingface.co/Epiphqny/PAR; PAR-3B-16x is sampled with
# --spe-token-num 15, i.e. M = 4; the 4x files with 3, M = 2). All PAR models are 384 px (24x24).
RELEASED: dict[str, ReleasedFile] = {
    "llamagen:vq_ds16_c2i": _llamagen("vq_ds16_c2i.pt"),
    "llamagen:vq_ds8_c2i": _llamagen("vq_ds8_c2i.pt"),
    "llamagen:c2i_B_256": _llamagen("c2i_B_256.pt", "GPT-B", 256),
    "llamagen:c2i_B_384": _llamagen("c2i_B_384.pt", "GPT-B", 384),
    "llamagen:c2i_L_256": _llamagen("c2i_L_256.pt", "GPT-L", 256),
    "llamagen:c2i_L_384": _llamagen("c2i_L_384.pt", "GPT-L", 384),
    "llamagen:c2i_XL_384": _llamagen("c2i_XL_384.pt", "GPT-XL", 384),
    "llamagen:c2i_XXL_384": _llamagen("c2i_XXL_384.pt", "GPT-XXL", 384),
    "llamagen:c2i_3B_384": _llamagen("c2i_3B_384.pt", "GPT-3B", 384),
    "par:XL-4x": _par("PAR-XL-4x.pt", "GPT-XL", 2),
    "par:XXL-4x": _par("PAR-XXL-4x.pt", "GPT-XXL", 2),
    "par:3B-4x": _par("PAR-3B-4x.pt", "GPT-3B", 2),
    "par:3B-16x": _par("PAR-3B-16x.pt", "GPT-3B", 4),
}
RELEASED_PREFIXES = ("llamagen:", "par:")
_HUB_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")


def asset_names() -> list[str]:
    """The committed asset folders (``fashion/vq8``, ...): those under ``mirai/assets`` with a config.json."""
    return sorted(str(p.parent.relative_to(ASSETS)) for p in ASSETS.rglob("config.json"))


def released_file(spec: str | Path) -> ReleasedFile | None:
    """The table entry for a short name (``llamagen:c2i_L_384``) or for a file named as a released
    one (a local ``c2i_L_384.pt``, an ``hf://`` address); None for anything else."""
    text = str(spec)
    if text in RELEASED:
        return RELEASED[text]
    name = PurePosixPath(text).name
    return next((entry for entry in RELEASED.values() if entry.filename == name), None)


def _hub_error(spec: str, err: Exception) -> CheckpointError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    where = ("HF_HUB_OFFLINE is set, so only files already in the Hugging Face cache are found: download it "
             "once with network access (or unset HF_HUB_OFFLINE)" if offline
             else "check the repository, revision and file name, your connection, and HF_TOKEN for private or "
                  "gated repositories")
    detail = " ".join(str(err).split())[:300]
    return CheckpointError(f"cannot get {spec} from the Hugging Face Hub ({type(err).__name__}: {detail}); {where}")


def parse_hf(spec: str) -> tuple[str, str | None, str]:
    """``hf://OWNER/REPO[@REVISION][/PATH]`` -> (repo id, revision or None, path inside the repo or "")."""
    usage = "write hf://OWNER/REPO[@REVISION][/FILE], e.g. hf://FoundationVision/LlamaGen/c2i_B_256.pt"
    parts = spec[len(HF_SCHEME):].strip("/").split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise CheckpointError(f"{spec!r} is not an hf:// address: {usage}")
    name, at, revision = parts[1].partition("@")
    if at and not revision:
        raise CheckpointError(f"{spec!r} has an empty revision after '@': give a branch, tag or commit, or leave "
                              f"out the '@'; {usage}")
    for word in (parts[0], name):  # the Hub's own rule for OWNER and REPO, checked before any look-up
        if not _HUB_NAME.fullmatch(word) or ".." in word or "--" in word:
            raise CheckpointError(f"{spec!r}: {word!r} is not a valid Hub owner or repository name (letters, digits, "
                                  f"'-', '_' and '.', not starting or ending with '-' or '.'); {usage}")
    return f"{parts[0]}/{name}", revision or None, "/".join(parts[2:])


def hub_download(repo_id: str, path: str = "", revision: str | None = None, spec: str = "") -> Path:
    """A file (``path`` with a known suffix) or folder (the repository, or its sub-folder ``path``)
    of a Hub model repository, from the Hugging Face cache or downloaded into it."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,  # the others (HTTP, offline, not cached) are OSErrors
    )

    spec = spec or f"{HF_SCHEME}{repo_id}/{path}"
    try:
        if PurePosixPath(path).suffix in FILE_SUFFIXES:
            return Path(hf_hub_download(repo_id, path, revision=revision, library_name="mirai"))
        patterns = [f"{path}/*"] if path else None
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, library_name="mirai"))
    except (EntryNotFoundError, OSError, ValueError) as err:
        raise _hub_error(spec, err) from None
    folder = folder / path if path else folder
    if not folder.is_dir():
        raise CheckpointError(f"{spec}: the repository has no folder {path!r}; give a folder that holds config.json, "
                              "or a file path ending in .pt/.safetensors")
    return folder


def resolve(spec: str | Path, what: str = "checkpoint") -> Path:
    """The local file or folder that ``spec`` names (see the module docstring). Downloads run here.

    Raises ``CheckpointError`` for an unknown ``llamagen:``/``par:`` name (listing the known ones),
    a malformed ``hf://`` address, or a Hub file that cannot be had (offline and not cached, missing).
    """
    text = str(spec)
    if text.startswith(HF_SCHEME):
        repo_id, revision, path = parse_hf(text)
        return hub_download(repo_id, path, revision, text)
    if text.startswith(RELEASED_PREFIXES):
        entry = RELEASED.get(text)
        if entry is None:
            raise CheckpointError(f"unknown released {what} {text!r}; known names: {', '.join(RELEASED)}")
        return hub_download(entry.repo_id, entry.filename, None, text)
    path = Path(spec)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("assets",) else path.parts
    asset = ASSETS.joinpath(*parts) if parts else None
    if asset is not None and (asset / "config.json").is_file():
        return asset
    return path


def missing_message(spec: str | Path, what: str = "checkpoint") -> str:
    """The error text for a ``spec`` that resolved to nothing: what was given and what may be given."""
    return f"{what} {spec} does not exist; {NAME_HINT}; committed assets: {', '.join(asset_names())}"


def refuse_a_file_of_a_checkpoint(path: Path) -> None:
    """``CheckpointError`` naming the folder when ``path`` is a file of a Mirai checkpoint (its weights or
    config.json, a common slip for the folder). Read as a LlamaGen/PAR file instead, its weights would be
    taken for a foreign model's and the user asked for the grid that config.json records."""
    try:
        beside = json.loads((path.parent / "config.json").read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return  # no Mirai config beside it: a file of its own, such as a LlamaGen .pt
    if isinstance(beside, dict) and beside.get("format") == "mirai":
        raise CheckpointError(f"{path} is a file of the Mirai checkpoint {path.parent}: give that folder instead "
                              "(its config.json says how to rebuild the model, which the file alone does not)")
