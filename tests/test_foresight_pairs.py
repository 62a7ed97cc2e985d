"""Foresight pairs: which (student position, target) pairs each head aligns, per layout and source,
checked by hand on small grids, and the offset and head-count checks of ``ForesightConfig``."""
import pytest
import torch

import mirai.foresight as foresight
from mirai.config import from_dict
from mirai.errors import ConfigError
from mirai.foresight import ForesightConfig, head_pairs
from mirai.foresight.config import MAX_HEADS
from mirai.foresight.pairs import REFERENCE_SHIFTS, nearest_future_offsets
from mirai.training.config import TrainConfig


def as_lists(head_pairs):
    return [list(zip(s.tolist(), t.tolist())) for s, t in head_pairs]


def test_head_pairs_is_exported_beside_its_module():
    import mirai.foresight.pairs as pairs_module

    assert foresight.head_pairs is pairs_module.head_pairs and callable(foresight.head_pairs)


def test_nearest_future_offsets_order():
    assert nearest_future_offsets(3) == [(0, 0), (0, 1), (1, 0)]  # current, right, below
    assert nearest_future_offsets(4)[3] == (1, -1)  # next ring: below-left before below-right (raster order)
    assert all(dr > 0 or dc >= 0 for dr, dc in nearest_future_offsets(16))  # never a generated cell


def test_grid2d_ema_pairs_by_hand_4x4():
    # Student p read cell p-1; teacher p' read cell p'-1. Right of cell c is c+1 (not at col 3);
    # below is c+4 (not in row 3); teacher positions stop at 15 (cell 15 is never read).
    current, right, below = as_lists(head_pairs(4, "grid2d", "ema", k=3))
    assert current == [(p, p) for p in range(16)]
    assert right == [(0, 0), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (7, 8), (9, 10), (10, 11), (11, 12),
                     (13, 14), (14, 15)]
    assert below == [(0, 0)] + [(p, p + 4) for p in range(1, 12)]
    without_class = as_lists(head_pairs(4, "grid2d", "ema", k=3, align_class_token=False))
    assert [h[0] for h in without_class] == [(1, 1), (1, 2), (1, 5)]


def test_grid2d_encoder_pairs_current_and_next():
    (current,) = as_lists(head_pairs(4, "grid2d", "encoder"))
    assert current == [(p, p - 1) for p in range(1, 16)]  # the class position is never aligned
    (predicted,) = as_lists(head_pairs(4, "grid2d", "encoder", pair_with="next"))
    assert predicted == [(p, p) for p in range(1, 16)]
    _, right, below = as_lists(head_pairs(4, "grid2d", "encoder", k=3))
    assert right == [(p, p) for p in range(1, 16) if (p - 1) % 4 != 3]
    assert below == [(p, p + 3) for p in range(1, 13)]


def test_explicit_offsets():
    (up_left,) = as_lists(head_pairs(4, "grid2d", "encoder", offsets=[(-1, -1)]))
    assert up_left == [(p, p - 6) for p in range(5, 16) if (p - 1) % 4 != 0]  # row >= 1 and col >= 1
    with pytest.raises(ConfigError):
        head_pairs(4, "raster1d", "ema", offsets=[(0, 1)])


@pytest.mark.parametrize("offsets, message", [
    ([(0, -1)], "points into the past"),          # Mirai-E: a teacher state the student has already passed
    ([(-1, 0), (1, 0)], "points into the past"),
    ([(4, 0)], "off the 4x4 grid"),                # 4x4 grid: no cell four rows below
])
def test_offsets_that_pair_nothing_are_refused(offsets, message):
    with pytest.raises(ConfigError, match=message):
        head_pairs(4, "grid2d", "ema", offsets=offsets)


def test_future_offsets_pair_and_encoder_offsets_may_point_back_but_not_off_the_grid():
    assert len(head_pairs(4, "grid2d", "ema", offsets=[(1, 0), (1, 1), (2, 0)])) == 3  # §4.9's heads
    assert len(head_pairs(4, "grid2d", "encoder", offsets=[(0, -1)])) == 1
    with pytest.raises(ConfigError, match=r"points off the 4x4 grid; use offsets smaller than the grid's 4 rows "
                                          r"and columns$"):
        head_pairs(4, "grid2d", "encoder", offsets=[(0, 4)])


def test_raster1d_pairs_by_hand_4x4():
    heads = as_lists(head_pairs(4, "raster1d", "ema", k=3))
    for shift, head in enumerate(heads):
        assert head == [(0, 0)] + [(p, p + shift) for p in range(1, 16 - shift)]  # runs across row ends
    enc = as_lists(head_pairs(4, "raster1d", "encoder", k=2))
    assert enc[1] == [(p, p) for p in range(1, 16)]


def test_reference_layout_is_the_authors_flat_shifts_with_wrap():
    n = 256
    heads = head_pairs(16, "reference", "ema", k=10)
    shifts = list(REFERENCE_SHIFTS) + [9]  # head >= 9: 1-D shift by the head index
    for shift, (s, t) in zip(shifts, heads):
        assert s[0] == 0 and t[0] == 0  # class with class in every head
        assert torch.equal(t[1:] - s[1:], torch.full_like(s[1:], shift))
        assert s[1:].tolist() == list(range(1, n - shift))
    s, t = heads[1]
    assert 16 in s.tolist() and t[s.tolist().index(16)] == 17  # p=16 read the row's last cell: "right" wraps
    # Written for 16-wide grids and used unchanged: on a 4x4 grid "+16" leaves the sequence entirely.
    assert as_lists(head_pairs(4, "reference", "ema", k=3))[2] == [(0, 0)]


@pytest.mark.parametrize("g", [1, 2, 3, 5, 7])
@pytest.mark.parametrize("source", ["encoder", "ema"])
def test_grid2d_never_crosses_a_row_end(g, source):
    offsets = nearest_future_offsets(9)
    for (dr, dc), (s, t) in zip(offsets, head_pairs(g, "grid2d", source, k=9, align_class_token=False)):
        cell_s = s - 1
        cell_t = t - 1 if source == "ema" else t
        assert torch.equal(cell_t // g - cell_s // g, torch.full_like(s, dr))
        assert torch.equal(cell_t % g - cell_s % g, torch.full_like(s, dc))
        # every in-grid pair is kept (the teacher never read the last cell): count them directly
        last = g * g - 1 if source == "ema" else g * g
        expected = sum(
            1 for c in range(g * g - 1)
            if 0 <= c // g + dr < g and 0 <= c % g + dc < g and (c // g + dr) * g + c % g + dc < last
        )
        assert len(s) == expected


def test_mirai_i_pairs_each_position_with_the_cell_of_the_token_it_just_read():
    g = 5
    tokens = torch.arange(g * g)  # the token at cell c has id c
    sequence = torch.cat([torch.tensor([-1]), tokens[:-1]])  # [class, x_1 .. x_{N-1}] as the GPT reads it
    ((s, t),) = head_pairs(g, "grid2d", "encoder")
    assert torch.equal(sequence[s], t)


def test_a_repeated_offset_is_refused_with_the_repeat_named():
    with pytest.raises(ConfigError, match=r"foresight.offsets repeats \(1, 0\); give each"):
        from_dict(ForesightConfig, {"source": "ema", "offsets": [[1, 0], [0, 1], [1, 0]]})

def test_nearest_future_offsets_equal_an_exhaustive_search_and_stay_cheap():
    for k in range(1, MAX_HEADS + 1):
        every = [(dr, dc) for dr in range(k + 1) for dc in range(-k, k + 1) if dr > 0 or dc >= 0]
        assert nearest_future_offsets(k) == sorted(every, key=lambda o: (o[0] ** 2 + o[1] ** 2, o[0], o[1]))[:k]


@pytest.mark.parametrize("settings, message", [
    ({"k": 3000}, r"foresight.k must be between 1 and 64 heads"),
    ({"k": 3, "offsets": [[0, 1], [1, 0]]}, r"k=3 disagrees with the 2 offsets given: set foresight.k=null"),
    ({"k": 3, "offsets": [[1, 0], [1, 0], [1, 1]]}, r"repeats \(1, 0\)"),  # the repeat is the first fault named
])
def test_head_counts_are_checked_with_the_fix_named(settings, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ForesightConfig, {"source": "ema", **settings})


@pytest.mark.parametrize("offset", [(10**20, 0), (-(10**20), 0), (0, 10**30), (8, -8)])
@pytest.mark.parametrize("source", ["ema", "encoder"])
def test_an_offset_longer_than_the_grid_is_refused_not_overflowed(offset, source):
    with pytest.raises(ConfigError, match=r"pairs no position: it points .*off the 8x8 grid"):
        head_pairs(8, "grid2d", source, offsets=[offset])


def test_a_mirai_e_offset_into_the_raster_past_is_refused_with_the_config():
    base = {"data": {"codes": "x"}, "steps": 1, "foresight": {"source": "ema", "offsets": [[1, 0], [0, -1]]}}
    with pytest.raises(ConfigError, match=r"\(0, -1\) points into the past.*raster-future"):
        from_dict(TrainConfig, base)
    # In PAR order a raster-past cell can come later in the sequence: the pairs decide there.
    from_dict(TrainConfig, {**base, "model": {"overrides": {"order": "par", "regions_per_side": 2}}})
    from_dict(TrainConfig, {**base, "foresight": {"source": "encoder", "offsets": [[1, 0], [0, -1]]}})
