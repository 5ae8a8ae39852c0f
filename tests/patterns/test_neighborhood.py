"""Neighborhood (NATTEN semantics): mask against a loop-level definition, exact tile maps,
parameter errors, and the predicted speedup."""

import itertools
import math
import random

import pytest
import torch

from tessera.patterns import Causal, Window
from tessera.patterns.base import UNKNOWN
from tessera.patterns.layout import (GridLayout, Permuted, box_tile_counts, choose_padded_tile_shape,
                                     choose_tile_shape, padded_grid)
from tessera.patterns.neighborhood import PARTIAL_COST, Neighborhood, PaddedNeighborhood, predicted_speedup
from tessera.patterns.tilemap import FULL, PARTIAL
from test_tilemap_exact import brute_states

MAX_GRID = {1: 40, 2: 12, 3: 6}


def natten_window(length, kernel, dilation, stride, causal, x):
    """Keys (coordinates) visible from coordinate x on one axis, from NATTEN's definition: split
    the axis into `dilation` groups, find the stride-group leader, place the window around it."""
    group = x % dilation
    n = len(range(group, length, dilation))
    i = x // dilation
    left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
    if causal:
        leader = min(i // stride * stride + stride - 1, n - 1)
        start = max(leader - left - right, 0)
        end = min(i + 1, n)
    else:
        leader = min(i // stride * stride + stride // 2, n - 1)
        start = max(leader - left, 0)
        if leader + right >= n:
            start += n - right - leader - 1
        end = start + kernel
    return {group + j * dilation for j in range(start, end)}


def loop_mask(grid, kernel, dilation, stride, causal):
    coords = list(itertools.product(*[range(g) for g in grid]))
    windows = [[natten_window(grid[a], kernel[a], dilation[a], stride[a], causal[a], c[a])
                for a in range(len(grid))] for c in coords]
    rows = [[all(kc[a] in windows[qi][a] for a in range(len(grid))) for kc in coords]
            for qi in range(len(coords))]
    return torch.tensor(rows)


def random_neighborhood(rng: random.Random, ndim=None):
    ndim = ndim or rng.randint(1, 3)
    grid = tuple(rng.randint(2, MAX_GRID[ndim]) for _ in range(ndim))
    dilation = tuple(rng.randint(2, max(2, g // 2)) if rng.random() < 0.35 and g >= 4 else 1 for g in grid)
    kernel = tuple(rng.randint(1, g // d) for g, d in zip(grid, dilation))
    stride = tuple(rng.randint(1, k) if rng.random() < 0.4 else 1 for k in kernel)
    causal = tuple(rng.random() < 0.3 for _ in grid)
    return Neighborhood(grid, kernel, dilation, stride, causal)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_mask_matches_natten_definition(ndim):
    rng = random.Random(ndim)
    for _ in range(12):
        p = random_neighborhood(rng, ndim)
        n = math.prod(p.grid)
        expected = loop_mask(p.grid, p.kernel, p.dilation, p.stride, p.causal)
        assert torch.equal(p.dense_mask(n, n)[0], expected), p


def test_every_query_sees_prod_kernel_keys():
    rng = random.Random(10)
    for _ in range(20):
        ndim = rng.randint(1, 3)
        grid = tuple(rng.randint(2, MAX_GRID[ndim]) for _ in range(ndim))
        dilation = tuple(rng.randint(1, max(1, g // 3)) for g in grid)
        kernel = tuple(rng.randint(1, g // d) for g, d in zip(grid, dilation))
        p = Neighborhood(grid, kernel, dilation)
        n = math.prod(grid)
        counts = p.dense_mask(n, n)[0].sum(-1)
        assert bool((counts == math.prod(kernel)).all()), p
        assert bool(p.dense_mask(n, n)[0].diagonal().all()), p   # a query sees itself


def test_one_dimensional_special_cases():
    # Causal, kernel = grid: ordinary causal attention. Kernel k, causal: sliding window of k keys.
    for n in (7, 16, 33):
        assert torch.equal(Neighborhood(n, n, causal=True).dense_mask(n, n), Causal().dense_mask(n, n))
        for k in (1, 3, 6):
            assert torch.equal(Neighborhood(n, k, causal=True).dense_mask(n, n),
                               Window(k - 1).dense_mask(n, n))
    # Stride = kernel = block: blocked attention when the block divides the grid.
    mask = Neighborhood(12, 4, stride=4).dense_mask(12, 12)[0]
    block = torch.arange(12) // 4
    assert torch.equal(mask, block[:, None] == block[None, :])


def test_tile_states_exact_random():
    rng = random.Random(20)
    unknown = 0
    for _ in range(70):
        p = random_neighborhood(rng)
        n = math.prod(p.grid)
        bm, bn = rng.randint(1, 48), rng.randint(1, 48)
        expected = brute_states(p, n, n, bm, bn, 1)
        assert torch.equal(p.tile_states(n, n, bm, bn, 1), expected), (p, bm, bn)
        tiles = p.tile_map(n, n, bm, bn, 1)
        assert torch.equal(tiles.states(), expected), (p, bm, bn)
        # The analytic classification never needs the mask.
        m = torch.arange(-(-n // bm))
        c = torch.arange(-(-n // bn))
        states = p.classify((m * bm).view(-1, 1), torch.clamp((m + 1) * bm, max=n).view(-1, 1) - 1,
                            (c * bn).view(1, -1), torch.clamp((c + 1) * bn, max=n).view(1, -1) - 1,
                            torch.zeros(1, 1, dtype=torch.int64))
        unknown += int((states == UNKNOWN).sum())
    assert unknown == 0


def test_classify_arbitrary_rectangles():
    rng = random.Random(21)
    for _ in range(25):
        p = random_neighborhood(rng)
        n = math.prod(p.grid)
        mask = p.dense_mask(n, n)[0]
        q = torch.randint(0, n, (2, 64))
        k = torch.randint(0, n, (2, 64))
        q_lo, q_hi = q.min(0).values, q.max(0).values
        k_lo, k_hi = k.min(0).values, k.max(0).values
        got = p.classify(q_lo, q_hi, k_lo, k_hi, torch.zeros(1, dtype=torch.int64))
        for t in range(64):
            block = mask[q_lo[t]:q_hi[t] + 1, k_lo[t]:k_hi[t] + 1]
            want = FULL if block.all() else PARTIAL if block.any() else 0
            assert int(got[t]) == want, (p, q_lo[t], q_hi[t], k_lo[t], k_hi[t])


def test_candidates_are_few():
    # A 2-D neighborhood on a wide grid lists O(kernel) key tiles per query tile, not all of them.
    p = Neighborhood((64, 256), 7)
    n = 64 * 256
    m = torch.arange(n // 128)
    columns = p.key_tile_candidates(m * 128, (m + 1) * 128 - 1, n, 128)
    assert columns is not None and columns.shape[-1] <= 16
    tiles = p.tile_map(n, n, 128, 128)
    assert int(tiles.kv_count.max()) <= 14


def test_bad_parameters_name_the_axis():
    with pytest.raises(ValueError, match=r"kernel\[1\] \* dilation\[1\] must be <= grid\[1\]"):
        Neighborhood((8, 6), (3, 7))
    with pytest.raises(ValueError, match=r"kernel\[0\] \* dilation\[0\] must be <= grid\[0\]"):
        Neighborhood((8, 8), 3, dilation=(3, 1))
    with pytest.raises(ValueError, match=r"stride\[2\] must be <= kernel\[2\]"):
        Neighborhood((5, 5, 5), 3, stride=(1, 1, 4))
    with pytest.raises(ValueError, match=r"kernel\[1\] must be >= 1"):
        Neighborhood((5, 5), (3, 0))
    with pytest.raises(ValueError, match=r"kernel must be an int or a tuple of 2 ints"):
        Neighborhood((5, 5), (3, 3, 3))
    with pytest.raises(TypeError, match=r"causal\[0\] must be a bool"):
        Neighborhood((5, 5), 3, causal=(1, False))
    with pytest.raises(TypeError, match=r"grid must be"):
        Neighborhood("abc", 3)
    with pytest.raises(ValueError, match=r"q_len and k_len must both equal prod\(grid\) = 25"):
        Neighborhood((5, 5), 3).tile_map(24, 25)


def test_predicted_speedup():
    n = 1024
    dense_like = Neighborhood(n, n)
    assert predicted_speedup(dense_like, n, n) == pytest.approx(1.0)
    p = Neighborhood((32, 32), 5)
    tiles = p.tile_map(n, n, 64, 64)
    listed = int(tiles.kv_count.sum())
    full = int(tiles.kv_full.sum())
    expected = (n // 64) ** 2 / (full + PARTIAL_COST * (listed - full))
    assert predicted_speedup(p, n, n, 64, 64) == pytest.approx(expected)
    assert predicted_speedup(p, n, n, 64, 64, partial_cost=1.0) == pytest.approx((n // 64) ** 2 / listed)
    with pytest.raises(ValueError, match="partial_cost"):
        predicted_speedup(p, n, n, partial_cost=0)


def test_permuted_neighborhood_tiles_exact():
    rng = random.Random(30)
    for _ in range(30):
        p = random_neighborhood(rng)
        n = math.prod(p.grid)
        layout = GridLayout(p.grid, tuple(rng.randint(1, g) for g in p.grid))
        permuted = Permuted(p, layout)
        bm, bn = rng.randint(1, 48), rng.randint(1, 48)
        expected = brute_states(permuted, n, n, bm, bn, 1)
        assert torch.equal(permuted.tile_states(n, n, bm, bn, 1), expected), (permuted, bm, bn)
        assert torch.equal(permuted.tile_map(n, n, bm, bn, 1).states(), expected), (permuted, bm, bn)


def random_padded(rng: random.Random) -> PaddedNeighborhood:
    p = random_neighborhood(rng)
    grid = tuple(e + rng.choice([0, 0, 1, rng.randint(1, 7)]) for e in p.grid)
    return PaddedNeighborhood(grid, p.grid, p.kernel, p.stride, p.causal)


def padded_loop_mask(p: PaddedNeighborhood) -> torch.Tensor:
    """Every query of the padded grid against every key, from NATTEN's definition on the extent:
    a padding coordinate takes the window of the nearest border coordinate, reaching up to
    itself on a causal axis."""
    def keys(axis, x):
        e = p.extent[axis]
        window = natten_window(e, p.kernel[axis], 1, p.stride[axis], p.causal[axis], min(x, e - 1))
        return window | set(range(e, x + 1)) if p.causal[axis] else window
    coords = list(itertools.product(*[range(g) for g in p.grid]))
    windows = [[keys(a, c[a]) for a in range(p.ndim)] for c in coords]
    return torch.tensor([[all(kc[a] in windows[qi][a] for a in range(p.ndim)) for kc in coords]
                         for qi in range(len(coords))])


def test_padded_neighborhood_embeds_the_extent():
    """A query inside the extent sees what ``Neighborhood(extent)`` shows it and no padding key;
    padding queries see the nearest border position's window (and on causal axes the padding up
    to themselves), so no row of the padded grid is empty."""
    rng = random.Random(40)
    for _ in range(40):
        p = random_padded(rng)
        n = math.prod(p.grid)
        mask = p.dense_mask(n, n)[0]
        assert torch.equal(mask, padded_loop_mask(p)), p
        inside = torch.ones(p.grid, dtype=torch.bool)[tuple(slice(0, e) for e in p.extent)]
        inside = torch.nn.functional.pad(inside, [x for e, g in zip(reversed(p.extent), reversed(p.grid))
                                                  for x in (0, g - e)]).flatten()
        real = Neighborhood(p.extent, p.kernel, 1, p.stride, p.causal)
        m = math.prod(p.extent)
        assert torch.equal(mask[inside][:, inside], real.dense_mask(m, m)[0]), p
        assert not mask[inside][:, ~inside].any(), p
        assert bool(mask.any(1).all()), p


def test_padded_neighborhood_tiles_exact():
    rng = random.Random(41)
    for _ in range(40):
        p = random_padded(rng)
        n = math.prod(p.grid)
        bm, bn = rng.randint(1, 48), rng.randint(1, 48)
        expected = brute_states(p, n, n, bm, bn, 1)
        assert torch.equal(p.tile_map(n, n, bm, bn, 1).states(), expected), (p, bm, bn)
        layout = GridLayout(p.grid, tuple(rng.randint(1, g) for g in p.grid))
        permuted = Permuted(p, layout)
        expected = brute_states(permuted, n, n, bm, bn, 1)
        assert torch.equal(permuted.tile_map(n, n, bm, bn, 1).states(), expected), (permuted, bm, bn)


def test_padded_neighborhood_bad_extent():
    with pytest.raises(ValueError, match=r"extent\[1\] must lie in \[kernel\[1\], grid\[1\]\] = \[3, 8\], got 9"):
        PaddedNeighborhood((8, 8), (8, 9), 3)
    with pytest.raises(ValueError, match=r"extent\[0\] must lie in"):
        PaddedNeighborhood((8, 8), (2, 8), 3)


def test_box_tile_counts_match_the_tile_map():
    rng = random.Random(42)
    for _ in range(30):
        p = random_padded(rng)
        shape = tuple(rng.choice([t for t in range(1, g + 1) if g % t == 0]) for g in p.grid)
        n, tokens = math.prod(p.grid), math.prod(shape)
        tiles = Permuted(p, GridLayout(p.grid, shape)).tile_map(n, n, tokens, tokens)
        assert box_tile_counts(p, shape) == (int(tiles.kv_count.sum()), int(tiles.kv_full.sum())), (p, shape)


def test_padded_tile_shape_choice():
    # No 64-token shape divides 100 x 100; padded to 104 x 104, 8 x 8 tiles list 9 key tiles
    # per query tile (row-major order: 27, none full).
    assert choose_tile_shape((100, 100), 17, 64) is None
    assert choose_padded_tile_shape((100, 100), 17, 64) == (8, 8)
    padded = padded_grid((100, 100), (8, 8))
    assert padded == (104, 104)
    listed, _ = box_tile_counts(PaddedNeighborhood(padded, (100, 100), 17), (8, 8))
    assert listed == 9 * 13 * 13
    shape = choose_padded_tile_shape((21, 30, 52), (5, 13, 13), 64)
    assert math.prod(shape) == 64 and all(t & (t - 1) == 0 for t in shape)
    with pytest.raises(ValueError, match="no tile shape of 64 tokens"):
        choose_padded_tile_shape((3, 3), 3, 64)
