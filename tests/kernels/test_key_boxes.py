"""Key boxes (``tessera.kernels.gluon.key_boxes``) against a brute-force definition: per query
tile of a plan, the boxes are disjoint, every key that some query of the tile sees lies in one,
none lies wholly outside the tile's window union, and the kinds and extents follow the
partition rule. CPU only (the kernel that walks them is checked in test_gluon_gpu.py)."""

import math

import pytest
import torch

from tessera.kernels.gluon import key_boxes
from tessera.kernels.triton import masks
from tessera.natten import _auto_layout
from tessera.patterns import Neighborhood, Permuted
from tessera.patterns.layout import GridLayout
from tessera.patterns.neighborhood import PaddedNeighborhood

CPU = torch.device("cpu")


def _plan(grid, kernel, stride=1, causal=False, tile_shape=None, block_m=64, dilation=1, extent=None):
    """``(rule, layout, plan)``: the neighborhood (a ``PaddedNeighborhood`` of ``extent`` when
    given), its token order (``tile_shape`` or natten's choice) and the plan at ``block_m`` x 64
    tiles."""
    if extent is not None:
        rule = PaddedNeighborhood(grid, extent, kernel, stride=stride, causal=causal)
    else:
        rule = Neighborhood(grid, kernel, dilation=dilation, stride=stride, causal=causal)
    layout = (GridLayout(grid, tile_shape) if tile_shape is not None
              else _auto_layout(rule.grid, rule.kernel, rule.dilation, rule.stride, rule.causal))
    seq = math.prod(grid)
    return rule, layout, masks.get_plan(Permuted(rule, layout), seq, seq, block_m, 64, 2, CPU)


def _grid_coords(positions, grid):
    """Coordinates ``[n, len(grid)]`` of row-major grid positions."""
    coords = []
    for extent in reversed(grid):
        coords.append(positions % extent)
        positions = positions // extent
    return torch.stack(coords[::-1], 1)


CASES = [
    dict(grid=(16, 48, 48), kernel=(5, 13, 13)),                       # the suite's 3-D case
    dict(grid=(128, 128), kernel=(17, 17)),                            # the suite's 2-D case
    dict(grid=(8, 24, 24), kernel=(3, 7, 5)),
    dict(grid=(32, 48), kernel=(7, 9)),
    dict(grid=(24, 40), kernel=(11, 5), stride=(2, 1)),
    dict(grid=(32, 32), kernel=(9, 7), causal=(True, False)),
    dict(grid=(8, 16, 16), kernel=(3, 5, 5), tile_shape=(2, 4, 8)),    # query tiles two frames deep
    # Padded grids: 100 x 100 in 104 x 104; 21 x 30 x 52 in 22 x 32 x 52.
    dict(grid=(104, 104), kernel=(17, 17), tile_shape=(8, 8), extent=(100, 100)),
    dict(grid=(22, 32, 52), kernel=(5, 13, 13), tile_shape=(2, 8, 4), extent=(21, 30, 52),
         causal=(True, False, False)),
]
# Query tiles checked per case, spread over the plan (first and last included).
CHECKED_TILES = 40


def _assert_partition(unpacked, count: int, tile: int, points, seen, label: str):
    """The first ``count`` boxes of ``tile`` (``unpacked``: ``key_boxes.unpack`` of the entries)
    each start inside the bounding box of the ``seen`` rows of ``points`` (grid coordinates
    ``[n, 3]``), none overlap, and every seen point lies in one."""
    kinds, c0, c1, c2 = unpacked
    lo, hi = points[seen].amin(0), points[seen].amax(0)
    covered = torch.zeros(len(points), dtype=torch.int32)
    for i in range(count):
        extent = torch.tensor(key_boxes.EXTENTS[int(kinds[tile, i])])
        origin = torch.tensor([int(c0[tile, i]), int(c1[tile, i]), int(c2[tile, i])])
        # Every box starts inside the union's bounding box (so inside the grid).
        assert bool(((origin >= lo) & (origin <= hi)).all()), f"{label} {tile}: box {i} outside"
        covered += ((points >= origin) & (points < origin + extent)).all(1).to(torch.int32)
    assert int(covered.max()) <= 1, f"{label} {tile}: boxes overlap"
    assert bool((covered[seen] == 1).all()), f"{label} {tile}: a point it sees lies in no box"


def _checked_tiles(count: int) -> list[int]:
    """``CHECKED_TILES`` tile indices spread over ``count`` (first and last included)."""
    return sorted(set(torch.linspace(0, count - 1, CHECKED_TILES).round().long().tolist()))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['grid']}-{c['kernel']}")
def test_boxes_partition_each_query_tiles_keys(case):
    rule, layout, plan = _plan(**case)
    assert key_boxes.fits(plan)
    boxes = key_boxes.key_boxes(plan)
    assert key_boxes.key_boxes(plan) is boxes                       # kept with the plan
    pad = 3 - len(rule.grid)
    grid3 = (1,) * pad + tuple(rule.grid)
    keys = _grid_coords(torch.arange(math.prod(grid3)), grid3)
    unpacked = key_boxes.unpack(boxes.entries)
    kinds = unpacked[0]
    listed = torch.arange(boxes.width) < boxes.counts[:, None]
    counted = {size: sum(int(((kinds == kind) & listed).sum()) for kind, keys in key_boxes.BOX_KEYS.items()
                         if keys == size) for size in (64, 32)}
    assert (counted[64], counted[32]) == (boxes.boxes_64, boxes.boxes_32)
    positions = layout.positions()
    for m in _checked_tiles(plan.n_q_tiles):
        count = int(boxes.counts[m])
        coords = _grid_coords(positions[m * 64:(m + 1) * 64], rule.grid)
        seen = rule.allowed([coords[:, a, None] for a in range(len(rule.grid))],
                            [keys[None, :, pad + a] for a in range(len(rule.grid))], None).any(0)
        sizes = [key_boxes.BOX_KEYS[kind] for kind in kinds[m, :count].tolist()]
        assert sizes == sorted(sizes, reverse=True)                      # 64-key boxes first
        _assert_partition(unpacked, count, m, keys, seen, "query tile")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['grid']}-{c['kernel']}")
def test_query_boxes_partition_each_key_tiles_queries(case):
    """The transposed boxes (``query_boxes``): per key tile, disjoint boxes holding every query
    that sees some key of the tile, each starting inside the union of those queries."""
    rule, layout, plan = _plan(**case)
    boxes = key_boxes.query_boxes(plan)
    assert key_boxes.query_boxes(plan) is boxes
    assert boxes.counts.numel() == plan.n_k_tiles
    pad = 3 - len(rule.grid)
    grid3 = (1,) * pad + tuple(rule.grid)
    queries = _grid_coords(torch.arange(math.prod(grid3)), grid3)
    unpacked = key_boxes.unpack(boxes.entries)
    positions = layout.positions()
    # Of a padded grid only the queries inside the extent (the others' output gradients are zero).
    extent = torch.tensor((1,) * pad + tuple(getattr(rule, "extent", rule.grid)))
    for n in _checked_tiles(plan.n_k_tiles):
        coords = _grid_coords(positions[n * 64:(n + 1) * 64], rule.grid)
        seen = rule.allowed([queries[:, None, pad + a] for a in range(len(rule.grid))],
                            [coords[None, :, a] for a in range(len(rule.grid))], None).any(1)
        seen &= (queries < extent).all(1)
        _assert_partition(unpacked, int(boxes.counts[n]), n, queries, seen, "key tile")


def test_suite_3d_case_lists_fewer_keys():
    """3-D 5 x 13 x 13 over 16 x 48 x 48: 26.7 boxes of 64 keys and 2.2 of 32 per query tile
    (1,778 keys against 2,276 on the plan's 35.6 key tiles); an interior frame's 20 x 20 union
    takes four full boxes, one wide, one tall and a half box at the corner."""
    _rule, _layout, plan = _plan((16, 48, 48), (5, 13, 13))
    boxes = key_boxes.key_boxes(plan)
    tiles = plan.n_q_tiles
    assert boxes.boxes_64 / tiles == pytest.approx(26.67, abs=0.01)
    assert boxes.boxes_32 / tiles == pytest.approx(2.22, abs=0.01)
    assert boxes.cost() == pytest.approx(26.667 + key_boxes.HALF_COST * 2.222, abs=0.01)
    keys = (64 * boxes.boxes_64 + 32 * boxes.boxes_32) / tiles
    assert keys == pytest.approx(1778, abs=1) and keys < 0.8 * 64 * plan.listed_pairs() / tiles
    assert sorted(key_boxes._frame_boxes(20, 20)) == sorted([
        (key_boxes.FULL, 0, 0), (key_boxes.FULL, 0, 8), (key_boxes.FULL, 8, 0), (key_boxes.FULL, 8, 8),
        (key_boxes.WIDE, 16, 0), (key_boxes.HALF_1, 16, 16), (key_boxes.TALL, 0, 16)])
    # One full segment along axis 1: its strip along axis 2 takes a half box, not a tall one.
    assert sorted(key_boxes._frame_boxes(12, 20)) == sorted([
        (key_boxes.FULL, 0, 0), (key_boxes.FULL, 0, 8), (key_boxes.WIDE, 8, 0), (key_boxes.HALF_1, 8, 16),
        (key_boxes.HALF_2, 0, 16)])
    # A remainder past half a box takes one more full segment.
    assert sorted(key_boxes._frame_boxes(14, 8)) == [(key_boxes.FULL, 0, 0), (key_boxes.FULL, 8, 0)]


def test_pack_round_trip_and_limits():
    kind = torch.tensor([0, 1, 4, 3])
    c0 = torch.tensor([0, 255, 3, 0])
    c1 = torch.tensor([0, 1023, 17, 5])
    c2 = torch.tensor([0, 1023, 900, 7])
    assert all(torch.equal(a, b) for a, b in zip(key_boxes.unpack(key_boxes.pack(kind, c0, c1, c2)),
                                                 (kind, c0, c1, c2)))
    assert key_boxes.pack(kind, c0, c1, c2).dtype == torch.int32
    assert int(key_boxes.pack(kind, c0, c1, c2).min()) >= 0


@pytest.mark.parametrize("grid, kernel, kwargs, reason", [
    ((32, 32), (7, 7), dict(dilation=2), "dilation"),
    ((4096,), (1024,), {}, "1-D: axes 1 and 2 hold less than a box"),
    ((32, 32), (7, 7), dict(block_m=128), "128-row query tiles"),
    ((8, 16, 16), (4, 8, 8), dict(stride=(4, 8, 8), tile_shape=(4, 8, 8), block_m=128), "full tiles"),
    ((4, 1100, 16), (3, 5, 5), dict(tile_shape=(1, 4, 16)), "axis 1 past 1024"),
    ((32, 8), (5, 5), dict(tile_shape=(8, 8)), "axis 2 shorter than the longest box"),
])
def test_plans_outside_the_boxes_scope(grid, kernel, kwargs, reason):
    _rule, _layout, plan = _plan(grid, kernel, **kwargs)
    assert not key_boxes.fits(plan), reason
    assert key_boxes.key_boxes(plan) is None


@pytest.mark.parametrize("grid, kernel, tile_shape, query_tile", [
    ((16, 48, 48), (5, 13, 13), None, (2, 8, 4)),     # the suite's 3-D case: 26.8 boxes against 28.2
    ((8, 24, 24), (5, 11, 11), (1, 8, 8), (2, 8, 4)),
    ((8, 24, 24), (5, 11, 11), None, (2, 8, 4)),      # natten's order (8, 1, 8): 28.1 boxes, 22.7 here
    ((8, 16, 16), (3, 5, 5), None, (2, 8, 4)),
    ((8, 24, 24), (5, 13, 13), None, (1, 8, 8)),      # 23.7 on its own tiles against 23.8 deeper
    ((16, 48, 48), (3, 7, 7), None, (1, 8, 8)),       # natten's order (1, 4, 16): 12.5 boxes, 10.3 here
    ((16, 48, 48), (3, 7, 7), (2, 4, 8), (1, 8, 8)),
    ((128, 128), (17, 17), None, (8, 8)),             # 2-D: (8, 8) tiles only
    ((48, 40), (13, 11), (16, 4), (8, 8)),
    ((48, 44), (13, 11), (16, 4), (16, 4)),           # (8, 8) does not tile the grid
])
def test_box_plan_takes_the_cheapest_query_tiles(grid, kernel, tile_shape, query_tile):
    """``box_plan`` takes, of the plan and the plans in ``QUERY_TILES``' tiled orders that tile
    the grid, the one whose boxes cost least (``comparable_cost``); the chosen plan is the same
    neighborhood over the same tokens (its boxes are checked like any plan's:
    ``test_boxes_partition_each_query_tiles_keys`` covers query tiles two frames deep), and the
    choice is kept with the plan."""
    from tessera.kernels.triton.flash_fwd import grid_box
    _rule, _layout, plan = _plan(grid, kernel, tile_shape=tile_shape)
    chosen = key_boxes.box_plan(plan)
    assert key_boxes.box_plan(plan) is chosen
    assert grid_box(chosen, 64)[-len(grid):] == query_tile
    assert (chosen.q_len, chosen.k_len, chosen.block_m, chosen.block_n) == (plan.q_len, plan.k_len, 64, 64)
    assert repr(key_boxes._neighborhood(chosen.na_values)) == repr(key_boxes._neighborhood(plan.na_values))
    pad = 3 - len(grid)
    for shape in [grid_box(plan, 64), *key_boxes.QUERY_TILES]:
        if shape[:pad] == (1,) * pad and all(g % t == 0 for g, t in zip(grid, shape[pad:])):
            other = _plan(grid, kernel, tile_shape=shape[pad:])[2]
            assert key_boxes.comparable_cost(chosen) <= key_boxes.comparable_cost(other)


def test_box_plan_outside_the_boxes_scope():
    _rule, _layout, plan = _plan((32, 32), (7, 7), dilation=2)
    assert key_boxes.box_plan(plan) is None


def test_predicted_speedup_on_key_boxes():
    """The suite's 3-D case: 576 dense key tiles per query tile over 26.8 boxes on (2, 8, 4)
    query tiles, counted at ``DEEP_QUERY_COST``: 21.0x (the tile map predicts 12.5x)."""
    _rule, _layout, plan = _plan((16, 48, 48), (5, 13, 13))
    assert key_boxes.predicted_speedup(plan) == pytest.approx(576 / (26.83 * key_boxes.DEEP_QUERY_COST), rel=1e-3)
    _rule, _layout, dilated = _plan((32, 32), (7, 7), dilation=2)
    assert key_boxes.predicted_speedup(dilated) is None
