"""Spec strings of the N-D grid patterns: per-axis values, round trips, errors."""

import pytest

from tessera.patterns import CrissCross, Halo, MaxViTBlock, MaxViTGrid, Neighborhood, Radial, Swin, parse, to_spec


@pytest.mark.parametrize("spec, kind", [
    ("neighborhood:grid=64,kernel=7", Neighborhood),
    ("neighborhood:grid=16x16,kernel=5x3,dilation=1x2", Neighborhood),
    ("neighborhood:grid=4x8x8,kernel=3x5x5,causal=true", Neighborhood),
    ("swin:grid=8x8,window=4x4,shifted=true", Swin),
    ("maxvit_block:grid=8x8,block=4x4", MaxViTBlock),
    ("maxvit_grid:grid=8x8,grid_size=2x2", MaxViTGrid),
    ("halo:grid=8x8,block=4x4,halo=1x1", Halo),
    ("crisscross:grid=6x7", CrissCross),
    ("radial:grid=4x8x8", Radial),
])
def test_round_trip_and_same_mask(spec, kind):
    pattern = parse(spec)
    assert type(pattern) is kind
    again = parse(to_spec(pattern))
    n = 1
    for g in pattern.grid:
        n *= g
    assert (again.dense_mask(n, n, 2) == pattern.dense_mask(n, n, 2)).all()


@pytest.mark.parametrize("spec, word", [
    ("neighborhood:grid=8x8,kernel=9x9", "kernel"),
    ("swin:grid=8x8,window=3x", "3x"),
    ("neighborhood:grid=8xx8,kernel=3", "8xx8"),
])
def test_bad_grid_specs(spec, word):
    with pytest.raises(ValueError, match=word):
        parse(spec)
