"""What the trainer reads: batches of token grids from a code store, in a reproducible order.

The order of images in epoch e is a permutation seeded by (seed, e), and each image's view in
epoch e is drawn from a generator seeded the same way, so step s always sees the same batch:
that is what makes ``--resume`` exact and lets DDP ranks agree without communicating. Steps are
made in the training process or, with ``data.workers``, ahead of time by DataLoader workers
(``mirai.training.loader``) calling the same ``StepRows.host_batches``: the batches are the same.
"""

from __future__ import annotations

from functools import cached_property, partial

import numpy as np
import torch

from mirai.data.codes import CodeStore, epoch_views
from mirai.data.transforms import to_unit_range
from mirai.errors import ConfigError, DataError
from mirai.models.gpt import check_token_ids
from mirai.training.config import TrainConfig
from mirai.training.loader import StepLoader, resolve_workers

OPTIONAL_FIELDS = frozenset({"images"})


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The (n,) permutation of epoch ``epoch``: a function of (seed, epoch) only, so a resumed run reads the same batches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def check_fields(fields: frozenset[str]) -> None:
    """Raise ConfigError on a batch field outside ``OPTIONAL_FIELDS`` (the fields a foresight source may ask for)."""
    unknown = fields - OPTIONAL_FIELDS
    if unknown:
        raise ConfigError(f"batches cannot carry {sorted(unknown)}; optional fields are {sorted(OPTIONAL_FIELDS)}")


def host_batch(store: CodeStore, indices: np.ndarray, views: np.ndarray, fields: frozenset[str] = frozenset()) -> dict:
    """Host tensors of rows ``indices`` (views ``views``): tokens int64 (B, g*g), labels, image and
    view indices int64 (B,), and with ``"images"`` in ``fields`` the exact pixels of each row's
    view, uint8 (B, H, W, 3) (``to_device`` makes them floats on the device). ``DataError`` for
    code ids outside the store's vocabulary."""
    codes = store.codes[indices, views].reshape(len(indices), -1)
    try:  # here, on the host: the model no longer checks (no GPU sync)
        check_token_ids(codes, store.vocab_size)
    except ValueError:  # the store was checked by the range extraction recorded: codes.npy was changed since
        bad = sorted(set(indices[((codes < 0) | (codes >= store.vocab_size)).any(axis=1)].tolist()))
        raise DataError(f"{store.path / 'codes.npy'} holds code ids {codes.min()}..{codes.max()} (images "
                        f"{', '.join(map(str, bad[:4]))}{', ...' if len(bad) > 4 else ''}), outside the "
                        f"vocabulary 0..{store.vocab_size - 1} that its extraction recorded: the file was changed "
                        f"since; re-run mirai extract (mirai data check {store.path} rescans it)") from None
    batch = {
        "tokens": torch.from_numpy(codes.astype(np.int64)),
        "labels": torch.from_numpy(store.labels[indices].astype(np.int64)),
        "image_index": torch.from_numpy(indices),
        "view_index": torch.from_numpy(views),
    }
    if "images" in fields:
        batch["images"] = torch.from_numpy(store.source_pixels(indices, views))
    return batch


# Row indices stay on the host: their one reader, a feature cache in host memory, would otherwise
# copy them back from the device every step (a GPU sync). DDP and FSDP still move them to the device.
HOST_FIELDS = frozenset({"image_index", "view_index"})


def to_device(batch: dict, device: torch.device | str, non_blocking: bool = False) -> dict:
    """``batch`` on ``device``, but for the row indices (``HOST_FIELDS``), which stay host tensors;
    ``"images"`` become float (B, 3, H, W) in [0, 1] there, the same bits on any device
    (``to_unit_range``), after a copy of a quarter of the floats' bytes."""
    out = {k: v if k in HOST_FIELDS else v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
    if "images" in out:
        out["images"] = to_unit_range(out["images"])
    return out


class StepRows:
    """Which rows (image, view) each of this rank's micro-batches holds in each optimizer step: the
    global batch of step s is slice s of the epoch's ``epoch_order``, and rank r of w takes the
    r-th of w equal parts, split into ``grad_accum`` micro-batches. Pickles without the store's
    memory map or its epoch tables, so a spawned worker maps the file instead of copying it."""

    def __init__(self, store: CodeStore, seed: int, batch_size: int, grad_accum: int, rank: int, world_size: int):
        self.store, self.seed, self.batch_size, self.grad_accum = store, seed, batch_size, grad_accum
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = len(store) // batch_size
        self._tables: tuple[int, np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _tables=None)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's image order and views, kept for the epoch (ImageNet: ~60 ms to make them)."""
        if self._tables is None or self._tables[0] != epoch:
            n = len(self.store)
            self._tables = (epoch, epoch_order(self.seed, epoch, n).numpy(),
                            epoch_views(self.seed, epoch, n, self.store.num_views))
        return self._tables[1], self._tables[2]

    def rows(self, step: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(image indices, views), int64 (micro-batch,) each, of this rank's micro-batches of ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order, views = self._epoch(epoch)
        global_indices = order[position * self.batch_size : (position + 1) * self.batch_size]
        mine = global_indices.reshape(self.world_size, -1)[self.rank]
        return [(chunk, views[chunk]) for chunk in mine.reshape(self.grad_accum, -1)]

    def host_batches(self, step: int, fields: frozenset[str] = frozenset()) -> list[dict]:
        """``host_batch`` of each of this rank's micro-batches of ``step``."""
        return [host_batch(self.store, indices, views, fields) for indices, views in self.rows(step)]


def check_same_codes(val: CodeStore, train: CodeStore) -> None:
    """``DataError`` if ``data.val_codes`` differ from ``data.codes`` in codebook size, grid, classes or the
    tokenizer that made them (its weights' hash in each manifest: another tokenizer's ids mean other patches).

    The validation store must follow the training store, never the other way round, so the message names
    the training store's tokenizer to re-extract with (not a model setting, which the training codes fix)."""
    sizes = {"codebook size": (val.vocab_size, train.vocab_size), "grid side": (val.grid_size, train.grid_size),
             "classes": (val.num_classes, train.num_classes)}
    differ = [f"{name} {v} vs {t}" for name, (v, t) in sizes.items() if v != t]
    if val.manifest["tokenizer"].get("sha256") != train.manifest["tokenizer"].get("sha256"):  # raw or EMA alike
        differ.append("extracted with another tokenizer (its weights differ)")
    if differ:
        tok, kind = train.manifest["tokenizer"], train.manifest["dataset"]["kind"]
        root = " --data-root ROOT" if kind == "folder" else ""
        raise DataError(
            f"data.val_codes {val.path} does not match data.codes {train.path} ({'; '.join(differ)}): extract the "
            f"validation split with the training codes' tokenizer, mirai extract --tokenizer {tok['path']} "
            f"--dataset {kind}{root} --split test --out DIR, and give data.val_codes=DIR (or data.val_codes=null)")


def _open_codes(path: str, key: str, alternative: str = "") -> CodeStore:
    """``CodeStore.open``, its error naming the config key that gave ``path`` (and an ``alternative`` fix)."""
    try:
        return CodeStore.open(path)
    except DataError as err:
        raise DataError(f"{key}: {err}{alternative}") from None


class TrainingData:
    """Training batches for one rank, validation batches, and the store's tokenizer."""

    def __init__(self, cfg: TrainConfig, rank: int = 0, world_size: int = 1):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        m = cfg.model
        self.store = _open_codes(cfg.data.codes, "data.codes")
        self.store.validate(vocab_size=m.vocab_size, grid_size=m.grid_size, num_classes=m.num_classes)
        self.vocab_size = self.store.vocab_size
        self.grid_size = self.store.grid_size
        self.num_classes = self.store.num_classes
        self.val = None
        if cfg.data.val_codes:
            self.val = _open_codes(cfg.data.val_codes, "data.val_codes", " (or data.val_codes=null: no validation)")
            check_same_codes(self.val, self.store)
            self.val.validate()
        batch, accum = cfg.optim.batch_size, cfg.optim.grad_accum
        if batch % (world_size * accum):
            raise ConfigError(
                f"optim.batch_size={batch} is not divisible by processes x grad_accum = {world_size} x {accum}"
            )
        self.micro_batch = batch // (world_size * accum)
        self.rows = StepRows(self.store, cfg.seed, batch, accum, rank, world_size)
        self.steps_per_epoch = self.rows.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"optim.batch_size={batch} is larger than the {len(self.store)} training images")
        self._loader: StepLoader | None = None
        self._loader_key: tuple | None = None

    def step_batches(self, step: int, device, fields: frozenset[str] = frozenset()) -> list[dict]:
        """This rank's micro-batches for optimizer step ``step`` on ``device``, with the optional
        ``fields``: made here, or by ``data.workers`` DataLoader workers (the same batches)."""
        check_fields(fields)
        device = torch.device(device)
        workers = resolve_workers(self.cfg.data.workers, device, fields)
        if workers == 0:
            return [to_device(b, device) for b in self.rows.host_batches(step, fields)]
        pin = device.type == "cuda"
        key = (fields, workers, pin)
        if self._loader is None or self._loader_key != key:
            self.close()
            self._loader = StepLoader(partial(self.rows.host_batches, fields=fields), workers,
                                      self.cfg.data.prefetch, pin)
            self._loader_key = key
        return [to_device(b, device, non_blocking=pin) for b in self._loader.get(step)]

    def close(self) -> None:
        """Stop any DataLoader workers (``step_batches`` starts them again when needed)."""
        if self._loader is not None:
            self._loader.close()
        self._loader, self._loader_key = None, None

    def val_batches(self, device):
        """This rank's share of the held-out images, canonical view 0 (deterministic)."""
        n = len(self.val) if not self.cfg.data.val_images else min(len(self.val), self.cfg.data.val_images)
        indices = np.arange(self.rank, n, self.world_size)
        for start in range(0, len(indices), self.micro_batch):
            chunk = indices[start : start + self.micro_batch]
            yield to_device(host_batch(self.val, chunk, np.zeros_like(chunk)), device)

    @cached_property
    def _vq(self):
        return self.store.load_tokenizer()

    def tokenizer(self, device):
        """The VQ that made the codes (to decode sample grids), or None if it is not available."""
        vq = self._vq
        return vq.to(device) if vq is not None else None
