"""The in-kernel N-D neighborhood mask (``MASK_NEIGHBORHOOD``): plan selection, the mask helpers
against ``Neighborhood.mask`` element by element, and the flash kernels (forward, dq, dk/dv)
against the float64 reference.

Kernel cases run under Triton's CPU interpreter: run normally, this module holds the plan tests
and one test that re-runs the module in fresh Python processes with ``TRITON_INTERPRET=1`` (set
before triton is imported); run with the variable set, it holds the kernel cases. Tiny grids only.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from conftest import assert_passes_interpreted

from tessera.kernels.triton import masks
from tessera.patterns.layout import GridLayout, Permuted, choose_tile_shape
from tessera.patterns.neighborhood import Neighborhood, PaddedNeighborhood
from tessera.patterns.vision import CSWin, CrissCross, Halo, MaxViTGrid, Swin

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
CPU = torch.device("cpu")


def _tiled(pattern: Neighborhood, tile_shape) -> Permuted:
    return Permuted(pattern, GridLayout(pattern.grid, tile_shape))


# (pattern, tile shape of the token order or None for row-major): 1-, 2- and 3-D, dilation, stride,
# causal axes, lengths that are no multiple of the kernel tiles; with 64 x 64 kernel tiles, tile
# coordinates by division (general) and by shifts (power-of-two order tiles holding kernel tiles).
MASK_CASES = [
    (Neighborhood(200, 7), None),
    (Neighborhood(256, 13, dilation=5, stride=4), None),
    (Neighborhood((8, 32), (3, 7), dilation=(2, 3), causal=(False, True)), None),
    (Neighborhood(150, 9, dilation=4, stride=3), None),
    (Neighborhood(130, 6, dilation=2, stride=2, causal=True), None),
    (Neighborhood((9, 13), (3, 5), dilation=(2, 1)), None),
    (Neighborhood((12, 16), (4, 5), stride=(4, 2), causal=(True, False)), (4, 16)),
    (Neighborhood((12, 16), (4, 5), stride=(4, 2), causal=(True, False)), (4, 8)),
    (Neighborhood((10, 14), 4, dilation=(2, 3), stride=(3, 1)), (5, 7)),
    (Neighborhood((4, 6, 10), (3, 3, 5), dilation=(1, 2, 1), causal=(True, False, False)),
     (2, 3, 5)),
    (Neighborhood((5, 6, 7), (2, 3, 4), stride=(2, 3, 2), causal=(False, True, False)), None),
    (Neighborhood((6, 6, 6), (3, 2, 3), dilation=(2, 3, 2), stride=(1, 2, 3),
                  causal=(False, False, True)), (3, 2, 6)),
    (Neighborhood((4, 8, 8), 4, stride=4), (2, 4, 8)),
    # Neither dilation, stride nor causal axes (that code compiled out); shifts on both sides.
    (Neighborhood((16, 16), 5), (8, 8)),
    (Neighborhood((4, 8, 8), 3), (2, 4, 8)),
    (Neighborhood((4, 8), (3, 5)), None),
    # Order tiles of extent 1 along axis 0 (and 0 and 1): the listed-tile penalty leaves those
    # axes out.
    (Neighborhood((4, 8, 8), (3, 3, 5), causal=(True, False, False)), (1, 8, 8)),
    (Neighborhood((3, 4, 64), (3, 3, 9), dilation=(1, 1, 2)), (1, 1, 64)),
]


def _pattern(rule: Neighborhood, tile_shape):
    return rule if tile_shape is None else _tiled(rule, tile_shape)


@pytest.mark.parametrize("rule, tile_shape", MASK_CASES)
def test_plans_choose_the_neighborhood_mask_and_build_no_bitmask(rule, tile_shape):
    pattern = _pattern(rule, tile_shape)
    plan = masks.build_plan(pattern, rule.size, rule.size, 32, 64, 4, CPU)
    assert plan.mask_mode == masks.MASK_NEIGHBORHOOD
    assert plan.bits.numel() == 1 and plan.map_heads == 1
    assert plan.na_params.tolist() == masks.neighborhood_params(pattern, 32, 64)


def test_neighborhood_parameters_pad_to_three_axes():
    pattern = _tiled(Neighborhood((12, 16), (4, 5), dilation=(1, 2), stride=(4, 2),
                                  causal=(True, False)), (4, 8))
    fields = masks.neighborhood_params(pattern, 32, 32)
    by_name = {name: fields[3 * i:3 * i + 3] for i, name in enumerate(masks.NA_FIELD_NAMES)}
    assert by_name == {"grid": [1, 12, 16], "tile": [1, 4, 8], "tiles": [1, 3, 2],
                       "kernel": [1, 4, 5], "dilation": [1, 1, 2], "stride": [1, 4, 2],
                       "causal": [0, 1, 0], "shift": [0, 2, 3],
                       "recip": [1 << 30, -(-(1 << 30) // 3), 1 << 29], "extent": [1, 12, 16]}
    assert fields[-3:] == [1, 1, 1]            # 32-token order tiles hold 32-row, 32-key tiles
    assert masks.neighborhood_params(pattern, 64, 32)[-3:] == [0, 1, 1]
    # One tile (row-major order) is aligned at any length when its extents are powers of two.
    assert masks.neighborhood_params(Neighborhood((4, 32), 3), 64, 64)[-3:] == [1, 1, 0]
    assert masks.neighborhood_params(Neighborhood((4, 30), 3), 64, 64)[-3:] == [0, 0, 0]


@pytest.mark.parametrize("rule, tile_shape", [(CSWin((16, 32), 8, 2), (8, 8)), (CrissCross((4, 8, 8)), (2, 4, 8)),
                                             (Swin((14, 14), 7, shifted=True).rolled()[1], (7, 7))], ids=repr)
def test_grid_order_parameters_of_vision_patterns(rule, tile_shape):
    """A vision pattern in a tiled order gets the layout's addressing fields (a neutral rule: kernel
    = grid, no dilation, stride or causal axis) and keeps its own mask kind; tiles that do not
    divide the grid get none."""
    pattern = Permuted(rule, GridLayout(rule.grid, tile_shape))
    fields = masks.grid_order_params(pattern, 64, 64)
    pad = 3 - rule.ndim
    grid, tile = [1] * pad + list(rule.grid), [1] * pad + list(tile_shape)
    by_name = {name: fields[3 * i:3 * i + 3] for i, name in enumerate(masks.NA_FIELD_NAMES)}
    assert by_name["grid"] == by_name["kernel"] == by_name["extent"] == grid and by_name["tile"] == tile
    assert by_name["tiles"] == [g // t for g, t in zip(grid, tile)]
    assert by_name["dilation"] == by_name["stride"] == [1, 1, 1] and by_name["causal"] == [0, 0, 0]
    assert masks.neighborhood_params(pattern, 64, 64) is None
    plan = masks.build_plan(pattern, rule.size, rule.size, 64, 64, 2, CPU)
    assert plan.mask_mode != masks.MASK_NEIGHBORHOOD and plan.na_values == tuple(fields)
    assert masks.grid_order_params(Permuted(rule, GridLayout(rule.grid, [3] * rule.ndim)), 64, 64) is None
    assert masks.grid_order_params(rule, 64, 64) is None


def test_grid_rows_parameters():
    """A roll's kernel parameters: a plan's grid-order values, then the per-axis shifts in the
    fold's slots (NA_ROLL), and the NA_ROLLED switch; bad rolls are named."""
    from tessera.kernels.triton import na_mask
    rule = Swin((8, 16), 8, shifted=True).rolled()[1]
    plan = masks.build_plan(Permuted(rule, GridLayout(rule.grid, (8, 8))), 128, 128, 64, 64, 1, CPU)
    roll = masks.GridRoll((8, 16), (4, 4))
    values, static = roll.params(plan)
    assert values.tolist() == list(plan.na_values) + [0, 4, 4] and roll.params(plan)[0] is values
    assert static == plan.na_static | na_mask.NA_ROLLED.value == plan.na_static | masks.NA_ROLLED_BIT
    assert na_mask.NA_ROLL.value == len(plan.na_values) == na_mask.NA_FOLD.value
    assert roll == masks.GridRoll((8, 16), (4, 4)) != masks.GridRoll((8, 16), (4, 0))
    with pytest.raises(ValueError, match=r"must lie in \[0, grid\)"):
        masks.GridRoll((8, 16), (8, 0))
    with pytest.raises(ValueError, match="one value per axis"):
        masks.GridRoll((8, 16), (4,))
    with pytest.raises(ValueError, match="needs a plan addressing that grid"):
        masks.GridRoll((16, 8), (4, 4)).params(plan)


def test_compile_time_switches():
    pattern = _tiled(Neighborhood((12, 16), (4, 5), dilation=(1, 2), stride=(4, 2),
                                  causal=(True, False)), (4, 8))
    switches = masks.neighborhood_switches(masks.neighborhood_params(pattern, 64, 32))
    assert switches == 0b10 | 0b11100 | 2 << 5 | 3 << 7 | 2 << 12 | 1 << 24
    plain = masks.neighborhood_params(Neighborhood(200, 7), 64, 64)
    # 1 axis, no shifts (200 tokens), reciprocals
    assert masks.neighborhood_switches(plain) == 1 << 5 | 1 << 24
    # 192 tokens: the 64- and 32-token tiles end at the sequence's end (no bounds compare).
    from tessera.kernels.triton import na_mask
    plan = masks.build_plan(pattern, 192, 192, 64, 32, 1, CPU)
    assert plan.na_static == switches | na_mask.NA_EXACT.value
    assert masks.neighborhood_switches(plain, exact=True) == 1 << 5 | 1 << 22 | 1 << 24
    assert not masks.build_plan(Neighborhood(200, 7), 200, 200, 64, 64, 1, CPU).na_static & 1 << 22
    assert masks.build_plan(None, 64, 64, 32, 32, 1, CPU).na_static == 0
    # Windows clamp at a padded grid's extent only where the plan says so (NA_PADDED).
    padded = _tiled(PaddedNeighborhood((8, 16), (7, 13), (3, 5)), (8, 8))
    assert masks.neighborhood_switches(masks.neighborhood_params(padded, 64, 64)) & masks.NA_PADDED_BIT
    assert masks.NA_PADDED_BIT == na_mask.NA_PADDED.value
    assert not switches & masks.NA_PADDED_BIT
    assert not masks.neighborhood_switches(masks.neighborhood_params(_tiled(
        PaddedNeighborhood((8, 16), (8, 16), (3, 5)), (8, 8)), 64, 64)) & masks.NA_PADDED_BIT


def test_field_order_matches_the_kernel_constants():
    from tessera.kernels.triton import na_mask
    names = [f"NA_{name.upper()}" for name in masks.NA_FIELD_NAMES]
    assert [getattr(na_mask, n).value for n in names] == list(range(len(names)))
    assert na_mask.NA_FIELDS == len(names)
    flags = (na_mask.NA_ALIGNED.value, na_mask.NA_DILATED.value)
    assert flags == (3 * len(names), 3 * len(names) + 2)
    assert na_mask.NA_RECIP_FIELD.value == masks.NA_RECIP_BIT
    assert na_mask.NA_RECIP_SHIFT.value == masks.RECIP_BITS


@pytest.mark.parametrize("counts", [[1, 1, 1], [16, 6, 6], [3, 7, 5], [1, 1000, 1000], [2, 3, 4097]])
def test_tile_reciprocals_divide_exactly_below_their_bound(counts):
    """``(t * r) >> RECIP_BITS == t // c`` for every tile index a kernel may divide, where the
    reciprocals are given; none at all where the product could round up."""
    recips = masks._tile_recips(counts, 64, 64)
    bound = 2 * math.prod(counts) + 64
    if bound * max(counts) >= 1 << masks.RECIP_BITS:
        assert recips == [0, 0, 0]
        return
    t = torch.arange(bound, dtype=torch.int64)
    for count, recip in zip(counts, recips):
        assert torch.equal((t * recip) >> masks.RECIP_BITS, t // count), count
    # The bound is needed: past 2 ** RECIP_BITS / c some quotient comes out one too large.
    c = 3
    r = -(-(1 << masks.RECIP_BITS) // c)
    t = torch.arange((1 << masks.RECIP_BITS) // c - 4096, (1 << masks.RECIP_BITS) // c * 2, 997,
                     dtype=torch.int64)
    assert not torch.equal((t * r) >> masks.RECIP_BITS, t // c)


def test_large_tile_grids_keep_the_integer_division():
    # 1024 x 1024 tiles of 1 x 2 tokens: the dividend bound times 512 passes 2 ** 30.
    params = masks.neighborhood_params(_tiled(Neighborhood((1024, 1024), 3), (1, 2)), 64, 64)
    assert params[3 * 2:3 * 3] == [1, 1024, 512]
    assert params[3 * 8:3 * 9] == [0, 0, 0]
    assert not masks.neighborhood_switches(params) & masks.NA_RECIP_BIT


@pytest.mark.parametrize("grid, kernel, dilation", [((128, 128), 17, 2),
                                                     ((16, 48, 48), (5, 13, 13), 1)])
def test_video_and_image_sizes_need_no_bitmask(grid, kernel, dilation):
    rule = Neighborhood(grid, kernel, dilation=dilation)
    pattern = _tiled(rule, choose_tile_shape(grid, rule.kernel, 128, rule.dilation))
    for block_m, block_n in ((128, 128), (128, 64), (64, 64)):
        plan = masks.build_plan(pattern, rule.size, rule.size, block_m, block_n, 8, CPU)
        assert plan.mask_mode == masks.MASK_NEIGHBORHOOD and plan.bits.numel() == 1
        assert plan.na_params.tolist()[-3:-1] == [1, 1]        # tile coordinates by shifts


def test_other_orders_and_patterns_keep_their_masks():
    rule = Neighborhood((10, 12), 3)
    # Tiles clipped at the grid's edges: no analytic tile index, bitmasks.
    clipped = masks.build_plan(_tiled(rule, (4, 5)), 120, 120, 32, 32, 1, CPU)
    assert clipped.mask_mode == masks.MASK_BITS
    # A neighborhood inside a composition is another rule.
    union = masks.build_plan(rule | Neighborhood((10, 12), 1), 120, 120, 32, 32, 1, CPU)
    assert union.mask_mode == masks.MASK_BITS


if not IN_INTERPRETER:

    def test_interpreted_cases_in_a_fresh_process():
        # About 1,600 s of cases on one core of the 2-core CI machine (2026-12-03), shared by two
        # workers.
        assert_passes_interpreted(__file__, "-k", "interpreted", timeout=1500)

else:
    import triton
    import triton.language as tl

    from flash_cases import check_against_reference, grid_order_outputs, make_inputs
    from tessera.kernels.triton import tuning
    from tessera.kernels.triton.backend import kernels_interpreted
    from tessera.kernels.triton.na_mask import (na_allowed, na_codes, na_codes_at, na_coords,
                                                na_key_windows, na_penalty, na_query_windows)

    pytestmark = [pytest.mark.skipif(not kernels_interpreted(),
                                     reason="triton was imported before TRITON_INTERPRET=1 was set"),
                  pytest.mark.usefixtures("nan_poison")]


    @triton.jit
    def _mask_kernel(NA, OUT, PENALTY_OUT, LISTED_OUT, S, BLOCK_Q: tl.constexpr,
                     BLOCK_K: tl.constexpr, BY_KEYS: tl.constexpr, NA_STATIC: tl.constexpr):
        """``OUT[q, k]`` over ``BLOCK_Q x BLOCK_K`` tiles of ``S x S``: query windows against key
        codes (as the forward and dq), or key windows against query codes (dk/dv) with BY_KEYS;
        ``PENALTY_OUT[q, k]``: whether the additive penalty (``na_penalty``) is 0 there;
        ``LISTED_OUT[q, k]``: the same for the listed-tile penalty (``LISTED=True``). ``OUT``
        takes the codes from ``na_codes_at`` (the tile's first-token coordinates), the
        penalties from ``na_codes``."""
        q_first = tl.program_id(0) * BLOCK_Q
        k_first = tl.program_id(1) * BLOCK_K
        offs_q = tl.arange(0, BLOCK_Q)
        offs_k = tl.arange(0, BLOCK_K)
        rows = q_first + offs_q
        cols = k_first + offs_k
        if BY_KEYS:
            windows = na_key_windows(offs_k[None, :], k_first, NA, NA_STATIC)
            codes = na_codes(offs_q[:, None], q_first, NA, 0, NA_STATIC)
            origin = na_coords(q_first * 0, q_first, NA, 0, NA_STATIC)
            codes_at = na_codes_at(origin, offs_q[:, None], q_first, NA, 0, NA_STATIC)
        else:
            windows = na_query_windows(offs_q[:, None], q_first, NA, NA_STATIC)
            codes = na_codes(offs_k[None, :], k_first, NA, 1, NA_STATIC)
            origin = na_coords(k_first * 0, k_first, NA, 1, NA_STATIC)
            codes_at = na_codes_at(origin, offs_k[None, :], k_first, NA, 1, NA_STATIC)
        allowed = na_allowed(windows, codes_at, NA_STATIC)
        penalty_free = na_penalty(windows, codes, NA_STATIC) == 0.0
        listed_free = na_penalty(windows, codes, NA_STATIC, True) == 0.0
        inside = (rows[:, None] < S) & (cols[None, :] < S)
        tl.store(OUT + rows[:, None] * S + cols[None, :], allowed.to(tl.int8), mask=inside)
        tl.store(PENALTY_OUT + rows[:, None] * S + cols[None, :], penalty_free.to(tl.int8), mask=inside)
        tl.store(LISTED_OUT + rows[:, None] * S + cols[None, :], listed_free.to(tl.int8), mask=inside)

    def _mask_outputs(pattern, size, block_q, block_k, by_keys, clear=0):
        """``(params, allowed, penalty_free, listed_free, expected)`` of ``_mask_kernel`` (bool
        ``[size, size]``) and the pattern's own mask; ``clear``: switch bits to turn off."""
        params = masks.neighborhood_params(pattern, block_q, block_k)
        out, penalty_free, listed_free = (torch.empty(size, size, dtype=torch.int8) for _ in range(3))
        grid = (triton.cdiv(size, block_q), triton.cdiv(size, block_k))
        _mask_kernel[grid](torch.tensor(params, dtype=torch.int32), out, penalty_free, listed_free,
                           size, block_q, block_k, by_keys,
                           masks.neighborhood_switches(params) & ~clear)
        pos = torch.arange(size)
        expected = pattern.mask(pos[:, None], pos[None, :], torch.zeros(1, 1, dtype=torch.long))
        return params, out.bool(), penalty_free.bool(), listed_free.bool(), expected

    def _check_mask_helpers(pattern, size, block_q, block_k, by_keys, clear=0):
        params, out, penalty_free, listed_free, expected = _mask_outputs(pattern, size, block_q,
                                                                         block_k, by_keys, clear)
        assert torch.equal(out, expected)
        assert torch.equal(penalty_free, expected)
        # The listed-tile penalty: exact on every tile pair with an allowed pair.
        for i in range(0, size, block_q):
            for j in range(0, size, block_k):
                tile = expected[i:i + block_q, j:j + block_k]
                if tile.any():
                    assert torch.equal(listed_free[i:i + block_q, j:j + block_k], tile), (i, j)
        return params

    @pytest.mark.parametrize("by_keys", [False, True])
    def test_interpreted_listed_penalty_leaves_out_axes_of_extent_one(by_keys):
        # 1 x 8 x 8 order tiles: one axis-0 slice per 64-token tile. Slice 0 sees only slice 0
        # (causal axis 0), so the tile pair (slice 0, slice 3) is not listed; without the axis-0
        # term the listed-tile penalty lets its in-window (axis 1, 2) pairs through.
        rule = Neighborhood((4, 8, 8), (3, 3, 5), causal=(True, False, False))
        _, _, penalty_free, listed_free, expected = _mask_outputs(_tiled(rule, (1, 8, 8)), 256, 64,
                                                                  64, by_keys)
        assert not expected[:64, 192:].any() and not penalty_free[:64, 192:].any()
        assert listed_free[:64, 192:].any()
        # Tiles of 2 x 4 x 8 hold two axis-0 slices: axis 0 stays in.
        _, _, _, listed_free, expected = _mask_outputs(_tiled(rule, (2, 4, 8)), 256, 64, 64, by_keys)
        assert torch.equal(listed_free, expected)

    @pytest.mark.parametrize("by_keys", [False, True])
    @pytest.mark.parametrize("rule, tile_shape", MASK_CASES)
    def test_interpreted_mask_helpers_match_the_pattern(rule, tile_shape, by_keys):
        _check_mask_helpers(_pattern(rule, tile_shape), rule.size, 64, 64, by_keys)

    @pytest.mark.parametrize("rule, tile_shape", [MASK_CASES[9], MASK_CASES[12], MASK_CASES[8]])
    def test_interpreted_mask_helpers_with_integer_division(rule, tile_shape):
        """Tile coordinates by integer division, as for tile grids too large for the reciprocals
        (``NA_RECIP_FIELD`` off)."""
        pattern = _pattern(rule, tile_shape)
        assert masks.neighborhood_switches(masks.neighborhood_params(pattern, 64, 64)) & masks.NA_RECIP_BIT
        _check_mask_helpers(pattern, rule.size, 64, 64, False, clear=masks.NA_RECIP_BIT)

    @pytest.mark.parametrize("by_keys", [False, True])
    def test_interpreted_mask_helpers_with_one_aligned_side(by_keys):
        # 64-token order tiles: 128-row query tiles span two of them (coordinates by division),
        # 64-key tiles lie inside one (shifts); and the mirror image.
        rule = Neighborhood((16, 16), (5, 7), stride=(1, 2), causal=(False, True))
        pattern = _tiled(rule, (8, 8))
        assert _check_mask_helpers(pattern, 256, 128, 64, by_keys)[-3:-1] == [0, 1]
        assert _check_mask_helpers(pattern, 256, 64, 128, by_keys)[-3:-1] == [1, 0]


    def _assert_neighborhood_plans(pattern, size, heads):
        """Every kernel's plan (its interpreter tile sizes) masks with MASK_NEIGHBORHOOD."""
        for name in ("fwd", "dq", "dkdv"):
            config = tuning.kernel_config(name, 32, torch.float32, True)
            plan = masks.get_plan(pattern, size, size, config.block_m, config.block_n, heads, CPU)
            assert plan.mask_mode == masks.MASK_NEIGHBORHOOD, name

    # (pattern, tile shape, batch, heads, kv heads, dtype)
    FLASH_CASES = [
        (Neighborhood((9, 13), (3, 5), dilation=(2, 1)), None, 2, 2, 1, torch.float32),
        (Neighborhood((8, 16), (5, 3), dilation=(1, 2), stride=(2, 1), causal=(False, True)),
         (4, 16), 1, 2, 2, torch.float16),
        (Neighborhood((4, 6, 10), (3, 3, 5), dilation=(1, 2, 1), causal=(True, False, False)),
         (2, 3, 5), 1, 2, 1, torch.float16),
        (Neighborhood(150, 21, dilation=3, stride=4, causal=True), None, 1, 2, 2, torch.float32),
        (Neighborhood((5, 6, 7), (2, 3, 4), stride=(2, 3, 2), causal=(False, True, False)), None,
         1, 2, 1, torch.float32),
        # One power-of-two tile shorter than the kernel tiles: shifts, rows and keys past the end.
        (Neighborhood((4, 8), (3, 5)), None, 1, 2, 1, torch.float32),
        # Order tiles of extent 1 along axis 0: the kernels leave that axis out of the penalty.
        (Neighborhood((4, 8, 8), (3, 3, 5), causal=(True, False, False)), (1, 8, 8), 1, 2, 1,
         torch.float32),
    ]

    @pytest.mark.parametrize("rule, tile_shape, batch, heads, kv_heads, dtype", FLASH_CASES)
    def test_interpreted_flash_kernels_against_reference(rule, tile_shape, batch, heads, kv_heads,
                                                         dtype):
        pattern = _pattern(rule, tile_shape)
        _assert_neighborhood_plans(pattern, rule.size, heads)
        q, k, v = make_inputs(batch, rule.size, rule.size, heads, kv_heads, 32, dtype)
        errors = check_against_reference(q, k, v, pattern)
        assert {"o", "lse", "dq", "dk", "dv"} <= set(errors)

    @pytest.mark.parametrize("rule, tile_shape, batch, heads, kv_heads, dtype", FLASH_CASES)
    def test_interpreted_flash_kernels_with_bulk_copies_against_reference(rule, tile_shape, batch, heads,
                                                                          kv_heads, dtype, monkeypatch):
        # Tensor descriptors on (Hopper's path; the interpreter emulates them), against the reference.
        from tessera.kernels.triton import flash_fwd
        monkeypatch.setattr(flash_fwd, "tma_ok", lambda a, b, block: True)
        pattern = _pattern(rule, tile_shape)
        q, k, v = make_inputs(batch, rule.size, rule.size, heads, kv_heads, 32, dtype)
        errors = check_against_reference(q, k, v, pattern)
        assert {"o", "lse", "dq", "dk", "dv"} <= set(errors)

    def test_interpreted_na2d_tiled_layout_through_the_public_api():
        import tessera
        q, k, v = (torch.randn(1, 8, 8, 2, 32) for _ in range(3))
        o = tessera.natten.na2d(q, k, v, (3, 5), dilation=(2, 1), layout=(4, 8), backend="triton")
        ref = tessera.natten.na2d(*(t.double() for t in (q, k, v)), (3, 5), dilation=(2, 1),
                                  layout="row-major", backend="reference")
        assert (o.double() - ref).norm() / ref.norm() < 1e-5
        pattern = _tiled(Neighborhood((8, 8), (3, 5), dilation=(2, 1)), (4, 8))
        _assert_neighborhood_plans(pattern, 64, 2)

    GRID_ORDER_CASES = [
        # Power-of-two tiles (coordinates by shifts), GQA, batch 2.
        (Neighborhood((8, 16), (3, 5), dilation=(1, 2)), (4, 8), 2, 4, 2, torch.float32),
        # Tiles of 15 tokens (integer division), a causal axis, rows past the last tile.
        (Neighborhood((6, 10), (3, 3), causal=(True, False)), (3, 5), 1, 2, 1, torch.float16),
        # Blocked attention: tiles that are all full (no partial-tile mask, addressing only).
        (Neighborhood((4, 8, 8), 4, stride=4), (2, 4, 8), 1, 2, 2, torch.float32),
        # Blocked, each block one layout tile (natten's "auto" layout for blocked attention).
        (Neighborhood((4, 8, 16), (2, 4, 8), stride=(2, 4, 8)), (2, 4, 8), 2, 2, 1, torch.float16),
        (Neighborhood((4, 6, 10), (3, 3, 5), dilation=(1, 2, 1)), (2, 3, 5), 1, 2, 1, torch.float16),
    ]

    @pytest.mark.parametrize("bulk_copies", [False, True])
    @pytest.mark.parametrize("rule, tile_shape, batch, heads, kv_heads, dtype", GRID_ORDER_CASES)
    def test_interpreted_grid_order_addressing_equals_reordering(rule, tile_shape, batch, heads,
                                                               kv_heads, dtype, bulk_copies,
                                                               monkeypatch):
        # bulk_copies: the kernels read row tiles through tensor descriptors (Hopper's path; the
        # interpreter emulates them): grid boxes in grid order, row blocks when reordered.
        from tessera.kernels.triton import flash_fwd
        if bulk_copies:
            monkeypatch.setattr(flash_fwd, "tma_ok", lambda a, b, block: True)
            grid_boxes = [flash_fwd.grid_box(masks.get_plan(_tiled(rule, tile_shape), rule.size,
                                                            rule.size, bm, bn, heads, CPU), bn)
                          for bm, bn in ((64, 32), (32, 64))]
            if all(box is None for box in grid_boxes):
                pytest.skip("no kernel tile of this layout is a grid box")
        pattern = _tiled(rule, tile_shape)
        q, k, v = make_inputs(batch, rule.size, rule.size, heads, kv_heads, 32, dtype)
        do = torch.randn_like(q)
        in_kernel = grid_order_outputs(q, k, v, do, pattern, True)
        reordered = grid_order_outputs(q, k, v, do, pattern, False)
        for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), in_kernel, reordered):
            assert torch.equal(a, b), name

    def test_interpreted_bulk_stores_of_o_and_gradients(monkeypatch):
        # 64-token layout tiles: every kernel tile is a grid box, so o, dq, dk and dv are written
        # by bulk stores (each store's view is requested and granted), and every output equals
        # the pointer-addressed run's (the same pattern reordered, not in grid order).
        from tessera.kernels.triton import flash_bwd, flash_fwd
        monkeypatch.setattr(flash_fwd, "tma_ok", lambda a, b, block: True)
        granted = []
        describe_one, describe_two = flash_fwd.row_operand, flash_bwd.row_operands

        def one(*args, **kwargs):
            result = describe_one(*args, **kwargs)
            granted.append(("one", result[-1]))
            return result

        def two(a, *args, **kwargs):
            result = describe_two(a, *args, **kwargs)
            granted.append(("two", result[-1]))
            return result
        monkeypatch.setattr(flash_fwd, "row_operand", one)
        monkeypatch.setattr(flash_bwd, "row_operand", one)
        monkeypatch.setattr(flash_bwd, "row_operands", two)
        pattern = _tiled(Neighborhood((8, 16), (3, 5)), (8, 8))
        q, k, v = make_inputs(2, 128, 128, 4, 2, 32, torch.float32)
        do = torch.randn_like(q)
        in_kernel = grid_order_outputs(q, k, v, do, pattern, True)
        # o; then per backward kernel, in the order they run: q, do reads and dk, dv stores; k, v
        # reads and the dq store.
        assert sorted(granted) == sorted([("one", True), ("two", True), ("two", True), ("two", True),
                                          ("one", True)]), granted
        reordered = grid_order_outputs(q, k, v, do, pattern, False)
        for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), in_kernel, reordered):
            assert torch.equal(a, b), name

    def test_interpreted_grid_order_addressing_with_bitmasks(monkeypatch):
        # The bitmask mask kind (masks.ANALYTIC_NEIGHBORHOOD off) still needs the neighborhood
        # parameters for the grid-order addressing (without them the kernels read past na_params).
        monkeypatch.setattr(masks, "ANALYTIC_NEIGHBORHOOD", False)
        masks.clear_plan_cache()
        try:
            pattern = _tiled(Neighborhood((6, 10), (3, 3), causal=(True, False)), (3, 5))
            assert masks.get_plan(pattern, 60, 60, 64, 64, 2, CPU).mask_mode == masks.MASK_BITS
            q, k, v = make_inputs(1, 60, 60, 2, 1, 32, torch.float16)
            do = torch.randn_like(q)
            in_kernel = grid_order_outputs(q, k, v, do, pattern, True)
            reordered = grid_order_outputs(q, k, v, do, pattern, False)
            for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), in_kernel, reordered):
                assert torch.equal(a, b), name
        finally:
            masks.clear_plan_cache()

    @pytest.mark.parametrize("na_dim, grid, kernel, dilation, stride, causal, heads", [
        (2, (16, 32), (3, 5), (2, 2), (1, 2), (False, True), 4),
        (2, (16, 32), (3, 5), (2, 4), 1, False, 2),
        (3, (4, 8, 16), (3, 3, 5), (1, 2, 2), 1, (True, False, False), 2),
        (1, (256,), 7, 4, 2, True, 4),
    ])
    @pytest.mark.parametrize("bulk_copies", [False, True])
    def test_interpreted_dilation_fold_against_float64(na_dim, grid, kernel, dilation, stride, causal,
                                                       heads, bulk_copies, monkeypatch):
        # Dilation groups addressed in-kernel (natten's fold) on the whole grid in row-major order:
        # o, lse and every gradient against the float64 definition (B = 2, GQA in 2-D and 1-D).
        # bulk_copies: the tiles the kernels read by bulk copies come through fold descriptors
        # (Hopper's path; the interpreter emulates them), which every case here has a view for.
        import tessera.natten as natten
        from tessera.kernels.triton import flash_fwd
        views = []
        if bulk_copies:
            monkeypatch.setattr(flash_fwd, "tma_ok", lambda a, b, block: True)
            describe = flash_fwd.fold_descriptor
            monkeypatch.setattr(flash_fwd, "fold_descriptor",
                                lambda *a: views.append(describe(*a)) or views[-1])
        monkeypatch.setattr(natten, "_resolve_layout",
                            lambda layout, grid, kernel, dilation, stride, causal, device, pad=False:
                            natten._auto_layout(grid, kernel, dilation, stride, causal))
        natten._group_plan.cache_clear()
        folded = []
        run = natten._folded_run
        monkeypatch.setattr(natten, "_folded_run", lambda *a, **kw: folded.append(run(*a, **kw)) or folded[-1])
        try:
            fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[na_dim]
            exact = [torch.randn(2, *grid, h, 32, dtype=torch.float64) for h in (heads, 2, 2)]
            leaves = [t.float().requires_grad_() for t in exact]
            o, lse = fn(*leaves, kernel, dilation, stride, causal, backend="triton", return_lse=True)
            assert folded and folded[-1] is not None, "the folded path did not run"
            ref_leaves = [t.clone().requires_grad_() for t in exact]
            ref, ref_lse = fn(*ref_leaves, kernel, dilation, stride, causal, layout="row-major",
                              backend="reference", return_lse=True)
            do = torch.randn(ref.shape, dtype=ref.dtype)  # row-major, as bulk copies need
            dlse = torch.randn(ref_lse.shape, dtype=ref_lse.dtype)   # lse in the loss too
            grads = torch.autograd.grad((o, lse), leaves, (do.float(), dlse.float()))
            ref_grads = torch.autograd.grad((ref, ref_lse), ref_leaves, (do, dlse))
            for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *grads), (ref, ref_lse, *ref_grads)):
                assert (got.double() - want).norm() / want.norm() < 1e-5, name
            # Requested in this order (one stream: dq's kernel runs first, each kernel builds its
            # views where it runs): k, v, o (forward); k, v, dq (dq kernel); q, do, dk, dv (dk/dv
            # kernel). The reads' views are never refused here; the stores' (o, dq, dk, dv) may
            # be, when a query or key tile's box is not one group's box.
            reads = [views[i] for i in (0, 1, 3, 4, 6, 7)] if len(views) == 10 else [None]
            assert not bulk_copies or None not in reads, [v is None for v in views]
        finally:
            natten._group_plan.cache_clear()

    @pytest.mark.parametrize("dilation", [1, 2])
    def test_interpreted_natten_repeat_calls_through_the_prepared_run(dilation, monkeypatch):
        # fp16 grid-order and folded calls: the second call of one signature takes the
        # backend's prepared run (no call building; natten's kept grid call: no call plan, one
        # autograd node) and matches float64 like the first.
        import tessera
        import tessera.natten as natten
        monkeypatch.setattr(natten, "_PREPARED", {})
        monkeypatch.setattr(natten, "GRID_ORDER_IN_KERNEL", True)
        monkeypatch.setattr(natten, "_resolve_layout",
                            lambda layout, grid, kernel, dilation, stride, causal, device, pad=False:
                            natten._auto_layout(grid, kernel, dilation, stride, causal))
        natten._group_plan.cache_clear()
        natten._cached_call_plan.cache_clear()
        built, planned = [], []
        monkeypatch.setattr(natten, "_build_call", lambda *a, **kw: built.append(1) or tessera.api._build_call(*a, **kw))
        call_plan = natten._call_plan
        monkeypatch.setattr(natten, "_call_plan", lambda *a: planned.append(a[5]) or call_plan(*a))
        try:
            for attempt in range(2):
                exact = [torch.randn(1, 16, 32, h, 32, dtype=torch.float64) for h in (2, 1, 1)]
                leaves = [t.half().requires_grad_() for t in exact]
                o = natten.na2d(*leaves, (3, 5), dilation, backend="triton")
                assert len(built) == 1, "a repeat call built its call again"
                assert planned.count("auto") == 1, "a repeat call planned again"
                nodes = [type(fn).__name__ for fn, _ in o.grad_fn.next_functions if fn is not None]
                assert attempt == 0 or nodes == ["AccumulateGrad"] * 3, nodes
                ref_leaves = [t.clone().requires_grad_() for t in exact]
                ref = natten.na2d(*ref_leaves, (3, 5), dilation, layout="row-major", backend="reference")
                do = torch.randn(ref.shape, dtype=ref.dtype)
                grads = torch.autograd.grad(o, leaves, do.half())
                ref_grads = torch.autograd.grad(ref, ref_leaves, do)
                for name, got, want in zip(("o", "dq", "dk", "dv"), (o, *grads), (ref, *ref_grads)):
                    assert (got.double() - want).norm() / want.norm() < 5e-3, (attempt, name)
        finally:
            natten._group_plan.cache_clear()
            natten._cached_call_plan.cache_clear()

    # Padded grids (PaddedNeighborhood in tiles dividing the padded grid).
    PADDED_MASK_CASES = [
        (PaddedNeighborhood((8, 16), (7, 13), (3, 5)), (8, 8)),
        (PaddedNeighborhood((16, 16), (13, 11), (5, 7), stride=(1, 2), causal=(False, True)), (8, 8)),
        (PaddedNeighborhood((4, 8, 8), (3, 7, 6), (3, 3, 5), stride=(1, 2, 1), causal=(True, False, False)),
         (1, 8, 8)),
    ]

    @pytest.mark.parametrize("by_keys", [False, True])
    @pytest.mark.parametrize("rule, tile_shape", PADDED_MASK_CASES)
    def test_interpreted_mask_helpers_on_padded_grids(rule, tile_shape, by_keys):
        # Query windows (forward, dq) are the pattern's on every pair. Key windows (dk/dv) invert
        # the extent's windows, so they agree on the pairs of grid (non-padding) tokens: padding
        # queries carry zero output gradients, padding keys' gradients are dropped.
        pattern = _tiled(rule, tile_shape)
        params, out, penalty_free, _, expected = _mask_outputs(pattern, rule.size, 64, 64, by_keys)
        assert params[27:30] == [1] * (3 - rule.ndim) + list(rule.extent)
        if by_keys:
            coords = torch.stack(torch.unravel_index(pattern.layout.positions(), rule.grid))
            real = (coords < torch.tensor(rule.extent)[:, None]).all(0)
            out, penalty_free, expected = (t[real][:, real] for t in (out, penalty_free, expected))
        assert torch.equal(out, expected)
        assert torch.equal(penalty_free, expected)

    @pytest.mark.parametrize("tile_shape", [None, (4, 8)])
    def test_interpreted_natten_route_of_attention_against_float64(tile_shape, monkeypatch):
        # tessera.attention with a Neighborhood pattern on the Triton kernels goes through natten:
        # row-major (CPU's "auto"), or a layout whose tiles pad 6 x 10 to 8 x 16. o, lse and the
        # gradients against float64 (B = 2, GQA).
        import tessera
        import tessera.natten as natten
        if tile_shape is not None:
            monkeypatch.setattr(natten, "_resolve_layout",
                                lambda layout, grid, kernel, dilation, stride, causal, device, pad=False:
                                natten._grid_layout(grid, tile_shape))
            natten._cached_call_plan.cache_clear()
        runs = []
        padded_run = natten._padded_run
        monkeypatch.setattr(natten, "_padded_run", lambda *a: runs.append(1) or padded_run(*a))
        try:
            pattern = Neighborhood((6, 10), (3, 5), stride=(1, 2), causal=(True, False))
            exact = [torch.randn(2, 60, h, 32, dtype=torch.float64) for h in (4, 2, 2)]
            leaves = [t.float().requires_grad_() for t in exact]
            o, lse = tessera.attention(*leaves, pattern=pattern, backend="triton", return_lse=True)
            assert len(runs) == (tile_shape is not None)
            ref_leaves = [t.clone().requires_grad_() for t in exact]
            ref, ref_lse = tessera.attention(*ref_leaves, pattern=pattern, backend="reference", return_lse=True)
            do = torch.randn(ref.shape, dtype=ref.dtype)
            grads = torch.autograd.grad(o, leaves, do.float())
            ref_grads = torch.autograd.grad(ref, ref_leaves, do)
            for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *grads), (ref, ref_lse, *ref_grads)):
                assert (got.double() - want).norm() / want.norm() < 1e-5, name
        finally:
            natten._cached_call_plan.cache_clear()

    @pytest.mark.parametrize("pattern, tile_shape", [
        (Swin((8, 16), (4, 4)), None), (Swin((8, 16), (4, 4)), (4, 8)), (MaxViTGrid((8, 16), (4, 4)), None),
        (MaxViTGrid((14, 14), 7), None), (MaxViTGrid((2, 6, 6), (1, 3, 3)), None)], ids=repr)
    def test_interpreted_vision_neighborhoods_through_natten_against_float64(pattern, tile_shape, monkeypatch):
        # Unshifted Swin windows (blocked; row-major, and 4 x 8 tiles) and MaxViT grid attention
        # (dilation groups of one kernel tile each, 7 x 7 and 3-D ones too, addressed in place by
        # natten's fold) through tessera.attention on the Triton kernels: o, lse and the
        # gradients against float64 (B = 2, GQA).
        import tessera
        import tessera.natten as natten
        if tile_shape is not None:
            monkeypatch.setattr(natten, "_resolve_layout",
                                lambda layout, grid, kernel, dilation, stride, causal, device, pad=False:
                                natten._grid_layout(grid, tile_shape))
            natten._cached_call_plan.cache_clear()
        routed, folded = [], []
        original = natten.neighborhood_attention
        monkeypatch.setattr(natten, "neighborhood_attention", lambda *a, **kw: routed.append(1) or original(*a, **kw))
        run = natten._folded_run
        monkeypatch.setattr(natten, "_folded_run", lambda *a, **kw: folded.append(run(*a, **kw)) or folded[-1])
        try:
            exact = [torch.randn(2, pattern.size, h, 32, dtype=torch.float64) for h in (4, 2, 2)]
            leaves = [t.float().requires_grad_() for t in exact]
            o, lse = tessera.attention(*leaves, pattern=pattern, backend="triton", return_lse=True)
            assert routed
            if type(pattern) is MaxViTGrid:
                assert folded and folded[-1] is not None, "the dilation fold did not run"
            ref_leaves = [t.clone().requires_grad_() for t in exact]
            ref, ref_lse = tessera.attention(*ref_leaves, pattern=pattern, backend="reference", return_lse=True)
            do = torch.randn(ref.shape, dtype=ref.dtype)
            grads = torch.autograd.grad(o, leaves, do.float())
            ref_grads = torch.autograd.grad(ref, ref_leaves, do)
            for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *grads), (ref, ref_lse, *ref_grads)):
                assert (got.double() - want).norm() / want.norm() < 1e-5, name
        finally:
            natten._cached_call_plan.cache_clear()

    @pytest.mark.parametrize("pattern, heads, addressing", [
        (CSWin((8, 32), 8, 2), 2, "fields"), (CrissCross((4, 8, 8)), 2, "fields"), (Halo((8, 32), 8, 2), 4, "fields"),
        (Swin((8, 32), 8, shifted=True), 2, "roll"), (Swin((14, 14), 7, shifted=True), 2, "map"),
        (Swin((4, 8, 8), (2, 4, 8), shifted=True), 2, "roll"), (CrissCross((4, 8, 8)), 2, "forced map"),
        (Swin((8, 32), 8, shifted=True), 2, "gathers"), (CSWin((8, 32), 8, 2), 2, "gathers")], ids=repr)
    def test_interpreted_tiled_grid_patterns_against_float64(pattern, heads, addressing, monkeypatch):
        # Grid patterns that are no neighborhood through tessera.attention on the Triton kernels
        # in their cheapest tiled order (taken whatever it gains; shifted Swin windows on the
        # rolled grid, 7 x 7 windows in 49-token tiles; bitmask partial tiles in it), addressed
        # by the kernels in the caller's order (the layout's fields, Swin's roll, a row map) or
        # gathered: o, lse and the gradients against float64 (B = 2, GQA).
        from tessera.kernels.triton.masks import GridRoll, GridRows
        import tessera
        import tessera.tiled_grid_patterns as tiled_grid_patterns
        monkeypatch.setattr(tiled_grid_patterns, "MIN_GAIN", 1e-9)
        monkeypatch.setattr(tiled_grid_patterns, "_LAYOUTS", {})
        monkeypatch.setattr(tiled_grid_patterns, "IN_KERNEL", addressing != "gathers")
        monkeypatch.setattr(tiled_grid_patterns, "ROW_MAP", "1" if addressing == "forced map" else "auto")
        routed = []
        original = tiled_grid_patterns.tiled_grid_call
        in_kernel_calls = []
        in_kernel_call = tiled_grid_patterns._in_kernel_call

        def spy_in_kernel(call, form):
            out = in_kernel_call(call, form)
            in_kernel_calls.append(out)
            return out
        monkeypatch.setattr(tiled_grid_patterns, "_in_kernel_call", spy_in_kernel)

        def spy(call, backend, run):
            out = original(call, backend, run)
            routed.append(out is not None)
            return out
        monkeypatch.setattr(tessera.api, "tiled_grid_call", spy)
        n = pattern.size
        exact = [torch.randn(2, n, h, 32, dtype=torch.float64) for h in (heads, heads // 2, heads // 2)]
        leaves = [t.float().requires_grad_() for t in exact]
        o, lse = tessera.attention(*leaves, pattern=pattern, backend="triton", return_lse=True)
        assert routed == [True]
        if addressing == "gathers":
            assert in_kernel_calls == []
        else:
            assert len(in_kernel_calls) == 1 and in_kernel_calls[0] is not None
            rows = in_kernel_calls[0].grid_rows
            kind = {type(None): "fields", GridRoll: "roll", GridRows: "map"}[type(rows)]
            assert kind == addressing.replace("forced ", "")
            if kind == "roll":
                shift = pattern.rolled()[0].shift
                assert rows.shift[-len(shift):] == shift
        ref_leaves = [t.clone().requires_grad_() for t in exact]
        ref, ref_lse = tessera.attention(*ref_leaves, pattern=pattern, backend="reference", return_lse=True)
        do = torch.randn(ref.shape, dtype=ref.dtype)
        grads = torch.autograd.grad(o, leaves, do.float())
        ref_grads = torch.autograd.grad(ref, ref_leaves, do)
        for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *grads), (ref, ref_lse, *ref_grads)):
            assert (got.double() - want).norm() / want.norm() < 1e-5, name

    def test_interpreted_natten_grid_copies_pad_and_cut():
        # grid_copy (the padded path's copies): 1 to 3 tensors with different token sizes, padded
        # with zeros and cut back, against torch's own padding and slicing.
        from tessera.kernels.triton.grid_copy import copy_grids
        for grid, padded in [((3, 5, 6), (4, 8, 8)), ((5, 7), (8, 8)), ((9,), (16,))]:
            tensors = [torch.randn(2, *grid, h, 3, dtype=torch.float16) for h in (4, 2, 2)]
            for count in (1, 3):
                outs = copy_grids(tensors[:count], grid, padded)
                for t, out in zip(tensors, outs):
                    widths = [0, 0, 0, 0] + [w for g, p in zip(reversed(grid), reversed(padded)) for w in (0, p - g)]
                    assert torch.equal(out, torch.nn.functional.pad(t, widths))
                    back = copy_grids([out], padded, grid)[0]
                    assert back.is_contiguous() and torch.equal(back, t)
        with pytest.raises(ValueError, match="one batch size, got 2 and 1"):
            copy_grids([torch.zeros(2, 5, 7, 3), torch.zeros(1, 5, 7, 3)], (5, 7), (8, 8))

    @pytest.mark.parametrize("na_dim, grid, kernel, stride, causal, layout, heads, dtype", [
        (2, (13, 21), (3, 5), 1, False, (8, 8), 2, torch.float32),
        (2, (11, 14), (5, 3), (2, 1), (False, True), (4, 8), 4, torch.float16),
        (3, (3, 6, 10), (3, 3, 5), (1, 2, 1), (True, False, False), (1, 4, 8), 2, torch.float32),
    ])
    def test_interpreted_natten_padded_grid_against_float64(na_dim, grid, kernel, stride, causal, layout,
                                                           heads, dtype, monkeypatch):
        # A layout whose tiles do not divide the grid: the grid-order kernels run the padded grid
        # (o, lse and every gradient against the float64 definition; B = 2, GQA).
        import tessera.natten as natten
        runs = []
        run = natten._grid_order_run
        monkeypatch.setattr(natten, "_grid_order_run", lambda flat, *a: runs.append(flat[0].shape) or run(flat, *a))
        fn = {2: natten.na2d, 3: natten.na3d}[na_dim]
        exact = [torch.randn(2, *grid, h, 32, dtype=torch.float64) for h in (heads, 2, 2)]
        leaves = [t.to(dtype).requires_grad_() for t in exact]
        o, lse = fn(*leaves, kernel, 1, stride, causal, layout=layout, backend="triton", return_lse=True)
        padded = tuple(-(-g // t) * t for g, t in zip(grid, layout))
        assert runs == [(2, math.prod(padded), heads, 32)], runs
        assert o.shape == (2, *grid, heads, 32) and o.is_contiguous() and lse.shape == (2, heads, *grid)
        ref_leaves = [t.clone().requires_grad_() for t in exact]
        ref, ref_lse = fn(*ref_leaves, kernel, 1, stride, causal, layout="row-major", backend="reference",
                          return_lse=True)
        do = torch.randn(ref.shape, dtype=ref.dtype)
        dlse = torch.randn(ref_lse.shape, dtype=ref_lse.dtype)   # lse in the loss too
        grads = torch.autograd.grad((o, lse), leaves, (do.to(dtype), dlse.float()))
        ref_grads = torch.autograd.grad((ref, ref_lse), ref_leaves, (do, dlse))
        tolerance = 1e-5 if dtype == torch.float32 else 5e-3
        for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *grads), (ref, ref_lse, *ref_grads)):
            assert (got.double() - want).norm() / want.norm() < tolerance, name

    @pytest.mark.parametrize("na_dim, grid, kernel, dilation, stride, causal, tiles, dtype", [
        (2, (18, 8), (3, 3), (2, 1), 1, False, (4, 4), torch.float32),
        (3, (2, 8, 10), (1, 3, 3), (1, 2, 1), (1, 1, 2), (False, True, False), (1, 4, 4), torch.float16),
    ])
    def test_interpreted_natten_dilated_groups_padded_against_float64(na_dim, grid, kernel, dilation, stride,
                                                                      causal, tiles, dtype, monkeypatch):
        # A dilation whose groups' sub-grid, over one kernel tile (groups within one are folded in
        # place), no tile divides (9 x 8, 2 x 4 x 10 here): the groups are
        # gathered, batched and run padded up to whole tiles (natten._padded_groups; on a GPU
        # "auto" picks the tiles, _padded_group_tiles), o, lse and every gradient against the
        # float64 definition (B = 2, GQA); the gradients from o and lse (the compiled backward's
        # neighborhood_attention_gradients) equal autograd's bit for bit.
        import tessera.natten as natten
        monkeypatch.setattr(natten, "_padded_group_tiles", lambda *a: tiles)
        runs = []
        padded_run = natten._padded_run
        monkeypatch.setattr(natten, "_padded_run", lambda q, *a: runs.append(q.shape) or padded_run(q, *a))
        fn = {2: natten.na2d, 3: natten.na3d}[na_dim]
        exact = [torch.randn(2, *grid, h, 32, dtype=torch.float64) for h in (4, 2, 2)]
        leaves = [t.to(dtype).requires_grad_() for t in exact]
        o, lse = fn(*leaves, kernel, dilation, stride, causal, backend="triton", return_lse=True)
        groups = math.prod(dilation)
        assert runs == [(2 * groups, *(g // d for g, d in zip(grid, dilation)), 4, 32)], runs
        assert o.shape == (2, *grid, 4, 32) and lse.shape == (2, 4, *grid)
        ref_leaves = [t.clone().requires_grad_() for t in exact]
        ref, ref_lse = fn(*ref_leaves, kernel, dilation, stride, causal, layout="row-major", backend="reference",
                          return_lse=True)
        do = torch.randn(ref.shape, dtype=ref.dtype)
        dlse = torch.randn(ref_lse.shape, dtype=ref_lse.dtype)   # lse in the loss too
        grads = torch.autograd.grad((o, lse), leaves, (do.to(dtype), dlse.float()))
        recomputed = []
        recompute = natten.recomputed_gradients
        monkeypatch.setattr(natten, "recomputed_gradients", lambda *a: recomputed.append(1) or recompute(*a))
        from_saved = natten.neighborhood_attention_gradients(do.to(dtype), *leaves, o.detach(), lse.detach(), kernel,
                                                             dilation, stride, causal, na_dim=na_dim, backend="triton",
                                                             dlse=dlse.float())
        assert len(recomputed) == (dtype == torch.float32)   # float32 calls are not prepared
        for name, a, b in zip(("dq", "dk", "dv"), grads, from_saved):
            assert torch.equal(a, b), name
        ref_grads = torch.autograd.grad((ref, ref_lse), ref_leaves, (do, dlse))
        tolerance = 1e-5 if dtype == torch.float32 else 5e-3
        for name, got, want in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *grads), (ref, ref_lse, *ref_grads)):
            assert (got.double() - want).norm() / want.norm() < tolerance, name

    def test_interpreted_natten_grid_order_path_against_float64(monkeypatch):
        import tessera
        monkeypatch.setattr(tessera.natten, "GRID_ORDER_IN_KERNEL", True)
        calls = []
        monkeypatch.setattr(tessera.natten, "_build_call",
                            lambda *a, **kw: calls.append(1) or tessera.api._build_call(*a, **kw))
        q, k, v = (torch.randn(2, 4, 6, 10, 2, 32, dtype=torch.float64).float().requires_grad_()
                   for _ in range(3))
        o, lse = tessera.natten.na3d(q, k, v, (3, 3, 5), dilation=(1, 2, 1), layout=(2, 3, 5),
                                     backend="triton", return_lse=True)
        assert calls, "the grid-order path did not run"
        leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
        ref, ref_lse = tessera.natten.na3d(*leaves, (3, 3, 5), dilation=(1, 2, 1),
                                           layout="row-major", backend="reference", return_lse=True)
        assert (o.double() - ref).norm() / ref.norm() < 1e-5
        assert (lse.double() - ref_lse).norm() / ref_lse.norm() < 1e-5
        do = torch.randn_like(o)
        grads = torch.autograd.grad(o, (q, k, v), do)
        ref_grads = torch.autograd.grad(ref, leaves, do.double())
        for g, r in zip(grads, ref_grads):
            assert (g.double() - r).norm() / r.norm() < 1e-4


def test_fold_descriptor_views_and_refusals():
    """The dilation-group view of a row-major [B, S, H, D] tensor: each group's box lands on that
    group's grid rows; no view where axis 0 is dilated, the tile is deeper than one along it, the
    head dim is padded, or heads and D are not contiguous."""
    from tessera.kernels.triton.flash_fwd import fold_descriptor
    fold = masks.DilationFold((8, 12), (2, 3))
    t = torch.arange(2 * 96 * 3 * 16, dtype=torch.float32).view(2, 96, 3, 16)
    desc = fold_descriptor(t, fold, (1, 2, 4), 16)
    assert desc.shape == [2 * 4, 2, 4, 3, 48] and desc.block_shape == [2, 1, 4, 1, 16]
    view = t.as_strided(desc.shape, desc.strides)
    b, r1, r2, c1, c2, h = 1, 1, 2, 3, 1, 2
    grid_row = (r1 + 2 * c1) * 12 + (r2 + 3 * c2)
    assert torch.equal(view[b * 4 + c1, r1, c2, r2, h * 16:(h + 1) * 16], t[b, grid_row, h])
    assert fold_descriptor(t, masks.DilationFold((2, 8, 12), (2, 1, 3)), (1, 2, 4), 16) is None
    assert fold_descriptor(t, masks.DilationFold((2, 4, 12), (1, 2, 3)), (2, 2, 4), 16) is None
    assert fold_descriptor(t[..., :12], fold, (1, 2, 4), 16) is None
    assert fold_descriptor(t.transpose(1, 2).contiguous().transpose(1, 2), fold, (1, 2, 4), 16) is None


def test_dilation_fold_rows_and_parameters():
    """Each dilation group's first grid row, and the fold's kernel parameters after a plan's."""
    fold = masks.DilationFold((4, 6), (2, 3))
    assert fold.grid == (1, 4, 6) and fold.dilation == (1, 2, 3) and fold.groups == 6
    assert fold.first_rows == [0, 1, 2, 6, 7, 8]
    sub = _tiled(Neighborhood((2, 2), 1), (1, 2))
    plan = masks.build_plan(sub, 4, 4, 32, 32, 1, CPU)
    values, static = fold.params(plan)
    assert values.tolist() == list(plan.na_values) + [1, 2, 3, 6, 0, 1, 2, 6, 7, 8]
    assert static == plan.na_static | (1 << 23) and fold.params(plan)[0] is values
    from tessera.kernels.triton import na_mask
    assert (na_mask.NA_FOLD.value, na_mask.NA_GROUPS.value) == (len(plan.na_values), len(plan.na_values) + 3)
    assert na_mask.NA_FOLDED.value == masks.NA_FOLDED_BIT
    with pytest.raises(ValueError, match="must divide grid"):
        masks.DilationFold((4, 6), (3, 3))
