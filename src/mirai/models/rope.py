"""LlamaGen's 2-D rotary position embedding (``autoregressive/models/gpt.py``: ``precompute_freqs_cis_2d``
and ``apply_rotary_emb``), computed to the bit as LlamaGen computes it.

The table is built once per model (``rope_2d_table``); each forward pass turns the rows it uses into the
two factors of the rotation once (``rope_factors``), and every attention layer applies them to its q and k
(``apply_rope``). PAR permutes the table's rows (``mirai.models.par.par_rope_table``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RopeFactors(NamedTuple):
    """The rotation's two factors for T positions (``rope_factors``), each (1, T, 1, D/2, 2)."""

    cos: torch.Tensor  # (cos, cos) per channel pair
    sin: torch.Tensor  # (-sin, sin) per channel pair


def rope_2d_table(grid_size: int, head_dim: int, base: float = 10000.0, cls_token_num: int = 1) -> torch.Tensor:
    """LlamaGen's 2-D RoPE table, shape (cls_token_num + g*g, head_dim // 2, 2) of (cos, sin).

    Half of the rotary pairs encode the row, half the column; the class positions get an
    all-zero table (LlamaGen's construction, kept exactly for checkpoint compatibility).
    ``ValueError`` unless ``head_dim`` is a multiple of 4 (two halves of (cos, sin) pairs).
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head size divisible by 4 (rows and columns each take half of the "
                         f"channel pairs), got {head_dim}")
    half = head_dim // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid_size, dtype=torch.float32), inv_freq)  # (g, head_dim/4)
    grid = torch.cat(
        [angles[:, None, :].expand(-1, grid_size, -1), angles[None, :, :].expand(grid_size, -1, -1)], dim=-1
    )  # (g, g, head_dim/2): rows first, then columns
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


def rope_factors(table: torch.Tensor) -> RopeFactors:
    """The two factors of the rotation for the T rows of a (T, D/2, 2) (cos, sin) table: (cos, cos) and
    (-sin, sin), each (1, T, 1, D/2, 2) to broadcast over batch and heads. Computed once per forward pass
    and shared by every layer, which all rotate by the same rows. ``ValueError`` for another shape."""
    if table.dim() != 3 or table.size(-1) != 2:
        raise ValueError(f"a RoPE table has shape (T, D/2, 2), one (cos, sin) pair per position and channel pair; "
                         f"got {tuple(table.shape)}")
    cos, sin = table.unbind(-1)
    return RopeFactors(torch.stack([cos, cos], dim=-1)[None, :, None], torch.stack([-sin, sin], dim=-1)[None, :, None])


def apply_rope(x: torch.Tensor, factors: RopeFactors) -> torch.Tensor:
    """Rotate (B, T, H, D) ``x`` by ``rope_factors`` of a (T, D/2, 2) table: each channel pair (x0, x1)
    becomes (x0 cos - x1 sin, x1 cos + x0 sin), in fp32, returned in ``x``'s dtype (LlamaGen's
    ``apply_rotary_emb``).

    Computed as x * (cos, cos) + swap(x) * (-sin, sin): the same products and sums as LlamaGen's four
    products and stack (x0 cos + x1 (-sin) is x0 cos - x1 sin to the bit), each its own kernel in eager
    code, so values and gradients are bit-identical (tests/test_gpt.py: CPU, head sizes 16 to 100), in
    fewer, larger kernels (benchmarks/rope_speed.py); compiled code fuses them, as it fuses LlamaGen's.
    A complex product would be faster still but is not exact: vectorised kernels leave the last pairs to
    scalar code that fuses multiply-adds. Errors: ``TypeError`` unless ``factors`` come from ``rope_factors``;
    ``ValueError`` if ``x`` is not (B, T, H, even D) or the factors do not fit it.
    """
    if not isinstance(factors, RopeFactors):
        is_tensor = isinstance(factors, torch.Tensor)
        got = f"a tensor of shape {tuple(factors.shape)}" if is_tensor else f"a {type(factors).__name__}"
        raise TypeError(f"apply_rope takes rope_factors(table), got {got}: pass rope_factors(table), not the "
                        f"(T, D/2, 2) table itself or a hand-built tuple")
    if x.dim() != 4 or x.size(-1) % 2:
        raise ValueError(f"apply_rope rotates x of shape (B, T, H, D) with an even D, got {tuple(x.shape)}")
    expected = (1, x.size(1), 1, x.size(-1) // 2, 2)
    if factors.cos.shape != expected or factors.sin.shape != expected:
        raise ValueError(f"RoPE factors of shapes {tuple(factors.cos.shape)} and {tuple(factors.sin.shape)} do not "
                         f"fit x of shape {tuple(x.shape)}: both should be {expected}, rope_factors of a table with "
                         f"one (cos, sin) row per position of x and one pair per channel pair "
                         f"({x.size(1)}, {x.size(-1) // 2}, 2)")
    pairs = x.float().unflatten(-1, (-1, 2))
    return (pairs * factors.cos + pairs.flip(-1) * factors.sin).flatten(3).type_as(x)
