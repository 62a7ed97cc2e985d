"""PAR's token order, attention mask and RoPE table (Wang et al., "Parallelized Autoregressive
Visual Generation", CVPR 2025; spec: ``docs/par.md`` sections 2-4). Pure functions of the
grid side ``g`` and the regions per side ``m`` (n = m^2 regions, s = g/m region side, N = g^2).

PAR rank k holds intra-region position j = k // n of region r = k % n: first the n region
top-left cells one by one, then n-token groups, one token per region. With m = 1 every
function reduces to LlamaGen's raster order, plain causal mask and RoPE table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mirai.errors import ConfigError


def check_regions(grid_size: int, regions_per_side: int) -> None:
    """``ConfigError`` unless ``regions_per_side`` >= 1 divides ``grid_size``."""
    if regions_per_side < 1 or grid_size % regions_per_side:
        raise ConfigError(f"regions_per_side={regions_per_side} must be a positive divisor of the "
                          f"{grid_size}x{grid_size} token grid (PAR uses 2 or 4)")


def par_cells(grid_size: int, regions_per_side: int) -> torch.Tensor:
    """``cells[k]``: the raster cell index (row * g + col) of PAR rank k, LongTensor (N,)."""
    check_regions(grid_size, regions_per_side)
    g, m = grid_size, regions_per_side
    s, n = g // m, m * m
    k = torch.arange(g * g)
    j, r = k // n, k % n
    row = (r // m) * s + j // s
    col = (r % m) * s + j % s
    return row * g + col


def par_ranks(grid_size: int, regions_per_side: int) -> torch.Tensor:
    """The inverse of ``par_cells``: ``ranks[cell]`` is the PAR rank of raster cell ``cell``."""
    cells = par_cells(grid_size, regions_per_side)
    ranks = torch.empty_like(cells)
    ranks[cells] = torch.arange(len(cells))
    return ranks


def to_par(tokens: torch.Tensor, regions_per_side: int) -> torch.Tensor:
    """Raster-order tokens (B, N) -> PAR order (B, N)."""
    grid = _grid_of(tokens)
    return tokens[:, par_cells(grid, regions_per_side).to(tokens.device)]


def from_par(tokens: torch.Tensor, regions_per_side: int) -> torch.Tensor:
    """PAR-order tokens (B, N) -> raster order (B, N)."""
    grid = _grid_of(tokens)
    return tokens[:, par_ranks(grid, regions_per_side).to(tokens.device)]


def _grid_of(tokens: torch.Tensor) -> int:
    grid = round(tokens.size(1) ** 0.5)
    if grid * grid != tokens.size(1):
        raise ValueError(f"{tokens.size(1)} tokens do not form a square grid")
    return grid


def group_mask(length: int, n: int) -> torch.Tensor:
    """PAR's attention mask, bool (length, length), True = may attend: causal, and from position
    n on each n-token group [n + g n, n + (g+1) n) also sees its whole group (docs/par.md 3.3)."""
    p = torch.arange(length)[:, None]
    q = torch.arange(length)[None, :]
    group_end = n + ((p - n) // n + 1) * n
    return (q <= p) | ((p >= n) & (q < group_end))


def par_rope_table(raster_table: torch.Tensor, grid_size: int, regions_per_side: int, cls_token_num: int
                   ) -> torch.Tensor:
    """PAR's RoPE table from LlamaGen's raster one (cls rows, then N cell rows): the class rows,
    the rows of the n initial cells, n - 1 all-zero rows for the learnable tokens (which, as for
    the class token, zero q and k there), then the rows of the remaining cells in PAR order.
    Shape (cls_token_num + N + n - 1, head_dim // 2, 2)."""
    n = regions_per_side ** 2
    cells = raster_table[cls_token_num:][par_cells(grid_size, regions_per_side)]
    zeros = raster_table.new_zeros(n - 1, *raster_table.shape[1:])
    return torch.cat([raster_table[:cls_token_num], cells[:n], zeros, cells[n:]])


def forward_passes(grid_size: int, regions_per_side: int) -> int:
    """Forward passes to decode one image: n + N/n - 1 (N for raster order, m = 1)."""
    check_regions(grid_size, regions_per_side)
    n = regions_per_side ** 2
    return n + grid_size * grid_size // n - 1


def cell_positions(grid_size: int, regions_per_side: int) -> torch.Tensor:
    """``positions[cell]``: the sequence position that reads raster cell ``cell`` when the whole
    grid is fed (class token first; PAR's learnable tokens after the n-th token), LongTensor (N,).
    Rank k sits at position k + 1 when k < n, else k + n."""
    n = regions_per_side ** 2
    ranks = par_ranks(grid_size, regions_per_side)
    return torch.where(ranks < n, ranks + 1, ranks + n)


def sequence_cells(grid_size: int, regions_per_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each position of the training sequence (class token, N - 1 inputs, and for PAR its
    n - 1 learnable tokens after the n-th input): the raster cell it has just read and the cell
    it predicts, LongTensors (L,), -1 where there is none (docs/par.md section 8).

    Raster (m = 1): position p read cell p - 1 and predicts cell p. PAR: positions 1..n read the
    initial tokens, n + 1..2n - 1 are the learnable tokens (they read nothing), p >= 2n read rank
    p - n; position p < N predicts rank p, and the last n - 1 positions predict nothing.
    """
    cells = par_cells(grid_size, regions_per_side)
    big_n, n = grid_size * grid_size, regions_per_side ** 2
    length = big_n + n - 1
    read = torch.full((length,), -1, dtype=torch.long)
    read[1 : n + 1] = cells[:n]
    read[2 * n :] = cells[n : big_n - 1]
    if n == 1:
        read[1:] = cells[: big_n - 1]
    predicted = torch.full((length,), -1, dtype=torch.long)
    predicted[:big_n] = cells
    return read, predicted


@dataclass(frozen=True)
class DecodePass:
    """One forward pass of KV-cached decoding: embed the already sampled tokens of model-order
    ranks ``feed`` (none: the class-token prefill), append ``learnable`` learnable tokens, run
    them at positions from ``start`` on, and sample ranks ``produce`` from the logits of the
    last ``len(produce)`` positions."""

    start: int
    feed: tuple[int, ...]
    learnable: int
    produce: tuple[int, ...]


def decode_schedule(grid_size: int, regions_per_side: int) -> list[DecodePass]:
    """The passes that decode one image (docs/par.md 4.1): the class prefill and the n - 1 sequential
    passes, then (PAR, n > 1) the explicit transition pass that feeds the last initial token
    with the learnable tokens, and one pass per remaining group of n tokens. Raster (m = 1):
    one token per pass. ``len(decode_schedule(g, m)) == forward_passes(g, m)``."""
    check_regions(grid_size, regions_per_side)
    n, big_n = regions_per_side ** 2, grid_size * grid_size
    if n == 1:
        return [DecodePass(0, (), 0, (0,))] + [DecodePass(i, (i - 1,), 0, (i,)) for i in range(1, big_n)]
    passes = [DecodePass(0, (), 0, (0,))] + [DecodePass(i, (i - 1,), 0, (i,)) for i in range(1, n)]
    passes.append(DecodePass(n, (n - 1,), n - 1, tuple(range(n, 2 * n))))
    for g in range(1, big_n // n - 1):
        passes.append(DecodePass((g + 1) * n, tuple(range(g * n, (g + 1) * n)), 0,
                                 tuple(range((g + 1) * n, (g + 2) * n))))
    return passes
