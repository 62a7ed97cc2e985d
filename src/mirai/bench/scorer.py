"""Scoring a bench's checkpoints: the Fashion-MNIST evaluator, the two references, the floors, sample grids."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from mirai import checkpoint
from mirai.bench.config import BenchConfig
from mirai.data.options import resolve_device
from mirai.evaluation.npz import NpzArchive
from mirai.data.codes import CodeStore
from mirai.data.transforms import to_uint8_hwc
from mirai.errors import DataError
from mirai.evaluation.reference import FeatureSet, read_reference, write_reference
from mirai.evaluation.suite import extract_features, load_network, noise_floor, reference_features, score
from mirai.models import GPT
from mirai.sampling.grid import write_sample_grid
from mirai.sampling.pipeline import class_labels, sample_batch, sample_to_npz

METRICS = ("fid", "precision", "recall", "inception_score", "class_accuracy")
EVALUATOR_RESOLUTION = (32, 32)


class Scorer:
    """The Fashion-MNIST evaluator, the tokenizer and the two references, built once per bench.

    Raises ``DataError`` when the reference store does not hold 32×32 views or its tokenizer
    is not available with the weights that made the codes."""

    def __init__(self, bench: BenchConfig, out_dir: Path):
        self.bench, self.out_dir = bench, out_dir
        self.device = torch.device(resolve_device(bench.device))
        self.store = CodeStore.open(bench.reference_codes)
        size = self.store.view_spec.image_size
        if (size, size) != EVALUATOR_RESOLUTION:
            raise DataError(f"the Fashion-MNIST evaluator scores 32×32 images; {bench.reference_codes} holds "
                            f"{size}×{size} views")
        self.vq = self.store.load_tokenizer(strict=True).to(self.device)
        self.network, self.info = load_network("fashion", fashion_evaluator=bench.evaluator, device=str(self.device))
        self.num_classes = self.network.num_classes

    def check_store(self, path: str) -> None:
        """A run's training store must come from the tokenizer that decodes its samples (else ``DataError``)."""
        theirs = CodeStore.open(path).manifest["tokenizer"]["sha256"]
        if theirs != self.store.manifest["tokenizer"]["sha256"]:
            raise DataError(f"{path} and the reference store {self.bench.reference_codes} were extracted with "
                            "different tokenizers: extract both with the same one")

    def _reference(self, name: str, make_images: Callable[[], np.ndarray]) -> FeatureSet:
        """The evaluator's features of one reference, computed once and kept as an ADM-layout batch."""
        path = self.out_dir / "reference" / f"{name}.npz"
        if not path.is_file():
            images = make_images()
            features = FeatureSet.from_features(extract_features(self.network, images, self.bench.eval_batch_size,
                                                                 desc=f"reference {name}"))
            write_reference(path, {"fashion": features}, {"fashion": self.info}, images=images,
                            labels=self.store.labels)
        return reference_features(read_reference(path), self.network, self.info, self.bench.eval_batch_size)

    def _real_images(self) -> np.ndarray:
        return np.stack([self.store.source_image(i, 0) for i in tqdm(range(len(self.store)), desc="real images",
                                                                                   disable=None)])

    @torch.no_grad()
    def _reconstructions(self) -> np.ndarray:
        codes, out = self.store.codes, []
        for start in tqdm(range(0, len(codes), self.bench.eval_batch_size), desc="reconstructions", disable=None):
            chunk = torch.from_numpy(np.asarray(codes[start:start + self.bench.eval_batch_size, 0], dtype=np.int64))
            out.append(to_uint8_hwc(self.vq.decode_indices(chunk.to(self.device))))
        return np.concatenate(out)

    @cached_property
    def references(self) -> dict[str, FeatureSet]:
        """``real``: the reference store's images; ``recon``: the tokenizer's reconstructions of them."""
        return {"real": self._reference("real", self._real_images),
                "recon": self._reference("recon", self._reconstructions)}

    def floors(self) -> dict:
        """The tokenizer floor (reconstructions scored like samples, at the samples' count) and the
        evaluator's noise floor (as many real images as samples, against the other real images)."""
        refs, labels = self.references, self.store.labels
        count = min(self.bench.num_samples, len(labels))
        pick = np.sort(np.random.default_rng(0).permutation(len(labels))[:count])
        recon = {"pool": refs["recon"].pool[pick], "logits": refs["recon"].logits[pick]}
        return {
            "reference_codes": self.bench.reference_codes, "num_images": int(len(labels)),
            "evaluator": self.info,
            "tokenizer_floor": dict(score(recon, refs["real"], labels[pick], self.num_classes, str(self.device)),
                                    num_images=count),
            "noise_floor": noise_floor(refs["real"], labels, self.num_classes, str(self.device),
                                       num_images=self.bench.num_samples),
        }

    def score_checkpoint(self, path: Path, samples: Path) -> dict:
        """Sample ``num_samples`` images from the checkpoint's EMA weights into ``samples`` (resumable) and
        score them against both references: ``METRICS`` against the real images, ``fid_recon``,
        ``precision_recon`` and ``recall_recon`` against the reconstructions."""
        b = self.bench
        if not samples.is_file():  # else a previous attempt sampled them and stopped before scoring
            gpt = checkpoint.load(path, GPT, use_ema=True).to(self.device)
            labels = class_labels(gpt.args.num_classes, b.num_samples, b.class_sampling, seed=b.sample_seed)
            sample_to_npz(gpt, self.vq, labels, samples, b.sampling, seed=b.sample_seed,
                          batch_size=b.sample_batch_size, compile=b.compile_sampling)
        with NpzArchive(samples, "sample batch") as data:
            images, labels = data.array("arr_0"), data.array("labels")
        features = extract_features(self.network, images, b.eval_batch_size, desc="sample features")
        real = score(features, self.references["real"], labels, self.num_classes, str(self.device))
        recon = score({"pool": features["pool"]}, self.references["recon"], device=str(self.device))
        if not b.keep_samples:
            samples.unlink()
        return {**{k: real[k] for k in METRICS},
                **{f"{k}_recon": recon[k] for k in ("fid", "precision", "recall")}}

    def grid(self, path: Path, out: Path, what: str, step: int) -> list[Path]:
        """Ten samples per class (at most ten classes), one row each named by the reference store's class
        names, from a checkpoint's EMA weights, titled ``what`` at ``step`` with the bench's sampling
        settings; written to ``out`` and a PDF beside it."""
        gpt = checkpoint.load(path, GPT, use_ema=True).to(self.device)
        labels = torch.arange(min(10, gpt.args.num_classes), device=self.device).repeat_interleave(10)
        images, _ = sample_batch(gpt, self.vq, labels, self.bench.sampling, seed=self.bench.sample_seed)
        return write_sample_grid(images, labels.cpu().numpy(), out, what, step, self.bench.sampling,
                                 self.store.class_names)
