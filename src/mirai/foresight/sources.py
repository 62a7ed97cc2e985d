"""Where foresight targets come from. A source answers ``targets(batch) -> (B, T, C)`` and owns
everything else its targets need: the batch fields it reads, a feature cache, a teacher and
that teacher's update, and the state a checkpoint must keep.

Sources are deliberately not ``nn.Module``s: they hold frozen networks (the EMA model, an
image encoder) that must never be registered under the loss module, or they would end up
in the optimizer and in the saved weights of the heads.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from mirai.errors import ConfigError
from mirai.foresight.base import SavedState
from mirai.foresight.encoders import FrozenEncoder
from mirai.models.ema import ema_decay, update_ema


class ViewStore(Protocol):
    """What a feature cache reads from a code store (``mirai.data.codes.CodeStore``)."""

    num_views: int

    def __len__(self) -> int: ...

    def source_images(self, indices: Sequence[int], views: Sequence[int]) -> torch.Tensor: ...


class Source:
    """Base of the target sources; the hooks default to "nothing to read, update or save"."""

    feature_dim: int
    batch_fields: frozenset[str] = frozenset()

    def targets(self, batch: dict) -> torch.Tensor:
        """Stop-gradient targets (B, T, C), indexed by the target positions of ``head_pairs``."""
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Update whatever the source keeps after optimizer step ``step`` (0-based)."""

    def saved_states(self) -> dict[str, SavedState]:
        return {}


@contextmanager
def frozen_eval(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in eval mode (no dropout) without grad, then restore every submodule's mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


class EMASource(Source):
    """Mirai-E: an EMA of the model, on the same tokens and true labels, cut after block ``layer``.

    By default (``teacher_decay=None``, the paper's choice) the teacher is ``ema``, the EMA
    the trainer keeps for sampling, and nothing is copied. With ``teacher_decay`` the source
    keeps its own EMA copy of ``model`` with that decay (its own horizon), updates it after
    every optimizer step (capped like the sampled EMA while ``ema_warmup``) and hands it to
    the checkpoint as ``teacher``. Eval mode switches off token/residual dropout and class
    dropout (so the label is the true one). Targets: teacher positions 0..N-1 (it reads
    ``tokens[:, :-1]``), width d.
    """

    def __init__(self, model: nn.Module, ema: nn.Module, layer: int, teacher_decay: float | None = None,
                 ema_warmup: bool = False):
        n_layer = model.args.n_layer
        if not 1 <= layer <= n_layer:
            raise ConfigError(f"foresight layer {layer} is outside the EMA model's blocks 1..{n_layer}")
        if ema.args != model.args:
            raise ConfigError("the Mirai-E teacher must be an EMA of the model itself (the same architecture, "
                              f"grid and vocabulary); got a {ema.args.grid_size}x{ema.args.grid_size}, "
                              f"{ema.args.n_layer}-block teacher for a {model.args.grid_size}x{model.args.grid_size}, "
                              f"{model.args.n_layer}-block model")
        self.teacher_decay, self.ema_warmup = teacher_decay, ema_warmup
        self.teacher = ema if teacher_decay is None else copy.deepcopy(model).eval().requires_grad_(False)
        self.layer, self.feature_dim = layer, model.args.dim

    def targets(self, batch: dict) -> torch.Tensor:
        with frozen_eval(self.teacher):
            sequence = self.teacher.to_sequence(batch["tokens"])  # the same order the student reads
            return self.teacher.hidden_state(sequence[:, :-1], batch["labels"], self.layer)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        if self.teacher_decay is not None:
            update_ema(self.teacher, model, ema_decay(self.teacher_decay, step, self.ema_warmup))

    def saved_states(self) -> dict[str, SavedState]:
        return {} if self.teacher_decay is None else {"teacher": SavedState(self.teacher, "foresight.teacher_decay")}


class EncoderSource(Source):
    """Mirai-I: patch features of a frozen image encoder, one per grid cell in raster order.

    ``encoder(images01) -> (B, g*g, C)`` with ``encoder.feature_dim == C``; images are the
    exact crop/flip views that produced the tokens, in [0, 1], read from ``batch["images"]``.
    With ``features`` (a cache of shape (num_images * num_views, g*g, C), row
    ``image * num_views + view``; see ``cache_store_features``), targets are read from the
    cache by the batch's ``image_index``/``view_index`` and no images are needed.
    """

    def __init__(self, encoder: nn.Module | None = None, features: torch.Tensor | None = None,
                 num_views: int | None = None):
        if encoder is None and features is None:
            raise ConfigError("the encoder source needs an encoder or a tensor of cached features")
        if features is not None and num_views is None:
            raise ConfigError("cached encoder features need the store's num_views to find a view's row")
        if encoder is not None:
            for p in encoder.parameters():
                p.requires_grad_(False)
        self.encoder, self.features, self.num_views = encoder, features, num_views
        self.feature_dim = int(features.shape[-1] if features is not None else encoder.feature_dim)
        self.batch_fields = frozenset() if features is not None else frozenset({"images"})

    def targets(self, batch: dict) -> torch.Tensor:
        tokens = batch["tokens"]
        if self.features is not None:
            # The trainer's batches keep the row indices on the host (training.data.to_device): then
            # the cache lookup and the copy of its rows to the device wait for nothing on the GPU.
            rows = batch["image_index"] * self.num_views + batch["view_index"]
            out = self.features[rows.to(self.features.device)].to(tokens.device, non_blocking=True).float()
        elif "images" in batch:
            # Batch images are uint8 pixels made [0, 1] (training.data.to_device): a FrozenEncoder
            # need not test their range, which would read the device (a GPU sync) every step.
            known = {"unit_range_known": True} if isinstance(self.encoder, FrozenEncoder) else {}
            with frozen_eval(self.encoder):
                out = self.encoder(batch["images"], **known)
        else:
            raise ConfigError("the encoder source needs batch['images'] (the pixels of each row's view)")
        if out.shape[:2] != tokens.shape[:2]:
            raise ConfigError(
                f"encoder features have shape {tuple(out.shape)} but the batch has {tuple(tokens.shape)} tokens;"
                " the encoder's patch grid must equal the token grid (resolution 14*g for DINOv2)"
            )
        return out


def cache_store_features(encoder: nn.Module, store: ViewStore, batch_size: int = 256) -> torch.Tensor:
    """``encoder`` features of every stored (image, view) row, row ``image * num_views + view``.

    For small datasets (``foresight.cache_features``): the encoder then runs once per view
    instead of once per step. Memory: ``images x views x g^2 x C`` float16 values.
    """
    from mirai.foresight.encoders import cache_features  # imports timm: only when Mirai-I is used

    n, v = len(store), store.num_views
    rows = np.arange(n * v)

    def batches():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            yield store.source_images(chunk // v, chunk % v)

    return cache_features(encoder, batches(), n * v, desc="foresight features")
