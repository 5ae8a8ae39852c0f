"""Vision patterns against loop-level definitions from their papers, and their exact tile maps."""

import itertools
import math
import random

import pytest
import torch

from tessera.patterns.base import UNKNOWN
from tessera.patterns.layout import GridLayout, Permuted
from tessera.patterns.neighborhood import Neighborhood
from tessera.patterns.vision import (CSWin, CrissCross, Halo, MaxViTBlock, MaxViTGrid, Radial, RolledShiftedSwin, Swin,
                                    equivalent_neighborhood)
from test_tilemap_exact import brute_states


def coords(grid):
    return list(itertools.product(*[range(g) for g in grid]))


def pairwise(grid, rule):
    cs = coords(grid)
    return torch.tensor([[rule(q, k) for k in cs] for q in cs])


def swin_reference(grid, window, shifted):
    """Swin's procedure: roll by -shift, split into windows, and label the regions of the shifted
    image with slices (0, -w), (-w, -s), (-s, None) per axis; attend iff same window and label."""
    shift = [w // 2 if shifted else 0 for w in window]

    def place(x, a):
        xs = (x - shift[a]) % grid[a]                 # coordinate after torch.roll(-shift)
        if shift[a] == 0:
            label = 0
        elif xs < grid[a] - window[a]:
            label = 0
        elif xs < grid[a] - shift[a]:
            label = 1
        else:
            label = 2
        return xs // window[a], label

    return pairwise(grid, lambda q, k: all(place(q[a], a) == place(k[a], a) for a in range(len(grid))))


def maxvit_groups(grid, block=None, grid_size=None):
    """MaxViT's reshapes on a 2-D (H, W) grid: each row of the result is one attention group."""
    h, w = grid
    idx = torch.arange(h * w)
    if block is not None:
        groups = idx.view(h // block, block, w // block, block).permute(0, 2, 1, 3).reshape(-1, block * block)
    else:
        g = grid_size
        groups = idx.view(g, h // g, g, w // g).permute(1, 3, 0, 2).reshape(-1, g * g)
    mask = torch.zeros(h * w, h * w, dtype=torch.bool)
    for row in groups.tolist():
        for a in row:
            for b in row:
                mask[a, b] = True
    return mask


def halo_reference(grid, block, halo):
    def ok(q, k):
        return all(q[a] // block * block - halo <= k[a] <= q[a] // block * block + block - 1 + halo
                   for a in range(len(grid)))
    return pairwise(grid, ok)


def radial_reference(frames, frame_size, window):
    n = frames * frame_size
    mask = torch.zeros(n, n, dtype=torch.bool)
    for qi in range(n):
        for ki in range(n):
            i, k = divmod(qi, frame_size)
            j, l = divmod(ki, frame_size)
            dt = abs(i - j)
            r = max(dt, 1).bit_length() - 1
            band = (abs(k - l) + 1) * 2 ** r <= window
            diagonal = k == l and dt % -(-2 ** r // window) == 0
            mask[qi, ki] = band or diagonal
    return mask


def test_swin_matches_shifted_window_procedure():
    for grid, window in [((8, 8), 4), ((12, 6), (4, 3)), ((6, 9), (2, 3)), ((4, 6, 6), (2, 3, 3)), ((16,), 4)]:
        for shifted in (False, True):
            p = Swin(grid, window, shifted=shifted)
            n = math.prod(grid)
            assert torch.equal(p.dense_mask(n, n)[0], swin_reference(grid, p.window, shifted)), p


def test_rolled_shifted_swin_is_swin_seen_through_the_roll():
    """``Swin.rolled()``: the rolled rule at rolled positions allows what Swin's procedure allows
    at the original positions (``torch.roll`` of the grid's indices, not the order's own code)."""
    for grid, window in [((8, 8), 4), ((12, 6), (4, 3)), ((6, 9), (2, 3)), ((4, 6, 6), (2, 3, 3)),
                         ((16,), 4), ((8, 8), (1, 4)), ((6, 6), 6)]:
        swin = Swin(grid, window, shifted=True)
        order, rolled = swin.rolled()
        assert isinstance(rolled, RolledShiftedSwin) and order.shift == tuple(w // 2 for w in swin.window)
        n = math.prod(grid)
        rolled_indices = torch.roll(torch.arange(n).view(grid), [-s for s in order.shift],
                                    list(range(len(grid)))).reshape(-1)
        assert torch.equal(order.positions(), rolled_indices)
        want = swin_reference(grid, swin.window, True)[rolled_indices][:, rolled_indices]
        assert torch.equal(rolled.dense_mask(n, n)[0], want), swin
    assert Swin((8, 8), 4).rolled() is None and MaxViTBlock((8, 8), 4).rolled() is None


def test_maxvit_block_and_grid_match_reshapes():
    for grid, size in [((8, 8), 2), ((8, 8), 4), ((12, 12), 3), ((6, 12), 2), ((12, 6), 3)]:
        n = math.prod(grid)
        block = MaxViTBlock(grid, size)
        assert torch.equal(block.dense_mask(n, n)[0], maxvit_groups(grid, block=size)), block
        grid_attn = MaxViTGrid(grid, size)
        assert torch.equal(grid_attn.dense_mask(n, n)[0], maxvit_groups(grid, grid_size=size)), grid_attn


def test_halo_matches_definition():
    for grid, block, halo in [((8, 8), 2, 1), ((12, 12), 4, 2), ((6, 9), 3, 0), ((24,), 4, 3), ((4, 6, 6), 2, 1)]:
        p = Halo(grid, block, halo)
        n = math.prod(grid)
        assert torch.equal(p.dense_mask(n, n)[0], halo_reference(grid, block, halo)), p


def test_cswin_stripes_per_head():
    grid, sw, heads = (8, 12), 2, 4
    p = CSWin(grid, sw, heads)
    n = math.prod(grid)
    got = p.dense_mask(n, n, heads)
    horizontal = pairwise(grid, lambda q, k: q[0] // sw == k[0] // sw)
    vertical = pairwise(grid, lambda q, k: q[1] // sw == k[1] // sw)
    for h in range(heads):
        assert torch.equal(got[h], horizontal if h < heads // 2 else vertical), h
    with pytest.raises(ValueError, match="num_heads must be 4"):
        p.tile_map(n, n, 16, 16, num_heads=2)


def test_criss_cross_row_and_column():
    for grid in [(7, 9), (12, 12), (3, 4, 5)]:
        p = CrissCross(grid)
        n = math.prod(grid)
        rule = pairwise(grid, lambda q, k: sum(a != b for a, b in zip(q, k)) <= 1)
        assert torch.equal(p.dense_mask(n, n)[0], rule), p
    row_col = pairwise((6, 5), lambda q, k: q[0] == k[0] or q[1] == k[1])
    assert torch.equal(CrissCross((6, 5)).dense_mask(30, 30)[0], row_col)


def test_radial_matches_paper_rule():
    for grid, window in [((8, 4, 4), None), ((12, 6), None), ((10, 8), 4), ((16, 3), 2)]:
        p = Radial(grid, window)
        frames, frame_size = grid[0], math.prod(grid[1:])
        n = frames * frame_size
        expected = radial_reference(frames, frame_size, p.window)
        assert torch.equal(p.dense_mask(n, n)[0], expected), p


def test_equivalent_neighborhoods_allow_the_papers_pairs():
    """Unshifted Swin, MaxViT block and grid attention and halo-free HaloNet blocks have a
    ``Neighborhood`` allowing exactly the pairs of their papers' definitions (the references
    above, not the patterns' own masks); the others have none."""
    cases = []
    for grid, window in [((8, 8), 4), ((12, 6), (4, 3)), ((6, 9), (2, 3)), ((4, 6, 6), (2, 3, 3)), ((16,), 4),
                         ((8, 8), 8), ((6, 6), 1)]:
        cases.append((Swin(grid, window), swin_reference(grid, as_tuple(window, len(grid)), False)))
    for grid, size in [((8, 8), 2), ((8, 8), 4), ((12, 12), 3), ((6, 12), 2), ((12, 6), 3), ((6, 6), 6), ((6, 6), 1)]:
        cases.append((MaxViTBlock(grid, size), maxvit_groups(grid, block=size)))
        cases.append((MaxViTGrid(grid, size), maxvit_groups(grid, grid_size=size)))
    for grid, size in [((4, 6, 6), (2, 3, 2)), ((12,), 4)]:
        period = tuple(g // s for g, s in zip(grid, as_tuple(size, len(grid))))
        rule = pairwise(grid, lambda q, k: all((a - b) % m == 0 for a, b, m in zip(q, k, period)))
        cases.append((MaxViTGrid(grid, size), rule))
    for grid, block in [((8, 8), 2), ((6, 9), 3), ((4, 6, 6), 2)]:
        cases.append((Halo(grid, block, 0), halo_reference(grid, block, 0)))
    for pattern, expected in cases:
        neighborhood = equivalent_neighborhood(pattern)
        assert type(neighborhood) is Neighborhood, pattern
        n = math.prod(pattern.grid)
        assert torch.equal(neighborhood.dense_mask(n, n)[0], expected), (pattern, neighborhood)
    plain = Neighborhood((6, 8), (3, 5), dilation=(2, 1))
    assert equivalent_neighborhood(plain) is plain
    for pattern in (Swin((8, 8), 4, shifted=True), Halo((8, 8), 2, 1), Halo((8, 8), 2, (0, 1)), CSWin((8, 8), 2, 4),
                    CrissCross((6, 5)), Radial((4, 8))):
        assert equivalent_neighborhood(pattern) is None, pattern


@pytest.mark.parametrize("grid, size", [((8, 8), 2), ((12, 6), (3, 2)), ((12,), 4), ((4, 6, 6), (2, 3, 2)), ((6, 6), 6)])
def test_maxvit_grid_as_blocks_is_block_attention(grid, size):
    """In the order of ``as_blocks`` MaxViT grid attention allows exactly the pairs of MaxViT
    block attention with ``grid_size`` blocks, and ``from_blocks`` undoes the order (any dim)."""
    pattern = MaxViTGrid(grid, size)
    n = math.prod(grid)
    order = pattern.as_blocks(torch.arange(n)[None, :], dim=1)[0]       # new position -> grid token
    assert torch.equal(order.sort().values, torch.arange(n))
    grid_mask = pattern.dense_mask(n, n)[0]
    block_mask = MaxViTBlock(grid, pattern.grid_size).dense_mask(n, n)[0]
    assert torch.equal(grid_mask[order][:, order], block_mask)
    x = torch.randn(2, 3, n, 5)
    assert torch.equal(pattern.from_blocks(pattern.as_blocks(x, dim=2), dim=2), x)
    assert torch.equal(pattern.as_blocks(x, dim=-2), x[:, :, order])
    with pytest.raises(ValueError, match=f"must hold the grid's {n} tokens along dim 1"):
        pattern.as_blocks(torch.zeros(1, n + 1))


def as_tuple(value, ndim):
    return (value,) * ndim if isinstance(value, int) else tuple(value)


def random_vision(rng: random.Random):
    kind = rng.choice(["swin", "rolled", "block", "grid", "halo", "cswin", "criss", "radial"])
    ndim = 2 if kind in ("block", "grid", "cswin") else rng.choice([2, 2, 3])

    def divisible_grid(parts):
        return tuple(p * rng.randint(1, 12 // p if ndim == 2 else 6 // p) for p in parts)

    if kind == "swin":
        window = tuple(rng.randint(1, 4 if ndim == 2 else 3) for _ in range(ndim))
        return Swin(divisible_grid(window), window, shifted=rng.random() < 0.6), 1
    if kind == "rolled":
        window = tuple(rng.randint(1, 4 if ndim == 2 else 3) for _ in range(ndim))
        return RolledShiftedSwin(divisible_grid(window), window), 1
    if kind == "block":
        size = rng.randint(1, 4)
        return MaxViTBlock(divisible_grid((size, size)), size), 1
    if kind == "grid":
        size = rng.randint(1, 4)
        return MaxViTGrid(divisible_grid((size, size)), size), 1
    if kind == "halo":
        block = rng.randint(1, 3)
        return Halo(divisible_grid((block,) * ndim), block, rng.randint(0, 3)), 1
    if kind == "cswin":
        sw = rng.randint(1, 4)
        heads = rng.choice([2, 4])
        return CSWin(divisible_grid((sw, sw)), sw, heads), heads
    if kind == "criss":
        return CrissCross(tuple(rng.randint(2, 12 if ndim == 2 else 5) for _ in range(ndim))), 1
    grid = (rng.randint(2, 10), rng.randint(1, 12))
    return Radial(grid, rng.choice([None, rng.randint(1, 8)])), 1


def test_tile_states_exact_random():
    rng = random.Random(40)
    for _ in range(70):
        pattern, heads = random_vision(rng)
        n = math.prod(pattern.grid)
        bm, bn = rng.randint(1, 40), rng.randint(1, 40)
        expected = brute_states(pattern, n, n, bm, bn, heads)
        assert torch.equal(pattern.tile_states(n, n, bm, bn, heads), expected), (pattern, bm, bn)
        assert torch.equal(pattern.tile_map(n, n, bm, bn, heads).states(), expected), (pattern, bm, bn)
        if not isinstance(pattern, Radial) and rng.random() < 0.5:
            layout = GridLayout(pattern.grid, tuple(rng.randint(1, g) for g in pattern.grid))
            permuted = Permuted(pattern, layout)
            expected = brute_states(permuted, n, n, bm, bn, heads)
            assert torch.equal(permuted.tile_states(n, n, bm, bn, heads), expected), (permuted, bm, bn)


def test_grid_patterns_never_unknown_and_radial_only_on_many_frames():
    rng = random.Random(41)
    for _ in range(30):
        pattern, heads = random_vision(rng)
        n = math.prod(pattern.grid)
        b = rng.randint(1, 32)
        m = torch.arange(-(-n // b))
        lo, hi = m * b, torch.clamp((m + 1) * b, max=n) - 1
        states = pattern.classify(lo.view(-1, 1), hi.view(-1, 1), lo.view(1, -1), hi.view(1, -1),
                                  torch.arange(heads).view(-1, 1, 1))
        frames_spanned = (hi // math.prod(pattern.grid[1:]) - lo // math.prod(pattern.grid[1:])).max()
        if isinstance(pattern, Radial) and frames_spanned >= 8:
            continue
        assert not bool((states == UNKNOWN).any()), pattern


def test_bad_parameters():
    with pytest.raises(ValueError, match=r"window\[1\] must divide grid\[1\] = 6"):
        Swin((8, 6), 4)
    with pytest.raises(ValueError, match=r"grid_size\[0\] must divide grid\[0\] = 10"):
        MaxViTGrid((10, 8), 4)
    with pytest.raises(ValueError, match=r"halo\[1\] must be >= 0"):
        Halo((8, 8), 2, (1, -1))
    with pytest.raises(ValueError, match="num_heads must be even"):
        CSWin((8, 8), 2, 3)
    with pytest.raises(ValueError, match="grid must be 2-D"):
        CSWin((8, 8, 8), 2, 2)
    with pytest.raises(ValueError, match="at least 2 axes"):
        CrissCross(16)
    with pytest.raises(ValueError, match="window must be >= 1"):
        Radial((4, 8), 0)
