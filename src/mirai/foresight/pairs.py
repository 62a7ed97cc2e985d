"""Which student position is aligned with which target, one list of pairs per head.

Student sequence (what the GPT reads): ``[class, x_1 .. x_{N-1}]``, N = g*g; position
p >= 1 has just read x_p, whose grid cell is p - 1 (0-based raster numbering). Targets:

- ``source="encoder"`` (Mirai-I): encoder features, one per grid cell 0..N-1. Position p
  is paired with the cell of the token it just read (``pair_with="current"``), moved by
  the head's offset; the class position has no feature and is never aligned.
- ``source="ema"`` (Mirai-E): the EMA teacher's hidden states at sequence positions
  0..N-1 (it reads the same ``tokens[:, :-1]``). Position p is paired with the teacher
  position p' whose just-read cell is cell(p-1) moved by the offset, i.e. p' = cell + 1;
  cell N-1 (the last token, never read) therefore has no teacher position. With
  ``align_class_token`` the class position is also paired with the teacher's class
  position in every head, as in the authors' scripts.

Layouts give the offsets of the K heads:

- ``grid2d`` (default): the K raster-future cells nearest to the current one by grid
  distance, ties broken by raster order, the current cell included (K=3: current, right,
  below), or explicit (d_row, d_col) ``offsets``. A pair whose cell leaves the grid is
  dropped, so "right" never wraps onto the next row.
- ``raster1d``: the next K raster positions (shifts 0..K-1), the paper's 1-D ablation;
  shifts run on along the raster order across row ends, as a 1-D sequence does.
- ``reference``: the authors' flat shifts 0, 1, 16, 17, 2, 18, 34, 33, 32 (heads 0..8),
  written for a 16-wide grid and used unchanged on any grid, with wrap-around across row
  ends; a head k >= 9 shifts by k (their 1-D fall-back), so heads 16 on repeat shifts 16,
  17, ... (the training banner warns). Only pairs past the end of the sequence are dropped.
  For comparison with the published numbers only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from mirai.errors import ConfigError
from mirai.foresight.defaults import source_defaults
from mirai.models.par import sequence_cells

LAYOUTS = ("grid2d", "raster1d", "reference")
REFERENCE_SHIFTS = (0, 1, 16, 17, 2, 18, 34, 33, 32)
RASTER_FUTURE = "(d_row > 0, or d_row = 0 and d_col >= 0)"  # the offsets raster_past refuses, for messages


def nearest_future_offsets(k: int) -> list[tuple[int, int]]:
    """The k grid offsets (d_row, d_col) nearest to (0, 0) among raster-future cells.

    Raster-future means not generated before the current cell: a later row, or the same
    row at or right of it. Distance is Euclidean; ties go to the earlier raster offset.
    """
    if k < 1:
        raise ConfigError(f"foresight k must be at least 1, got {k}")
    # The future half-disc of radius R holds about pi R^2 / 2 cells, so R = sqrt(2k) + 2 holds more
    # than k of them and hence the k nearest; the box around it keeps the search O(k), not O(k^2).
    radius = math.isqrt(2 * k) + 2
    candidates = [
        (dr, dc) for dr in range(0, radius + 1) for dc in range(-radius, radius + 1)
        if not raster_past((dr, dc)) and dr * dr + dc * dc <= radius * radius
    ]
    candidates.sort(key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], o[1]))
    return candidates[:k]


def raster_past(offset: Sequence[int]) -> bool:
    """True for a grid offset (d_row, d_col) that points at a cell generated earlier in raster order."""
    return offset[0] < 0 or (offset[0] == 0 and offset[1] < 0)


def head_shifts(
    layout: str, k: int, offsets: Sequence[Sequence[int]] | None = None
) -> list[tuple[int, int] | int]:
    """Per head: a 2-D offset (d_row, d_col) for ``grid2d``, a flat raster shift otherwise."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown foresight layout {layout!r}; choose one of {list(LAYOUTS)}")
    if offsets is not None:
        if layout != "grid2d":
            raise ConfigError(f"explicit offsets need layout grid2d, not {layout!r}")
        if not offsets or any(len(o) != 2 for o in offsets):
            raise ConfigError(f"offsets must be a non-empty list of [d_row, d_col] pairs, got {offsets!r}")
        return [(int(o[0]), int(o[1])) for o in offsets]
    if layout == "grid2d":
        return list(nearest_future_offsets(k))
    if k < 1:
        raise ConfigError(f"foresight k must be at least 1, got {k}")
    if layout == "raster1d":
        return list(range(k))
    return [REFERENCE_SHIFTS[i] if i < len(REFERENCE_SHIFTS) else i for i in range(k)]


def head_pairs(
    grid_size: int,
    layout: str = "grid2d",
    source: str = "ema",
    k: int | None = None,
    offsets: Sequence[Sequence[int]] | None = None,
    *,
    pair_with: str = "current",
    align_class_token: bool = True,
    cells: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(student_pos, target_pos)`` LongTensors of equal length for each head.

    ``target_pos`` indexes the source's targets: grid cells for ``encoder``, teacher
    sequence positions for ``ema``. Pairs that leave the grid or the teacher's sequence
    are left out. ``pair_with="next"`` starts from the cell being predicted (cell p)
    instead of the one just read (cell p-1): the worse Mirai-I ablation.
    ``align_class_token`` applies to ``ema`` only (the encoder has no class feature).

    ``cells`` is the model's sequence layout, ``(read, predicted)`` raster cells per position
    (``GPT.sequence_cells``; default raster order). Only positions that read a token are
    students (not PAR's learnable tokens). In any other order than raster, a grid neighbour
    can come earlier in the sequence (PAR: the right neighbour of a region's edge cell may be
    an initial token already generated), so a pair is kept only when the sequence reads its
    target cell at or after the student's position: foresight never points at the past. In
    raster order every default offset is raster-future and the pairs are the paper's; there, only
    the encoder source keeps explicit past offsets (its features saw the whole image). An explicit
    offset that keeps no pair (past or off the grid) raises ``ConfigError``.
    """
    defaults = source_defaults(source)  # also rejects an unknown source
    if pair_with not in ("current", "next"):
        raise ConfigError(f"pair_with must be 'current' or 'next', got {pair_with!r}")
    if grid_size < 1:
        raise ConfigError(f"grid_size must be positive, got {grid_size}")
    if offsets is not None and k is not None and k != len(offsets):
        raise ConfigError(f"k={k} disagrees with the {len(offsets)} offsets given")
    g, n = grid_size, grid_size * grid_size
    k = len(offsets) if offsets is not None else (k if k is not None else defaults.k)
    read, predicted = cells if cells is not None else sequence_cells(g, 1)
    raster = len(read) == n and torch.equal(read[1:], torch.arange(n - 1))
    # The position that reads each cell; the last generated cell is never read (length: past the end).
    position_of = torch.full((n,), len(read), dtype=torch.long)
    position_of[read[read >= 0]] = torch.nonzero(read >= 0).flatten()

    student = torch.nonzero(read >= 0).flatten()
    base = read[student] if pair_with == "current" else predicted[student]
    student, base = student[base >= 0], base[base >= 0]
    row, col = base // g, base % g
    result = []
    for shift in head_shifts(layout, k, offsets):
        if isinstance(shift, tuple):
            # An offset as long as the grid leaves it from every cell; clamping it keeps a huge one
            # (a typo) from overflowing int64 below, and it still pairs nothing.
            d_row, d_col = (min(max(d, -g), g) for d in shift)
            r, c = row + d_row, col + d_col
            valid = (r >= 0) & (r < g) & (c >= 0) & (c < g)
            cell = r * g + c
        else:
            cell = base + shift
            valid = (cell >= 0) & (cell < n)
        cell = torch.where(valid, cell, 0)
        read_at = position_of[cell]
        if source == "ema":
            target = read_at  # the teacher position that has just read this cell
            valid &= target < len(read)
        else:
            target = cell
        future_only = source == "ema" or not raster  # raster encoder features of past cells are allowed
        if future_only:
            valid &= read_at >= student
        s, t = student[valid], target[valid]
        if len(s) == 0 and offsets is not None:  # (the authors' fixed reference shifts may exceed a small grid)
            where, fix = f"off the {g}x{g} grid", f"offsets smaller than the grid's {g} rows and columns"
            if future_only:
                where, fix = "into the past or " + where, f"raster-future {fix} {RASTER_FUTURE}"
            raise ConfigError(f"foresight head {len(result)} (offset {shift}) pairs no position: it points {where}; "
                              f"use {fix}")
        if source == "ema" and align_class_token:
            s, t = torch.cat([torch.zeros(1, dtype=torch.long), s]), torch.cat([torch.zeros(1, dtype=torch.long), t])
        result.append((s, t))
    return result
