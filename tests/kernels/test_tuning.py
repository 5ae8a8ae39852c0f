"""Tile-size choice per mask shape (kernels/triton/tuning.py): the measured rules, pinned."""

from __future__ import annotations

import pytest
import torch

from tessera.kernels.triton.backend import forward_tiles
from tessera.kernels.triton.tuning import KernelConfig, MaskShape, kernel_config
from tessera.patterns import Causal, Neighborhood, Power, Strided, Window
from tessera.patterns.blocksparse import BlockSparse
from tessera.patterns.layout import GridLayout, Permuted
from tessera.patterns.vision import CSWin, CrissCross, Swin


def _config(kernel, shape, dim=128, dtype=torch.bfloat16):
    return kernel_config(kernel, dim, dtype, False, shape)


def test_ragged_means_many_partial_tiles_or_per_tile_mask_data():
    assert not MaskShape(0.01, True).ragged             # causal-like
    assert MaskShape(0.12, True).ragged                 # window
    assert MaskShape(0.02, False).ragged                # bitmask partial tiles
    assert not MaskShape(0.0, False).ragged             # block-sparse without partial tiles


@pytest.mark.parametrize("shape, fwd, dq, dkdv", [
    (MaskShape(0.01, True), (128, 128, 8, 3), (64, 64, 4, 2), (64, 128, 8, 2)),
    (MaskShape(0.12, True), (64, 64, 4, 2), (64, 64, 4, 2), (32, 64, 4, 3)),
    (MaskShape(0.0, False), (128, 128, 8, 3), (64, 64, 4, 2), (64, 64, 4, 3)),
    (MaskShape(0.7, False), (64, 64, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3)),
    (MaskShape(0.9, False, neighborhood=True, tiled=True), (64, 64, 4, 1), (64, 64, 4, 2), (64, 64, 4, 3)),
    (MaskShape(0.0, False, tiled=True), (64, 64, 4, 1, 128), (64, 64, 4, 2), (64, 64, 4, 3)),
    (MaskShape(0.9, False, neighborhood=True), (64, 64, 4, 3), (64, 64, 4, 2), (32, 64, 4, 3)),
])
def test_masked_configs_16_bit_head_dim_128(shape, fwd, dq, dkdv):
    assert _config("fwd", shape) == KernelConfig(*fwd)
    assert _config("dq", shape) == KernelConfig(*dq)
    assert _config("dkdv", shape) == KernelConfig(*dkdv)


def test_dense_fp32_and_other_head_dims_keep_their_configs():
    assert _config("fwd", None) == KernelConfig(128, 128, 8, 3)
    assert _config("dkdv", None) == KernelConfig(64, 64, 4, 3)
    ragged = MaskShape(0.5, False)
    assert _config("fwd", ragged, dtype=torch.float32) == KernelConfig(128, 64, 8, 2)
    assert _config("fwd", ragged, dim=64) == KernelConfig(128, 64, 4, 3)


@pytest.mark.parametrize("dim", [32, 64])
def test_neighborhoods_at_small_head_dims_take_the_neighborhood_configs(dim):
    # 64-row tiles stay inside the 64-token layout tiles (aligned coordinates) at every head dim.
    for tiled in (True, False):
        shape = MaskShape(0.9, False, neighborhood=True, tiled=tiled)
        for kernel in ("dq", "dkdv"):
            assert _config(kernel, shape, dim=dim) == _config(kernel, shape)
        assert _config("fwd", shape, dim=dim) == KernelConfig(64, 64, 4, 3)
    full_only = MaskShape(0.0, False, neighborhood=True, tiled=True)
    assert _config("fwd", full_only, dim=dim) == KernelConfig(128, 64, 4, 3)
    # dq and dk/dv of a tiled full-tile plan (mask mode MASK_NONE: band-only, no neighborhood
    # mask, as backend._mask_shape sees a blocked plan) take D = 128's 64 x 64 tiles.
    blocked = MaskShape(0.0, True, tiled=True)
    assert _config("dq", blocked, dim=dim) == KernelConfig(64, 64, 4, 2)
    assert _config("dkdv", blocked, dim=dim) == KernelConfig(64, 64, 4, 3)
    grid = (32, 32)
    na = Permuted(Neighborhood(grid, (7, 7)), GridLayout(grid, (8, 8)))
    assert forward_tiles(na, 1024, 1024, 2, dim) == (64, 64)


def test_forward_tiles_follow_the_pattern_tile_map():
    assert forward_tiles(Causal(), 4096, 4096, 4, 128) == (128, 128)
    assert forward_tiles(Window(1023, 0), 16384, 16384, 4, 128) == (64, 64)
    assert forward_tiles(Power(local=256, causal=True), 8192, 8192, 4, 128) == (64, 64)
    # S2 strided: its only partial tiles are the causal diagonal ones (one band, few): like causal.
    assert forward_tiles(Strided(block=128, local_blocks=8, stride=8, causal=True), 8192, 8192, 4, 128) == (128, 128)
    assert forward_tiles(BlockSparse.random(4096, 0.1, block=128, seed=0), 4096, 4096, 1, 128) == (128, 128)
    grid = (32, 32)
    na = Permuted(Neighborhood(grid, (7, 7)), GridLayout(grid, (8, 8)))
    assert forward_tiles(na, 1024, 1024, 2, 128) == (64, 64)


@pytest.mark.parametrize("pattern, n, heads", [
    (Causal(), 4096, 4), (Window(1023, 0), 4100, 4), (Power(local=256, causal=True), 2048, 2),
    (BlockSparse.random(1024, 0.1, block=128, seed=0), 1024, 1),
    (Permuted(Neighborhood((32, 32), 7), GridLayout((32, 32), (8, 8))), 1024, 2),
    (Neighborhood((30, 30), 7), 900, 2), (Swin((32, 32), 8, shifted=True), 1024, 2),
    (Permuted(CSWin((32, 32), 8, 2), GridLayout((32, 32), (8, 8))), 1024, 2),
    (Permuted(CrissCross((16, 16)), GridLayout((16, 16), (4, 16))), 256, 1),
], ids=repr)
def test_tile_states_give_the_mask_shape_of_the_built_plan(pattern, n, heads):
    """The routes' cost estimate (``_states_mask_shape``, tile states only) sees what the built
    plan's ``_mask_shape`` sees, and so the same forward tiles at every head dim."""
    from tessera.kernels.triton.backend import _mask_shape, _states_mask_shape, estimated_forward_tiles
    assert _states_mask_shape(pattern, n, n, heads) == _mask_shape(pattern, n, n, heads, torch.device("cpu"))
    for dim in (32, 64, 128, 256):
        assert estimated_forward_tiles(pattern, n, n, heads, dim) == forward_tiles(pattern, n, n, heads, dim)


def test_tiled_grid_rules_take_64_square_tiles_at_small_head_dims():
    """Grid patterns that are no neighborhood, in a tiled order, at D <= 64: 64 x 64 tiles in all
    three kernels, whether their 64 x 64 tiles are partial (shifted Swin) or all full (CSWin's
    stripes in 8 x 8 layout tiles); blocked neighborhoods in tiled orders keep their choices."""
    from tessera.kernels.triton.backend import _mask_shape
    layout = GridLayout((32, 32), (8, 8))
    rolled = Swin((32, 32), 8, shifted=True).rolled()[1]
    for rule in (rolled, CSWin((32, 32), 8, 2)):
        shape = _mask_shape(Permuted(rule, layout), 1024, 1024, 2, torch.device("cpu"))
        assert shape.tiled_grid_rule
        for dim in (32, 64):
            assert [(c.block_m, c.block_n) for c in (_config(k, shape, dim=dim) for k in ("fwd", "dq", "dkdv"))] \
                == [(64, 64)] * 3
    blocked = Permuted(Neighborhood((32, 32), 8, stride=8), layout)
    shape = _mask_shape(blocked, 1024, 1024, 2, torch.device("cpu"))
    assert not shape.tiled_grid_rule and _config("fwd", shape, dim=32) == KernelConfig(128, 64, 4, 3)


def test_one_tile_problems_take_few_warps_and_one_stage_at_small_head_dims():
    """Queries and keys within one 64-row tile (a 7 x 7 dilation group of MaxViT grid attention
    in natten's fold) in 16 bits: 64 x 64 tiles, one stage, at D <= 32 one warp forward and two
    backward, at D <= 64 two and four; larger head dims, fp32 and longer sequences keep their
    choices."""
    from tessera.kernels.triton.backend import _mask_shape, _states_mask_shape
    group = Permuted(Neighborhood((7, 7), 7), GridLayout((7, 7), (7, 7)))
    shape = _mask_shape(group, 49, 49, 2, torch.device("cpu"))
    assert shape.one_tile and shape == _states_mask_shape(group, 49, 49, 2)
    for dtype in (torch.bfloat16, torch.float16):
        assert [_config(k, shape, dim=32, dtype=dtype) for k in ("fwd", "dq", "dkdv")] == [
            KernelConfig(64, 64, 1, 1), KernelConfig(64, 64, 2, 1), KernelConfig(64, 64, 2, 1)]
    assert [_config(k, shape, dim=64) for k in ("fwd", "dq", "dkdv")] == [
        KernelConfig(64, 64, 2, 1), KernelConfig(64, 64, 4, 1), KernelConfig(64, 64, 4, 1)]
    assert _config("fwd", shape, dim=128) == KernelConfig(64, 64, 4, 1)
    assert _config("fwd", shape, dim=32, dtype=torch.float32).num_warps > 1
    longer = _mask_shape(Neighborhood((9, 9), 7), 81, 81, 2, torch.device("cpu"))
    assert not longer.one_tile and _config("fwd", longer, dim=32).num_warps == 4


def test_tile_states_miss_bitmasks_that_share_one_band():
    """The one documented difference: S2's causal diagonal tiles, bitmasks in the tile states,
    which the built plan masks by their common band."""
    from tessera.kernels.triton.backend import _mask_shape, _states_mask_shape
    pattern = Strided(block=128, local_blocks=8, stride=8, causal=True)
    built = _mask_shape(pattern, 4096, 4096, 2, torch.device("cpu"))
    estimated = _states_mask_shape(pattern, 4096, 4096, 2)
    assert built.band_only and not estimated.band_only
    assert built.partial_fraction == estimated.partial_fraction


def test_unknown_kernel_name_is_refused():
    with pytest.raises(ValueError, match="kernel must be"):
        kernel_config("dv", 128, torch.bfloat16, False, None)


def test_low_rank_calls_keep_ieee_products_under_tf32x3(monkeypatch):
    from tessera.kernels.triton import backend
    monkeypatch.setattr(backend, "FP32_PRECISION", "tf32x3")
    matmul = torch.backends.cuda.matmul
    allowed = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        assert backend._precision(torch.float32, False) == "tf32x3"
        assert backend._precision(torch.float32, False, low_rank=True) == "ieee"
        assert backend._precision(torch.float32, True, low_rank=True) == "ieee"
        assert backend._precision(torch.bfloat16, False, low_rank=True) == "tf32"
        matmul.allow_tf32 = True
        assert backend._precision(torch.float32, False, low_rank=True) == "tf32"
    finally:
        matmul.allow_tf32 = allowed
