"""What a sample set was made from, written beside it, so that no run mixes in samples made differently.

A record names both checkpoints (path, for people, and a SHA-256 of the loaded weights, which is
what is compared), the sampling settings, the seed, the batch size (it fixes each batch's seed)
and a digest of the labels. ``sample_to_npz`` keeps one in its parts folder while it works and
one beside the finished ``.npz`` (``samples.json`` for ``samples.npz``); a run whose record
differs from the saved one is refused, never merged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirai.config import flatten, write_text_atomic
from mirai.errors import ConfigError, DataError

RECORD_FORMAT, RECORD_VERSION = "mirai-samples", 1
PATH_KEY = "checkpoint"  # recorded for people; a moved checkpoint with the same weights still matches


def fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(data.tobytes())
    return digest.hexdigest()


def compile_changes_draws(precision: str) -> bool:
    """Whether decoding through ``torch.compile`` draws other tokens than eager decoding at ``precision``:
    compiled bf16/fp16 kernels round differently, so their draws differ; in fp32 both draw the same tokens
    (tests/test_compile.py). Sample records and bench stores keep the two apart only where this is True."""
    return precision != "fp32"


# Beside a finished set only: the digest of the tokens its file holds, which a reuse checks the file against (another
# set of the same size has the same labels). Not compared between records: a request does not know its tokens.
TOKENS_KEY = "tokens_sha256"


def int_digest(values: np.ndarray) -> str:
    """sha256 of integer values as int64: the record's ``labels_sha256`` (class labels) and ``TOKENS_KEY``."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.int64).tobytes()).hexdigest()


def sample_record(
    gpt: torch.nn.Module, vq: torch.nn.Module, labels: np.ndarray, settings: Any, seed: int, batch_size: int,
    sources: dict[str, str] | None = None, compile: bool = False,
) -> dict:
    """The record of a sample set (plain JSON data); ``sources`` maps "gpt"/"vq" to checkpoint paths.
    ``compile``: decoded through ``torch.compile``, recorded under bf16/fp16 only, where it changes the draws."""
    sources = sources or {}
    record = {
        "format": RECORD_FORMAT, "version": RECORD_VERSION,
        "gpt": {PATH_KEY: sources.get("gpt"), "sha256": fingerprint(gpt)},
        "vq": {PATH_KEY: sources.get("vq"), "sha256": fingerprint(vq)},
        "settings": dataclasses.asdict(settings), "seed": seed, "batch_size": batch_size,
        "num_samples": int(len(labels)), "labels_sha256": int_digest(labels),
    }
    if compile and compile_changes_draws(settings.precision):
        # A set is never resumed or reused across the switch; fp32 records leave the key out and so stay
        # equal to records written before it existed.
        record["compiled_decoding"] = True
    return json.loads(json.dumps(record))  # tuples -> lists, as they read back


def draws_as(settings: dict, vocab_size: int | None = None) -> dict:
    """Sampling settings (``SampleSettings`` as a dict) with each value that draws exactly like another
    written one way, so that records compare by what they draw: ``top_p`` 1 (no nucleus filtering) as
    None, ``top_k`` equal to the model's ``vocab_size`` (when given) as None, and a ``guidance_interval``
    as None where it changes nothing: without guidance (``cfg_scale`` 1) or when it spans every pass ([0, 1])."""
    settings = dict(settings)
    if settings.get("top_p") == 1:
        settings["top_p"] = None
    if vocab_size is not None and settings.get("top_k") == vocab_size:
        settings["top_k"] = None
    interval = settings.get("guidance_interval")
    if interval is not None and (settings.get("cfg_scale") == 1 or list(interval) == [0, 1]):
        settings["guidance_interval"] = None
    return settings


def _leaves(data: dict, as_drawn: bool, vocab_size: int | None = None) -> dict[str, Any]:
    """Dotted leaves of a record, without the checkpoint paths (recorded for people only); with
    ``as_drawn``, its settings as they draw (``draws_as``)."""
    if as_drawn and isinstance(data.get("settings"), dict):
        data = {**data, "settings": draws_as(data["settings"], vocab_size)}
    return {k: v for k, v in flatten(data).items() if k.rpartition(".")[2] != PATH_KEY and k != TOKENS_KEY}


# Values compared by their SHA-256: a difference names what differs, not two digests.
DIGESTS = {"gpt.sha256": "the GPT's weights", "vq.sha256": "the tokenizer's weights",
           "labels_sha256": "the class labels"}


def differences(saved: dict, current: dict, vocab_size: int | None = None) -> list[str]:
    """``key: saved -> current`` for every value that draws differently (checkpoint paths are not compared;
    ``vocab_size``: the GPT's, which both records name by its weights), each shown as written (a saved
    ``top_p: 1.0`` as 1.0, though it compares as None); a digest as "the class labels differ"."""
    old, new = _leaves(saved, True, vocab_size), _leaves(current, True, vocab_size)
    shown_old, shown_new = _leaves(saved, False), _leaves(current, False)
    return [f"{DIGESTS[k]} differ" if k in DIGESTS else f"{k}: {shown_old.get(k)!r} -> {shown_new.get(k)!r}"
            for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def read_record(path: Path) -> dict | None:
    """The record at ``path``, or None when there is none; ``DataError`` when it is unreadable."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"sample record {path} is corrupt ({err}); delete it and the samples beside it") from None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise DataError(f"{path} is not a Mirai sample record; move it away, or use another output path")
    return record


def check_same(saved: dict | None, current: dict, what: str, fix: str, vocab_size: int | None = None) -> None:
    """``ConfigError`` saying how ``what`` was made differently (or without a record) and ``fix``."""
    if saved is None:
        raise ConfigError(f"{what} has no record of how it was sampled, so it cannot be trusted to match: {fix}")
    diff = differences(saved, current, vocab_size)
    if diff:
        raise ConfigError(f"{what} was sampled differently ({'; '.join(diff[:6])}): {fix}")


def write_record(path: Path, record: dict) -> None:
    """Write ``record`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
