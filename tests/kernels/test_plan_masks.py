"""Kernel plans on CPU (no kernel runs): the partial-tile mask each plan encodes (band, per-tile
band or bitmask) equals the pattern's element mask on every partial tile."""

from __future__ import annotations

import pytest
import torch

from tessera.kernels.triton import masks
from tessera.patterns import Causal, Dilated, Power, Strided, Window
from tessera.patterns.blocksparse import BlockSparse


def _decoded_partial_masks(plan: masks.KernelPlan):
    """Per partial tile (row-major head, m, n order): the bool ``[bm, bn]`` mask the kernel
    evaluates (False past the lengths), the in-length pairs, and the tile's head, query rows and
    key positions."""
    states = plan._states
    hh, mm, nn = (states == masks.PARTIAL).nonzero(as_tuple=True)
    rows = torch.arange(plan.block_m)
    cols = torch.arange(plan.block_n)
    q_row = mm[:, None] * plan.block_m + rows
    k_pos = nn[:, None] * plan.block_n + cols
    valid = (q_row < plan.q_len)[:, :, None] & (k_pos < plan.k_len)[:, None, :]
    d = (q_row + plan.k_len - plan.q_len)[:, :, None] - k_pos[:, None, :]
    if plan.mask_mode == masks.MASK_BAND:
        kernel = (d >= plan.band_lo) & (d <= plan.band_hi)
    elif plan.mask_mode == masks.MASK_TILE_BAND:
        band = plan.tile_band.long()[:, :, None, None, :]             # [P, nb, 1, 1, 2]
        kernel = ((d[:, None] >= band[..., 0]) & (d[:, None] <= band[..., 1])).any(1)
    else:
        words = plan.bits[:, :, cols // 32]
        kernel = ((words >> (cols % 32)) & 1) != 0
    return kernel & valid, valid, hh, q_row, k_pos


@pytest.mark.parametrize("pattern, q_len, k_len, block_m, block_n, mode", [
    (Power(256), 4096, 4096, 128, 128, masks.MASK_TILE_BAND),
    (Power(128), 1000, 1500, 64, 64, masks.MASK_TILE_BAND),
    (Window(70, 0) | Power(64), 700, 700, 32, 32, masks.MASK_TILE_BAND),
    (Window(1000, 0) | Power(256), 3000, 3000, 128, 128, masks.MASK_TILE_BAND),
    (Power(64), 2000, 2100, 128, 64, masks.MASK_TILE_BAND),
    (Power(8), 300, 300, 32, 64, masks.MASK_TILE_BAND),
    (Dilated(16, 3), 300, 300, 32, 64, masks.MASK_BITS),
    (Causal(), 300, 250, 64, 32, masks.MASK_BAND),
    # Partial tiles that all follow one band although the pattern is not a band: the causal
    # diagonal tiles of S2 strided and of a causal block-sparse mask (aligned blocks), the
    # cut-off last tiles of a non-causal one; misaligned blocks need bitmasks.
    (Strided(block=64, local_blocks=3, stride=4), 1024, 1024, 64, 32, masks.MASK_BAND),
    (Strided(block=64, local_blocks=3, stride=4), 1000, 1000, 64, 64, masks.MASK_BAND),
    (Strided(block=64, local_blocks=3, stride=4, causal=False), 1000, 1000, 64, 64, masks.MASK_BAND),
    (Strided(block=64, local_blocks=3, stride=4), 1000, 1024, 64, 64, masks.MASK_BITS),
    (Strided(block=96, local_blocks=2, stride=3), 960, 960, 64, 64, masks.MASK_BITS),
    (BlockSparse.random(1024, 0.4, block=64, seed=1) & Causal(), 1024, 1024, 32, 64, masks.MASK_BAND),
])
def test_partial_tile_masks_match_the_pattern(pattern, q_len, k_len, block_m, block_n, mode):
    plan = masks.build_plan(pattern, q_len, k_len, block_m, block_n, 1, torch.device("cpu"))
    assert plan.mask_mode == mode
    kernel, valid, hh, q_row, k_pos = _decoded_partial_masks(plan)
    expected = pattern.mask((q_row + k_len - q_len)[:, :, None], k_pos[:, None, :], hh[:, None, None])
    assert torch.equal(kernel, expected & valid)
    # Every partial tile holds an allowed and (within the lengths) possibly a masked pair.
    assert bool(kernel.flatten(1).any(1).all())


def test_power_plan_statistics_at_32k():
    # The benchmark's Power(local=256) at S = 32768 with 128 x 128 tiles: after the first tiles,
    # each query tile lists the diagonal tile and its two band neighbours plus one tile per power
    # of two from 512 to 16384, all partial but the band's middle tile, and needs no bitmask.
    plan = masks.build_plan(Power(256), 32768, 32768, 128, 128, 1, torch.device("cpu"))
    assert plan.mask_mode == masks.MASK_TILE_BAND and plan.bands_per_tile == 1
    full = plan.rows.full_count[0]
    part = plan.rows.part_count[0]
    assert int(full[-1]) == 1 and int(part[-1]) == 8
    assert int(part.max()) == 8 and int((full + part).max()) == 9
