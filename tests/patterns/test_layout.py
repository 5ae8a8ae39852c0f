"""GridLayout permutations, row-major box splitting, Permuted patterns and tile-shape choice."""

import itertools
import math
import random

import pytest
import torch

from tessera.patterns import Window
from tessera.patterns.layout import (ChainedOrder, CyclicShift, GridLayout, Permuted, choose_tile_shape,
                                     row_major_boxes, tile_shapes)
from tessera.patterns.neighborhood import Neighborhood, predicted_speedup
from test_tilemap_exact import brute_states


def tiled_order(grid, tile_shape):
    """Row-major positions listed tile by tile, from loops over tiles and their tokens."""
    tiles = [range(0, g, t) for g, t in zip(grid, tile_shape)]
    order = []
    for origin in itertools.product(*tiles):
        ranges = [range(o, min(o + t, g)) for o, t, g in zip(origin, tile_shape, grid)]
        for c in itertools.product(*ranges):
            order.append(sum(x * math.prod(grid[a + 1:]) for a, x in enumerate(c)))
    return order


def test_positions_follow_tiles():
    for grid, tile in [((8, 8), (2, 4)), ((7, 5), (3, 2)), ((4, 6, 5), (2, 3, 2)), ((10,), (4,)),
                       ((6, 6), (6, 6)), ((5, 7), (1, 1))]:
        layout = GridLayout(grid, tile)
        assert layout.positions().tolist() == tiled_order(grid, tile), (grid, tile)
        inverse = layout.tiled_positions()
        assert torch.equal(inverse[layout.positions()], torch.arange(math.prod(grid)))


def test_permute_round_trip_and_gradients():
    rng = random.Random(0)
    for _ in range(10):
        ndim = rng.randint(1, 3)
        grid = tuple(rng.randint(1, 9) for _ in range(ndim))
        layout = GridLayout(grid, tuple(rng.randint(1, g) for g in grid))
        x = torch.randn(2, math.prod(grid), 3, 4, requires_grad=True)
        y = layout.permute(x, 1)
        assert torch.equal(y[:, 0], x[:, int(layout.positions()[0])])
        assert torch.equal(layout.unpermute(y, 1), x)
        assert torch.equal(layout.permute(layout.unpermute(x, 1), 1), x)
        upstream = torch.randn_like(y)
        y.backward(upstream)
        assert torch.equal(x.grad, layout.unpermute(upstream, 1))
        assert (layout.permute(x, 1) is x) == layout.is_identity
        assert layout.is_identity == torch.equal(layout.positions(), torch.arange(math.prod(grid)))
        z = torch.randn(3, math.prod(grid))
        assert torch.equal(layout.unpermute(layout.permute(z, -1), -1), z)


def test_cyclic_shift_and_chained_orders():
    """``CyclicShift`` is ``torch.roll`` of the grid by ``-shift``; ``ChainedOrder`` is its two
    orders one after the other, undone in one gather, with the inverse gather as gradient."""
    for grid, shift, tile in [((8, 8), (4, 4), (4, 2)), ((6, 9), (1, 0), (3, 3)), ((12,), (5,), (4,)),
                              ((4, 6, 6), (1, 3, 2), (2, 3, 2))]:
        n = math.prod(grid)
        x = torch.randn(2, n, 3, 4, requires_grad=True)
        shift_order = CyclicShift(grid, shift)
        rolled = torch.roll(x.view(2, *grid, 3, 4), [-s for s in shift], list(range(1, len(grid) + 1)))
        assert torch.equal(shift_order.permute(x, 1), rolled.reshape(2, n, 3, 4))
        layout = GridLayout(grid, tile)
        chained = ChainedOrder(shift_order, layout)
        y = chained.permute(x, 1)
        assert torch.equal(y, layout.permute(shift_order.permute(x, 1), 1))
        assert torch.equal(chained.unpermute(y, 1), x)
        upstream = torch.randn_like(y)
        y.backward(upstream)
        assert torch.equal(x.grad, chained.unpermute(upstream, 1))
    assert CyclicShift((4, 4), 0).is_identity
    with pytest.raises(ValueError, match=r"shift\[1\] must be >= 0"):
        CyclicShift((4, 4), (1, -1))
    with pytest.raises(ValueError, match=r"then.grid must equal first.grid = \(4, 4\)"):
        ChainedOrder(CyclicShift((4, 4), 1), GridLayout((2, 8), 2))


def test_row_major_boxes_cover_ranges_exactly():
    rng = random.Random(1)
    for _ in range(40):
        ndim = rng.randint(1, 4)
        grid = tuple(rng.randint(1, 6) for _ in range(ndim))
        n = math.prod(grid)
        lo = torch.randint(0, n, (50,))
        hi = torch.minimum(lo + torch.randint(0, n, (50,)), torch.tensor(n - 1))
        boxes = row_major_boxes(lo, hi, grid)
        assert len(boxes) == 2 * ndim - 1
        cells = list(itertools.product(*[range(g) for g in grid]))
        for t in range(50):
            covered = []
            for valid, b_lo, b_hi in boxes:
                if valid[t]:
                    for c in cells:
                        if all(int(b_lo[a][t]) <= c[a] <= int(b_hi[a][t]) for a in range(ndim)):
                            covered.append(sum(x * math.prod(grid[a + 1:]) for a, x in enumerate(c)))
            assert sorted(covered) == list(range(int(lo[t]), int(hi[t]) + 1)), (grid, lo[t], hi[t])


def test_permuted_pattern_is_the_same_attention():
    p = Neighborhood((6, 10), (3, 5), dilation=(1, 2))
    layout = GridLayout((6, 10), (2, 4))
    permuted = Permuted(p, layout)
    pos = layout.positions()
    assert torch.equal(permuted.dense_mask(60, 60)[0], p.dense_mask(60, 60)[0][pos][:, pos])
    assert "GridLayout(grid=(6, 10), tile_shape=(2, 4))" in repr(permuted)


def test_permuted_non_grid_pattern_is_settled_by_mask():
    layout = GridLayout((8, 8), (2, 4))
    permuted = Permuted(Window(5, 5), layout)
    expected = brute_states(permuted, 64, 64, 16, 16, 1)
    assert torch.equal(permuted.tile_states(64, 64, 16, 16, 1), expected)


def test_tiled_layout_lists_fewer_tiles():
    # Row-major 64-token tiles are half rows of this wide grid: a query tile's neighborhood meets
    # two key tiles on each of 9 rows; square-ish tiles need about 3 x 3.
    grid = (16, 128)
    p = Neighborhood(grid, 9)
    n = 16 * 128
    shape = choose_tile_shape(grid, 9, 64)
    assert math.prod(shape) == 64 and shape in tile_shapes(grid, 64)
    tiled = Permuted(p, GridLayout(grid, shape))
    assert predicted_speedup(tiled, n, n, 64, 64) > predicted_speedup(p, n, n, 64, 64)
    for other in tile_shapes(grid, 64):
        candidate = Permuted(p, GridLayout(grid, other))
        assert predicted_speedup(candidate, n, n, 64, 64) <= predicted_speedup(tiled, n, n, 64, 64) + 1e-9


def test_tile_shape_for_the_kernels_tiles():
    """128-token layout tiles read by 128-row query and 64-key tiles: the shape whose 64-token
    halves are square wins (a 2-D 17 x 17 neighborhood lists 11.2 instead of 16.2 key tiles per
    query tile); at 128 x 128 kernel tiles the two orientations tie."""
    from tessera.kernels.triton import masks
    grid, n = (128, 128), 128 * 128
    assert choose_tile_shape(grid, 17, 128, kernel_tiles=(128, 64)) == (16, 8)
    listed = {shape: masks.get_plan(Permuted(Neighborhood(grid, 17), GridLayout(grid, shape)), n, n, 128, 64, 1,
                                    torch.device("cpu")).listed_pairs() / (n // 128)
              for shape in ((16, 8), (8, 16))}
    assert round(listed[(16, 8)], 1) == 11.2 and round(listed[(8, 16)], 1) == 16.2
    assert choose_tile_shape(grid, 17, 64) == choose_tile_shape(grid, 17, 64, kernel_tiles=(64, 64))


def test_bad_layouts():
    with pytest.raises(ValueError, match=r"tile_shape\[1\] must be <= grid\[1\] = 4"):
        GridLayout((8, 4), (2, 8))
    with pytest.raises(ValueError, match=r"tile_shape must be an int or a tuple of 2 ints"):
        GridLayout((8, 4), (2, 2, 2))
    layout = GridLayout((8, 4), (2, 2))
    with pytest.raises(ValueError, match=r"x.shape\[1\] must be prod\(grid\) = 32"):
        layout.permute(torch.zeros(1, 31, 2), 1)
    with pytest.raises(ValueError, match="layout.grid must equal pattern.grid"):
        Permuted(Neighborhood((4, 8), 3), layout)
    assert choose_tile_shape((7, 11), 3, 64) is None


def test_permuted_exports_to_flex():
    import warnings
    from torch.nn.attention.flex_attention import flex_attention

    from tessera.patterns import to_flex

    permuted = Permuted(Neighborhood((8, 16), (3, 5)), GridLayout((8, 16), (4, 8)))
    _, block_mask = to_flex(permuted, 128, 128, block_size=32)
    q, k, v = (torch.randn(1, 1, 128, 8) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_attention(q, k, v, block_mask=block_mask)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~permuted.dense_mask(128, 128), -math.inf)
    ref = torch.softmax(scores.double(), -1) @ v.double()
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("tile_shape", [(4, 8, 8), (4, 4, 4), (2, 4, 8), (8, 24), (8, 16), (1, 3, 64), (256,)])
@pytest.mark.parametrize("rows", [32, 64, 128])
def test_rows_box_against_the_tiled_order(tile_shape, rows):
    """``rows_box``: each run of ``rows`` consecutive tiled positions is exactly a box of those
    extents in the box's own row-major order (what a bulk copy of the box returns; grid coordinates
    from the tiled order itself), or, when it says None, some run is not."""
    from tessera.patterns.layout import rows_box
    grid = tuple(2 * t for t in tile_shape)
    order = tiled_order(grid, tile_shape)
    padded = (1,) * (3 - len(grid)) + grid
    boxes = set()
    for start in range(0, len(order), rows):
        coords = [divmod(divmod(p, padded[2])[0], padded[1]) + (p % padded[2],) for p in order[start:start + rows]]
        lo = [min(c[a] for c in coords) for a in range(3)]
        hi = [max(c[a] for c in coords) + 1 for a in range(3)]
        extents = tuple(h - l for l, h in zip(lo, hi))
        in_box_order = coords == sorted(coords)
        boxes.add(extents if math.prod(extents) == len(coords) == rows and in_box_order else None)
    expected = rows_box(tile_shape, rows)
    if expected is None:
        assert None in boxes, boxes
    else:
        assert boxes == {expected}, (boxes, expected)
