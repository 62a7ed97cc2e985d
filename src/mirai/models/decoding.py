"""Static-shape KV-cache decoding: one cache preallocated for the whole sequence, and passes of one width.

LlamaGen's cache (after gpt-fast) writes keys and values at positions given as a tensor and
attends over the whole cache under a mask; this module does the same for any decode schedule
(``mirai.models.par.decode_schedule``), so that every forward pass of a generation has the same
shapes and one ``torch.compile`` graph serves them all (no recompilation per step).

Every pass has the schedule's widest width W: 1 in raster order, n (PAR's tokens per parallel
pass) in PAR order. Narrower passes (the class prefill and PAR's n - 1 single-token passes) are
padded in front with rows that write to W - 1 scratch slots after the sequence and attend only
to their own slot; the real rows never attend to a scratch slot, so padding changes no logit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mirai.models.par import DecodePass


class KVCache(nn.Module):
    """Keys and values of one attention layer, (batch, n_kv_head, slots, head_dim), written at
    tensor positions so that the shapes never change during a generation."""

    def __init__(self, batch: int, slots: int, n_kv_head: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, n_kv_head, slots, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``, ``v`` (B, n_kv_head, W, head_dim) at cache ``slots`` (W,); returns the whole cache."""
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        return self.k, self.v


@dataclass
class DecodePlan:
    """Where each pass of ``schedule`` puts its W input rows: RoPE rows ``positions[i]`` (W,),
    cache slots ``slots[i]`` (W,) and the attention mask ``masks[i]`` (W, cache_len), True = may
    attend. A pass's real inputs are its last rows; ``width - len(real rows)`` padding rows lead."""

    schedule: list[DecodePass]
    width: int
    cache_len: int
    positions: list[torch.Tensor]
    slots: list[torch.Tensor]
    masks: list[torch.Tensor]


def pass_width(step: DecodePass) -> int:
    """Input rows of a pass: the class token for the prefill, else the fed tokens and learnable tokens."""
    return len(step.feed) + step.learnable if step.feed else 1


def decode_plan(schedule: list[DecodePass], allowed: torch.Tensor, cls_token_num: int,
                device: torch.device | str = "cpu") -> DecodePlan:
    """The static plan of ``schedule`` for a sequence of ``L = len(allowed)`` positions.

    ``allowed`` (L, L) bool is the training mask of the sequence (causal, or PAR's group mask):
    the row of position p says which positions its query may attend to. A pass that feeds
    tokens starts at ``step.start + cls_token_num - 1`` (its first token follows the class
    tokens); the prefill writes position 0. The cache holds L + W - 1 slots: the L positions,
    then the W - 1 scratch slots of the padding rows.
    """
    length = len(allowed)
    width = max(pass_width(step) for step in schedule)
    cache_len = length + width - 1
    positions, slots, masks = [], [], []
    for step in schedule:
        real = pass_width(step)
        start = step.start + cls_token_num - 1 if step.feed else 0
        if start + real > length:
            raise ValueError(f"decode pass at {start} with {real} rows does not fit {length} positions")
        pad = width - real
        rows = torch.arange(start, start + real)
        scratch = torch.arange(length, length + pad)
        mask = torch.zeros(width, cache_len, dtype=torch.bool)
        mask[pad:, :length] = allowed[rows]
        mask[torch.arange(pad), scratch] = True  # a padding row sees only what it wrote itself
        positions.append(torch.cat([torch.zeros(pad, dtype=torch.long), rows]).to(device))
        slots.append(torch.cat([scratch, rows]).to(device))
        masks.append(mask.to(device))
    return DecodePlan(list(schedule), width, cache_len, positions, slots, masks)
