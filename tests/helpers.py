"""Tiny training stores and configs shared by the training tests (CPU, offline).

``build_stores`` makes everything from a fixed seed: 3 classes of 10 px images, a random
64-code VQ, 4x4-token stores with 10 views, and a tiny random DINOv2-shaped encoder. The
pinned-behaviour test depends on these bytes, so change them only with its reference.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Callable

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from mirai.config import apply_overrides, from_dict
from mirai.data.codes import extract
from mirai.data.folders import ImageFolder
from mirai.data.views import ViewSpec
from mirai.models import build_vq
from mirai.training.config import TrainConfig

TINY_VIT = {"depth": 1, "embed_dim": 32, "num_heads": 2}
MIRAI_E = {"foresight.source": "ema", "foresight.warmup": 2, "foresight.warmup_unit": "step"}


def build_stores(root: Path) -> Path:
    """Train and validation stores under ``root``: 3 classes of 8 px crops, 4x4 tokens, 10 views."""
    from mirai import checkpoint

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 8), ("val", 2)):
        for c, name in enumerate(["a", "b", "c"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                # Class-dependent brightness gives the model something to learn.
                pixels = np.clip(rng.normal(60 + 70 * c, 30, (10, 10, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    torch.manual_seed(0)
    vq = build_vq("VQ-Tiny", codebook_size=64, codebook_dim=4).eval()
    vq_dir = checkpoint.save(root / "vq", vq)
    spec = ViewSpec("ten_crop", 8)
    for split in ("train", "val"):
        extract(vq, ImageFolder.scan(root / split), spec, root / f"codes_{split}", tokenizer_path=vq_dir,
                progress=False)
    encoder = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56, num_classes=0,
                                **TINY_VIT)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(root / "vit.safetensors"))
    return root


def make_cfg(stores: Path, run_dir: Path, **overrides) -> TrainConfig:
    base = {
        "run_dir": str(run_dir), "seed": 3, "steps": 6, "device": "cpu", "precision": "fp32",
        "log_every": 1, "eval_every": 0, "save_every": 0, "keep_last": 2,
        "model": {"name": "GPT-Nano"},
        "data": {"codes": str(stores / "codes_train"), "val_codes": str(stores / "codes_val"), "val_images": 0},
        "optim": {"lr": 3e-3, "batch_size": 8},
        "ema": {"decay": 0.9, "warmup": True},
        "sampling": {"cfg_scale": 1.5},
    }
    return from_dict(TrainConfig, apply_overrides(base, [f"{k}={v}" for k, v in overrides.items()]))


def encoder_overrides(stores: Path) -> dict:
    spec = {"name": "dinov2_vits14", "weights": str(stores / "vit.safetensors"), "model_args": TINY_VIT}
    return {"foresight.source": "encoder", "foresight.encoder": json.dumps(spec), "foresight.warmup": 0}


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def files_under(root: Path) -> dict[str, float]:
    """Every file below ``root`` with its modification time."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


def assert_cli_refuses(argv: list[str], root: Path, match: str | None = None,
                       output: Path | None = None) -> str:
    """Run ``mirai ARGV`` in this process and assert a clean refusal: a non-zero exit status, no
    traceback (any exception other than argparse's exit escapes this call and fails the test),
    a last stderr line that reads as an error (matching ``match`` if given), and no file created
    or changed under ``root`` except below ``output`` (the command's own output). Returns stderr."""
    import contextlib
    import io
    import re

    from mirai.cli.main import main

    before = files_under(root)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exit_:  # argparse: usage line + "error: ..."
            status = exit_.code
    text = err.getvalue()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert status not in (0, None), f"mirai {' '.join(map(str, argv))} exited 0; stderr: {text[-500:]}"
    assert "Traceback" not in text, text
    assert lines and "error" in lines[-1], f"no error line for {argv}: {text[-500:]}"
    if match is not None:
        assert re.search(match, lines[-1]), f"{lines[-1]!r} does not match {match!r}"
    after = files_under(root)
    allowed = str(Path(output).relative_to(root)) if output is not None else None
    changed = sorted(k for k in after if after[k] != before.get(k)
                     and not (allowed and (k == allowed or k.startswith(allowed + "/"))))
    assert not changed, f"mirai {argv} wrote outside its output: {changed}"
    return text


def sigterm_after_step(monkeypatch, stop_at: Callable, signum: int = signal.SIGTERM) -> None:
    """Patch ``Trainer.train_step`` to send this process SIGTERM (or ``signum``), as a job scheduler stops a job,
    after the step at which ``stop_at(trainer)`` holds; ``monkeypatch.undo()`` restores it."""
    from mirai.training.trainer import Trainer

    step = Trainer.train_step

    def step_then_signal(self):
        logs = step(self)
        if stop_at(self):
            os.kill(os.getpid(), signum)
        return logs

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
