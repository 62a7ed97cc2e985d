"""What the trainer reads: batches of token grids from a code store, in a reproducible order.

The order of images in epoch e is a permutation seeded by (seed, e), and each image's view in
epoch e is drawn from a generator seeded the same way, so step s always sees the same batch:
that is what makes ``--resume`` exact and lets DDP ranks agree without communicating.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from mirai.data.codes import CodeStore, epoch_views
from mirai.errors import ConfigError
from mirai.training.config import TrainConfig

OPTIONAL_FIELDS = frozenset({"images"})


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class TrainingData:
    """Training batches for one rank, validation batches, and the store's tokenizer."""

    def __init__(self, cfg: TrainConfig, rank: int = 0, world_size: int = 1):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        m = cfg.model
        self.store = CodeStore.open(cfg.data.codes)
        self.store.validate(vocab_size=m.vocab_size, grid_size=m.grid_size, num_classes=m.num_classes)
        self.vocab_size = self.store.vocab_size
        self.grid_size = self.store.grid_size
        self.num_classes = self.store.num_classes
        self.val = None
        if cfg.data.val_codes:
            self.val = CodeStore.open(cfg.data.val_codes)
            self.val.validate(vocab_size=self.vocab_size, grid_size=self.grid_size, num_classes=self.num_classes)
        batch, accum = cfg.optim.batch_size, cfg.optim.grad_accum
        if batch % (world_size * accum):
            raise ConfigError(
                f"optim.batch_size={batch} is not divisible by processes x grad_accum = {world_size} x {accum}"
            )
        self.micro_batch = batch // (world_size * accum)
        self.steps_per_epoch = len(self.store) // batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"optim.batch_size={batch} is larger than the {len(self.store)} training images")

    def _batch(self, store: CodeStore, indices: np.ndarray, views: np.ndarray, device,
               fields: frozenset[str] = frozenset()) -> dict:
        """Tokens (B, g*g), labels (B,), image and view indices (B,), and the optional ``fields``:
        ``"images"``, the exact pixels of each row's view, float (B, 3, H, W) in [0, 1]."""
        unknown = fields - OPTIONAL_FIELDS
        if unknown:
            raise ConfigError(f"batches cannot carry {sorted(unknown)}; optional fields are {sorted(OPTIONAL_FIELDS)}")
        tokens = torch.from_numpy(store.codes[indices, views].reshape(len(indices), -1).astype(np.int64))
        batch = {
            "tokens": tokens.to(device),
            "labels": torch.from_numpy(store.labels[indices].astype(np.int64)).to(device),
            "image_index": torch.from_numpy(indices).to(device),
            "view_index": torch.from_numpy(views).to(device),
        }
        if "images" in fields:
            batch["images"] = store.source_images(indices, views).to(device)
        return batch

    def step_batches(self, step: int, device, fields: frozenset[str] = frozenset()) -> list[dict]:
        """This rank's micro-batches for optimizer step ``step``, with the optional ``fields``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        batch = self.cfg.optim.batch_size
        order = epoch_order(self.cfg.seed, epoch, len(self.store))
        global_indices = order[position * batch : (position + 1) * batch].numpy()
        mine = global_indices.reshape(self.world_size, -1)[self.rank]
        views = epoch_views(self.cfg.seed, epoch, len(self.store), self.store.num_views)
        return [
            self._batch(self.store, chunk, views[chunk], device, fields)
            for chunk in mine.reshape(self.cfg.optim.grad_accum, -1)
        ]

    def val_batches(self, device):
        """This rank's share of the held-out images, canonical view 0 (deterministic)."""
        n = len(self.val) if not self.cfg.data.val_images else min(len(self.val), self.cfg.data.val_images)
        indices = np.arange(self.rank, n, self.world_size)
        for start in range(0, len(indices), self.micro_batch):
            chunk = indices[start : start + self.micro_batch]
            yield self._batch(self.val, chunk, np.zeros_like(chunk), device)

    @cached_property
    def _vq(self):
        return self.store.load_tokenizer()

    def tokenizer(self, device):
        """The VQ that made the codes (to decode sample grids), or None if it is not available."""
        vq = self._vq
        return vq.to(device) if vq is not None else None
