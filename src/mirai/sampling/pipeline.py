"""From class labels to images: GPT sampling + VQ decoding, in batches, resumable, across ranks.

Every batch has its own seed derived from (seed, batch index), so a sample set is the same
whether it is made in one go, resumed after an interruption, or split across GPUs. What a set
was made from is recorded beside it (``mirai.sampling.record``): a resumed or repeated run
with another checkpoint, settings, labels, seed or batch size is refused, never mixed in.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mirai.convert import load_module
from mirai.data.codes import state_hash
from mirai.data.options import IMAGE_SIZE_EVAL_MAX
from mirai.data.transforms import to_uint8_hwc
from mirai.errors import ConfigError, DataError
from mirai.hub.resolve import resolve
from mirai.locks import exclusive_dir
from mirai.models.gpt import GPT, GPTArgs
from mirai.models.registry import GPT_CONFIGS
from mirai.sampling.checks import as_labels, check_finite_weights, check_guidance, check_int, check_sampling, check_seed
from mirai.sampling.generate import generate
from mirai.sampling.grid import trained_tokenizer
from mirai.sampling.record import TOKENS_KEY, check_same, int_digest, read_record, sample_record, write_record

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The largest sample set: 20x the 50 000 of ADM's evaluation protocol. A set is merged in memory (a million
# 256-px images are about 200 GB), so a typo of 1e12 is refused at once rather than as a failed allocation.
MAX_SAMPLES = 1_000_000


@dataclass
class SampleSettings:
    """How tokens are drawn. Defaults: LlamaGen-B's evaluation settings (docs/method.md §7)."""

    cfg_scale: float = 2.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    guidance_interval: tuple[float, float] | None = None
    precision: str = "fp32"
    # Side of the images written, resized bicubically from the decoder's output (None: as decoded), as
    # LlamaGen's sample_c2i --image-size-eval: 384-px models are scored at 256 px in its protocol.
    image_size_eval: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, vocab_size: int | None = None) -> None:
        """``ConfigError`` for a value out of range (``mirai.sampling.checks.check_sampling``);
        with ``vocab_size``, also a top-k above the model's vocabulary."""
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: choose one of {sorted(PRECISIONS)}")
        if self.image_size_eval is not None:
            check_int("image_size_eval", self.image_size_eval, 1, IMAGE_SIZE_EVAL_MAX)
        check_sampling(self.cfg_scale, self.temperature, self.top_k, self.top_p, self.guidance_interval, vocab_size)

    def check_for(self, args: GPTArgs) -> None:
        """``validate`` against the vocabulary of a GPT with ``args``, and its guidance against what that GPT
        can do (``mirai.sampling.checks.check_guidance``): every check ``generate`` would make. ``ConfigError``."""
        self.validate(vocab_size=args.vocab_size)
        check_guidance(args, self.cfg_scale, self.guidance_interval)


def load_for_sampling(path: str | Path, kind: str, name: str | None = None, **kwargs) -> torch.nn.Module:
    """``mirai.convert.load_module(path, kind, name=name, **kwargs)``, refused (``CheckpointError``
    naming ``path``) when any of its weights is NaN or inf. ``name``: a GPT config name for a LlamaGen file."""
    if name is not None and name not in GPT_CONFIGS:
        raise ConfigError(f"unknown GPT config {name!r} (--model); choose one of {sorted(GPT_CONFIGS)}")
    module = load_module(path, kind, name=name, **kwargs)
    check_finite_weights(module, f"{kind.upper()} checkpoint {path}")
    return module


def check_pair(gpt: GPT, vq: torch.nn.Module) -> None:
    """The GPT's vocabulary and grid must match the tokenizer that decodes its tokens."""
    codebook = vq.quantize.embedding.weight.shape[0]
    if gpt.args.vocab_size != codebook:
        raise ConfigError(
            f"GPT vocabulary ({gpt.args.vocab_size}) differs from the tokenizer's codebook ({codebook}): "
            "use the tokenizer the GPT was trained with"
        )


def check_trained_tokenizer(gpt_path: str | Path, tokenizer: str | Path, vq: torch.nn.Module) -> None:
    """``ConfigError`` when ``vq`` (loaded from ``tokenizer``) is not the tokenizer whose codes the GPT at
    ``gpt_path`` was trained on, as the checkpoint records it (``trained_tokenizer``: weights' hash): the same
    codebook size with other weights decodes every token into the wrong patch. Nothing is checked for a
    checkpoint without that record (a LlamaGen file, one saved before it was recorded)."""
    recorded = trained_tokenizer(resolve(gpt_path))
    if not recorded:
        return
    same = state_hash(vq) == recorded["sha256"]
    if not same and (getattr(vq, "loaded_weights", None) == "EMA") != bool(recorded.get("ema")):
        # The store was extracted from the tokenizer's other weights (raw or EMA): compare those.
        same = state_hash(load_module(tokenizer, "vq", prefer_ema=bool(recorded.get("ema")))) == recorded["sha256"]
    if not same:
        raise ConfigError(f"tokenizer {tokenizer} is not the one {gpt_path} was trained with (weights differ): its "
                          f"training codes were extracted with {recorded.get('path')}, and another tokenizer decodes "
                          f"its tokens into the wrong patches; pass --tokenizer {recorded.get('path')}")


@torch.no_grad()
def sample_batch(
    gpt: GPT, vq: torch.nn.Module, labels: torch.Tensor, settings: SampleSettings, seed: int, compile: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHWC) and tokens (N, g*g) for one batch of labels; ``compile``: decode through
    ``torch.compile`` (``generate``)."""
    device = next(gpt.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    tokens = generate(
        gpt, labels.to(device), cfg_scale=settings.cfg_scale, temperature=settings.temperature,
        top_k=settings.top_k, top_p=settings.top_p, generator=generator,
        guidance_interval=settings.guidance_interval, dtype=PRECISIONS[settings.precision], compile=compile,
    )
    g = gpt.args.grid_size
    images = vq.decode_indices(tokens.view(-1, g, g))
    if settings.image_size_eval is not None and images.shape[-1] != settings.image_size_eval:
        size = (settings.image_size_eval, settings.image_size_eval)
        images = torch.nn.functional.interpolate(images.float(), size=size, mode="bicubic")  # on [-1, 1], as LlamaGen
    return to_uint8_hwc(images), tokens.cpu().numpy()


def check_request(
    gpt: GPT, vq: torch.nn.Module, labels: Sequence[int] | np.ndarray, settings: SampleSettings, seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """Everything ``sample_to_npz`` will be asked, checked against the models before anything is
    written; returns the labels as an int64 array. Raises ``ConfigError``."""
    check_pair(gpt, vq)
    settings.check_for(gpt.args)
    check_seed(seed)
    check_int("batch_size", batch_size, 1)
    labels = as_labels(labels, gpt.args.num_classes).numpy()
    check_int("num_samples", len(labels), 1, MAX_SAMPLES)
    return labels


def class_labels(
    num_classes: int, num_samples: int, mode: str = "balanced", seed: int = 0
) -> np.ndarray:
    """Labels for an evaluation set: ``balanced`` (each class equally often, shuffled) or
    ``uniform`` (drawn independently, as LlamaGen's sample_ddp does)."""
    check_int("num_classes", num_classes, 1)
    check_int("num_samples", num_samples, 1, MAX_SAMPLES)
    rng = np.random.default_rng(check_seed(seed))
    if mode == "balanced":
        labels = np.arange(num_samples) % num_classes
        rng.shuffle(labels)
        return labels
    if mode == "uniform":
        return rng.integers(0, num_classes, size=num_samples)
    raise ConfigError(f"class sampling {mode!r}: choose 'balanced' or 'uniform'")


def _save_part(path: Path, **arrays: np.ndarray) -> None:
    """Write ``path`` through a temporary name: a partial write (a full disk) never counts as a finished batch."""
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        np.savez(tmp, **arrays)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:  # zipfile's errors name no file: name the one written
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    os.replace(tmp, path)


PART_NAME = re.compile(r"^\d{6}\.npz$")
KEYS = ("arr_0", "labels", "tokens")


def parts_folder(out: Path) -> Path:
    """Where ``sample_to_npz`` keeps the finished batches of ``out`` until it merges them."""
    return out.with_name(out.name + ".parts")


def finished_parts(parts: Path) -> list[Path]:
    """The finished batch files in a parts folder (none when it does not exist)."""
    return sorted(p for p in parts.iterdir() if PART_NAME.match(p.name)) if parts.is_dir() else []


def _load_part(path: Path, expected: np.ndarray) -> dict[str, np.ndarray]:
    """One finished batch, checked to hold one image and token row per expected label."""
    try:
        with np.load(path) as data:
            part = {key: data[key] for key in KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"sample part {path} is unreadable ({err}); delete it and run again to resample it") from None
    if not (np.array_equal(part["labels"], expected) and len(part["arr_0"]) == len(part["tokens"]) == len(expected)):
        raise DataError(f"sample part {path} does not hold its batch's {len(expected)} samples; delete it and run "
                        "again to resample it")
    return part


def _claim_parts(parts: Path, record: dict, locked: bool, vocab_size: int) -> None:
    """Make ``parts`` this run's: refuse parts made differently or without a record, else record
    ``record`` there (the parts are listed before the record is read, so ranks that write
    the record before any part never mistake each other's parts for strays). A folder this process
    holds ``locked`` with a record but no part yet holds nothing to keep: a run stopped before its first
    batch (by a bad value, say) does not block the corrected one. Unlocked (several ranks), such a record
    may be another rank's, so it must match. ``vocab_size``: the GPT's (a top-k of all of it filters nothing)."""
    existing = finished_parts(parts)
    saved = read_record(parts / "record.json")
    fix = f"use a new --out (output path), or delete {parts} to start over"
    if existing or (saved is not None and not locked):
        check_same(saved, record, f"the unfinished sample set in {parts}", fix, vocab_size)
    else:
        write_record(parts / "record.json", record)


def _finished(out: Path, record: dict, rank: int, vocab_size: int) -> Path | None:
    """A sample file made before: returned untouched (on rank 0) when made the same way, else refused.
    Its record alone does not say so: the file itself must hold the recorded labels (not a file copied or
    written over it since, e.g. a reference batch)."""
    fix = f"use a new --out (output path), or delete {out} to sample again"
    saved = read_record(out.with_suffix(".json"))
    check_same(saved, record, f"the sample set {out}", fix, vocab_size)
    try:
        with np.load(out) as data:
            labels = data["labels"]
            tokens = data["tokens"] if TOKENS_KEY in saved else None  # sets finished before it was recorded: None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"the sample set {out} cannot be read ({err}); {fix}") from None
    if (len(labels) != record["num_samples"] or int_digest(labels) != record["labels_sha256"]
            or (tokens is not None and int_digest(tokens) != saved[TOKENS_KEY])):
        raise DataError(f"the sample set {out} holds {len(labels)} samples that are not the ones its record "
                        f"{out.with_suffix('.json')} lists ({record['num_samples']}, with their labels and tokens): "
                        f"the file was replaced after sampling; {fix}")
    return out if rank == 0 else None


def sample_to_npz(
    gpt: GPT,
    vq: torch.nn.Module,
    labels: Sequence[int] | np.ndarray,
    out: str | Path,
    settings: SampleSettings,
    seed: int = 0,
    batch_size: int = 64,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    sources: dict[str, str] | None = None,
    compile: bool = False,
    on_start: Callable[[int, int], None] | None = None,
) -> Path | None:
    """Sample one image per label into ADM-format ``out`` (``arr_0``, ``labels``, ``tokens``).

    Finished batches are kept in ``out``'s ``.parts`` folder, so an interrupted run resumes
    where it stopped. With several ranks, each takes every ``world_size``-th batch; rank 0
    merges once all parts exist (call after a barrier). Returns the file on rank 0.

    What the set is made from (checkpoint hashes and ``sources`` paths, settings, seed, batch
    size, labels) is recorded in the parts folder and beside ``out`` (``out`` with ``.json``).
    Parts or an ``out`` made from anything else raise ``ConfigError`` and are left as they are;
    an ``out`` made the same way is returned as it is. One process locks the parts folder
    (``BusyError`` when another is sampling it); with several ranks the caller must hold a lock
    (``mirai sample`` locks its output folder).

    ``compile``: decode through ``torch.compile`` (one graph per batch size, compiled on the first
    batch). In fp32 it draws the same tokens faster and is not recorded; in bf16/fp16 its kernels round
    differently, so it is recorded and a set is not resumed or reused across the switch.

    ``on_start(n_batches, n_done)``: called on rank 0 once the parts folder is claimed, before the first batch
    is drawn (``n_done``: batches an earlier run already finished there); not called when ``out`` is reused or
    refused, so a caller's announcement never precedes a refusal.
    """
    out = Path(out)
    labels = check_request(gpt, vq, labels, settings, seed, batch_size)
    check_int("rank", rank, 0, check_int("world_size", world_size, 1) - 1)
    if out.is_dir() or (out.parent.exists() and not out.parent.is_dir()):
        raise ConfigError(f"sample file {out} cannot be written there (a folder, or below a file): choose another path")
    record = sample_record(gpt, vq, labels, settings, seed, batch_size, sources, compile)
    parts = parts_folder(out)
    if out.exists():
        return _finished(out, record, rank, gpt.args.vocab_size)
    parts.mkdir(parents=True, exist_ok=True)
    lock = exclusive_dir(parts, "sample parts folder") if world_size == 1 else contextlib.nullcontext()
    with lock:
        if out.exists():  # another process finished it while this one waited for the lock
            shutil.rmtree(parts, ignore_errors=True)
            return _finished(out, record, rank, gpt.args.vocab_size)
        _claim_parts(parts, record, locked=world_size == 1, vocab_size=gpt.args.vocab_size)
        n_batches = math.ceil(len(labels) / batch_size)
        chunks = [labels[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]
        files = [parts / f"{b:06d}.npz" for b in range(n_batches)]
        done = [f.exists() for f in files]
        mine = [b for b in range(rank, n_batches, world_size) if not done[b]]
        if on_start is not None and rank == 0:
            on_start(n_batches, sum(done))
        device = next(gpt.parameters()).device
        for b in tqdm(mine, desc="sampling", unit="batch", disable=None if progress and rank == 0 else True):
            chunk = torch.from_numpy(chunks[b])
            images, tokens = sample_batch(gpt, vq, chunk.to(device), settings, seed=seed * 1_000_003 + b,
                                          compile=compile)
            _save_part(files[b], arr_0=images, labels=chunk.numpy(), tokens=tokens)
        if rank != 0 or not all(f.exists() for f in files):
            return None  # other ranks are still working; rank 0 merges on a later call
        loaded = [_load_part(f, chunk) for f, chunk in zip(files, chunks)]
        merged = {key: np.concatenate([d[key] for d in loaded]) for key in KEYS}
        if len(merged["arr_0"]) != len(labels) or not np.array_equal(merged["labels"], labels):
            raise DataError(f"the parts in {parts} hold {len(merged['arr_0'])} samples for {len(labels)} labels; "
                            f"delete {parts} to sample again")
        # First: an out without its record is refused.
        write_record(out.with_suffix(".json"), {**record, TOKENS_KEY: int_digest(merged["tokens"])})
        _save_part(out, **merged)
        shutil.rmtree(parts)
    return out
