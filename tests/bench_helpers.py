"""Tiny stores and bench configs for the convergence bench's tests (the ``bench_stores`` fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from mirai import checkpoint
from mirai.data.codes import extract
from mirai.data.folders import ImageFolder
from mirai.data.views import ViewSpec
from mirai.foresight.encoders import ASSETS
from mirai.models import VQModel
from mirai.training.state import checkpoint_step, has_step_checkpoints, latest_checkpoint


def build_bench_stores(root: Path) -> Path:
    """Train/test stores of 32 px images (3 classes) tokenized by the committed 8x8 VQ, and a base config."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("test", 4)):
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(50 + 80 * c, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    vq_dir = ASSETS / "vq8"
    vq = checkpoint.load(vq_dir, VQModel)
    for split in ("train", "test"):
        extract(vq, ImageFolder.scan(root / split), ViewSpec("flip", 32), root / f"codes_{split}",
                tokenizer_path=vq_dir, progress=False)
    base = {
        "device": "cpu", "precision": "fp32", "log_every": 1, "steps": 1000, "run_dir": "ignored",
        "model": {"name": "GPT-Nano"},
        "data": {"codes": str(root / "codes_train"), "val_codes": str(root / "codes_test"), "val_images": 0},
        "optim": {"lr": 3e-3, "batch_size": 4},
        "ema": {"decay": 0.9, "warmup": True},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    return root


def bench_dict(stores: Path, out: Path, **changes) -> dict:
    """A bench of two tiny variants (baseline, Mirai-I) on ``build_bench_stores``' stores, with ``changes``."""
    bench = {
        "out_dir": str(out), "train_config": str(stores / "base.yaml"),
        "variants": {
            "baseline": [],
            "mirai_i": ["foresight.source=encoder", "foresight.encoder=fashion8",
                        "foresight.lambdas=[{kind: const, values: [0.5]}]"],
        },
        "seeds": [0], "steps": 4, "eval_at": [2], "num_samples": 12, "sample_batch_size": 6,
        "sampling": {"cfg_scale": 1.5}, "reference_codes": str(stores / "codes_test"), "device": "cpu",
        "eval_batch_size": 64,
    }
    bench.update(changes)
    return bench


class Counter:
    """Wraps a function and counts its calls (and remembers their keyword arguments)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.fn(*args, **kwargs)


class TrainingCounter(Counter):
    """Wraps ``train`` and records the calls that trained, each as ``{"resume": whether it continued a
    checkpoint}``: ``train(resume="auto")`` returns at once for a run that already reached its last step."""

    def __call__(self, cfg, **kwargs):
        before = checkpoint_step(latest_checkpoint(cfg.run_dir)) if has_step_checkpoints(cfg.run_dir) else 0
        result = self.fn(cfg, **kwargs)
        if result.step > before:
            self.calls.append({"resume": before > 0})
        return result
