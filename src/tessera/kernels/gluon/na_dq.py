"""dq of a tiled-order N-D neighborhood in grid order, in Gluon (Hopper, sm_90).

Same scope as ``na_forward`` (``supports``: grid-order plans whose 64-token tiles are grid boxes,
the analytic mask or full tiles only, 16-bit, D in {32, 64, 128}, softmax without biases, every
group of a dilation fold), for the backward's query side. One program per (query tile, batch (x
dilation group) x query head), one warpgroup. The query tile's q and dO arrive by bulk copies into
shared memory and stay there as the A operands of ``S = Q K^T`` and ``dP = dO V^T``; the key tiles
the plan lists for the query tile stream through a K ring of ``NUM_BUF`` slots and a V ring of
``V_BUF`` slots under mbarriers, loaded ahead of use (as in ``na_forward``'s sequential loop). Per
key tile, with lse and delta (``rowsum(o * do)``) read once by pointers:

    P = exp2(S * scale * log2(e) + penalty - lse * log2(e))
    dS = P * (dP - delta)                  dQ += dS K

(``penalty``: ``na_mask.na_penalty`` of the query windows against the key codes, computed
before the products are waited for from the key tile's grid coordinates, which its bulk copies
share; dP's product runs under P's exponentials.) dq (times ``scale``) leaves through q's
buffer by a bulk store.

Compiled for sm_90 without a GPU by ``benchmarks/gluon_compile_check.py --kernel dq``; its
float64 check is ``tests/kernels/test_gluon_gpu.py::test_gluon_dq_against_float64``; the
backward takes dq from it where ``backward_route.routes`` sends it (it loses to the Triton dq on
3-D neighborhoods at D = 64 and on mostly full tiles; ``backward_route`` has the numbers).
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                              warpgroup_mma, warpgroup_mma_wait)

from ..triton import masks
from ..triton.flash_fwd import grid_box, LOG2E
from ..triton.launcher import BoundLaunches, Launcher
from ..triton.na_mask import NA_GRID, na_param, na_query_windows
from ..triton.row_addressing import bulk_copy_batch, memory_rows, row_tile_origin
from .layouts import wgmma_accumulator, wgmma_register_operand
from .na_forward import (_box_origin, _descriptor, _fold_entry, _issue_box, _issue_one, _key_tile_at,
                         _penalty_at, _tile_of, check_row_stats, launch_params, plan_rows, supports)


@gluon.jit
def _na_dq(Q_DESC, K_DESC, V_DESC, DO_DESC, DQ_DESC, LSE, DELTA, PART_CNT, PART_IDX, FULL_CNT,
           FULL_IDX, NA, H_Q, GROUP, S_Q, MAP_HEADS, N_Q_TILES, PART_W, FULL_W, scale, qk_scale,
           HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
           NA_STATIC: gl.constexpr, NUM_BUF: gl.constexpr, V_BUF: gl.constexpr,
           MASKED: gl.constexpr, num_warps: gl.constexpr):
    m = gl.program_id(0)
    entry_head = gl.program_id(1)
    entry = entry_head // H_Q
    h = entry_head - entry * H_Q
    b, first_row, groups = _fold_entry(entry, NA, NA_STATIC)
    batch = bulk_copy_batch(b, first_row, NA, NA_STATIC)
    hk = h // GROUP
    row = (h % MAP_HEADS) * N_Q_TILES + m
    n_part = gl.load(PART_CNT + row)
    total = n_part + gl.load(FULL_CNT + row)
    dtype: gl.constexpr = Q_DESC.dtype

    s_layout: gl.constexpr = wgmma_accumulator(num_warps, BLOCK_N)
    g_layout: gl.constexpr = wgmma_accumulator(num_warps, HEAD_D)
    a_layout: gl.constexpr = wgmma_register_operand(g_layout)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    cols_s: gl.constexpr = gl.SliceLayout(0, s_layout)

    q_smem = gl.allocate_shared_memory(dtype, Q_DESC.block_type.shape, Q_DESC.layout)
    do_smem = gl.allocate_shared_memory(dtype, DO_DESC.block_type.shape, DO_DESC.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + K_DESC.block_type.shape, K_DESC.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [V_BUF] + V_DESC.block_type.shape, V_DESC.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [V_BUF, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(k_bars.index(i), count=1)
    for i in gl.static_range(V_BUF):
        mbarrier.init(v_bars.index(i), count=1)

    q_origin = row_tile_origin(m * BLOCK_M, batch, h, NA, 0, NA_STATIC, True, HEAD_D)
    mbarrier.expect(q_bar, Q_DESC.block_type.nbytes + DO_DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(Q_DESC, q_origin, q_bar, q_smem)
    tma.async_copy_global_to_shared(DO_DESC, q_origin, q_bar, do_smem)
    for i in gl.static_range(NUM_BUF - 1):
        if i < total:
            tile = _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, i)
            _issue_one(K_DESC, k_bufs, k_bars, tile, i, batch, hk, NA, NA_STATIC, HEAD_D, BLOCK_N)
            if i < V_BUF - 1:
                _issue_one(V_DESC, v_bufs, v_bars, tile, i, batch, hk, NA, NA_STATIC, HEAD_D, BLOCK_N)

    offs_m = gl.arange(0, BLOCK_M, layout=rows_s)
    offs_n = gl.arange(0, BLOCK_N, layout=cols_s)
    windows = na_query_windows(offs_m[:, None], m * BLOCK_M, NA, NA_STATIC)
    q_mem = memory_rows(offs_m, m * BLOCK_M, NA, 0, NA_STATIC, True).to(gl.int64)
    # lse and delta [B, H, S] hold the whole grid's rows (S = S_Q * groups under a fold).
    stats = (b * H_Q + h).to(gl.int64) * (S_Q * groups) + first_row
    lse = gl.load(LSE + stats + q_mem)
    delta = gl.load(DELTA + stats + q_mem)
    # Fully masked rows have lse = -inf: read as +inf so that p = 0 there.
    lse2 = gl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    dq = gl.zeros([BLOCK_M, HEAD_D], gl.float32, g_layout)
    q_tile = q_smem.reshape([BLOCK_M, HEAD_D])
    do_tile = do_smem.reshape([BLOCK_M, HEAD_D])
    mbarrier.wait(q_bar, 0)

    # Tile t + NUM_BUF - 1 of k and t + V_BUF - 1 of v are copied at step t, into the slots tile
    # t - 1's (completed) products read. With two K slots the grid coordinates of tile t + 1 are
    # computed once at step t (its copies) and carried into step t + 1 (its penalty, and its V
    # copy with one V slot), as in ``na_forward``'s sequential loop.
    row0 = b * na_param(NA, NA_GRID, 0)
    tile, c0, c1, c2 = _key_tile_at(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, 0, NA,
                                    NA_STATIC, BLOCK_N)
    for t in range(total):
        if NUM_BUF == 2 and V_BUF <= 2:
            nxt, n0, n1, n2 = _key_tile_at(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part,
                                           gl.minimum(t + 1, total - 1), NA, NA_STATIC, BLOCK_N)
            if t + 1 < total:
                next_box = _box_origin(row0 + n0, n1, n2, hk, batch, NA, NA_STATIC, HEAD_D)
                _issue_box(K_DESC, k_bufs, k_bars, next_box, (t + 1) % 2)
                if V_BUF == 2:
                    _issue_box(V_DESC, v_bufs, v_bars, next_box, (t + 1) % 2)
            if V_BUF == 1:
                _issue_box(V_DESC, v_bufs, v_bars,
                           _box_origin(row0 + c0, c1, c2, hk, batch, NA, NA_STATIC, HEAD_D), 0)
        else:
            k_ahead = t + NUM_BUF - 1
            if k_ahead < total:
                _issue_one(K_DESC, k_bufs, k_bars,
                           _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, k_ahead),
                           k_ahead % NUM_BUF, batch, hk, NA, NA_STATIC, HEAD_D, BLOCK_N)
            v_ahead = t + V_BUF - 1
            if v_ahead < total:
                _issue_one(V_DESC, v_bufs, v_bars,
                           _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, v_ahead),
                           v_ahead % V_BUF, batch, hk, NA, NA_STATIC, HEAD_D, BLOCK_N)
        if MASKED:
            penalty = _penalty_at((c0, c1, c2), tile, windows, offs_n, NA, BLOCK_N, NA_STATIC)
        k_tile = k_bufs.index(t % NUM_BUF).reshape([BLOCK_N, HEAD_D])
        mbarrier.wait(k_bars.index(t % NUM_BUF), (t // NUM_BUF) & 1)
        s = warpgroup_mma(q_tile, k_tile.permute((1, 0)), s_zero, use_acc=False, is_async=True)
        mbarrier.wait(v_bars.index(t % V_BUF), (t // V_BUF) & 1)
        dp = warpgroup_mma(do_tile, v_bufs.index(t % V_BUF).reshape([BLOCK_N, HEAD_D]).permute((1, 0)),
                           s_zero, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
        z = s * qk_scale
        if MASKED:
            z = z + penalty
        p = gl.exp2(z - lse2[:, None])
        dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
        ds = p * (dp - delta[:, None])
        dq = warpgroup_mma(gl.convert_layout(ds.to(dtype), a_layout), k_tile, dq, is_async=True)
        dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
        if NUM_BUF == 2 and V_BUF <= 2:
            tile, c0, c1, c2 = nxt, n0, n1, n2
        else:
            tile, c0, c1, c2 = _key_tile_at(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part,
                                            gl.minimum(t + 1, total - 1), NA, NA_STATIC, BLOCK_N)

    # q's buffer carries dq out (every product that read it has completed).
    q_tile.store((dq * scale).to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(DQ_DESC, q_origin, q_smem)
    tma.store_wait(pendings=0)


_LAUNCH = Launcher(_na_dq)
# Repeat calls launch with only the tensors filled in (``launcher.BoundLaunch``).
_BOUND = BoundLaunches()


def na_dq(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, lse: torch.Tensor,
          delta: torch.Tensor, plan, *, scale: float, num_buffers: int = 2, v_buffers: int = 1,
          dq: torch.Tensor | None = None, max_registers: int | None = None, fold=None,
          scope_checked: bool = False) -> torch.Tensor:
    """``dq``, like ``q`` ``[B, S, H_q, D]``, of softmax attention over ``plan`` for grid-order
    ``q``, ``do``, ``k``, ``v`` ``[B, S, H_kv, D]``, with the forward's ``lse`` and ``delta =
    rowsum(o * do)`` (float32 ``[B, H_q, S]``, contiguous); ``supports(q, k, v, plan)`` and
    ``supports(do, k, v, plan)`` must hold, with 64 x 64 tiles. ``num_buffers``, ``v_buffers``: K
    and V ring slots (``1 <= v_buffers <= num_buffers``); ``dq``: where to write (contiguous,
    like ``q``), else a new tensor; ``max_registers``: a register cap per thread; ``fold``: a
    ``masks.DilationFold`` whose groups all run over ``plan`` (one group's; ``supports(...,
    fold)``), the tensors and lse and delta then covering the whole grid (``plan_rows``);
    ``scope_checked``: the caller has found both ``supports`` true (``backward_route`` does).
    Launched on the current stream."""
    if not 1 <= v_buffers <= num_buffers:
        raise ValueError(f"na_dq: need 1 <= v_buffers <= num_buffers, got v_buffers={v_buffers}, "
                         f"num_buffers={num_buffers}")
    if (plan.block_m, plan.block_n) != (64, 64) or not (
            scope_checked or (supports(q, k, v, plan, fold) and supports(do, k, v, plan, fold))):
        raise ValueError("na_dq: this call is outside the Gluon kernels' scope (see "
                         "na_forward.supports; 64 x 64 tiles)")
    batch, heads, dim = q.shape[0], q.shape[2], q.shape[3]
    seq = plan_rows(plan, fold)
    check_row_stats("na_dq", lse, delta, (batch, heads, seq))
    dq = torch.empty_like(q) if dq is None else dq
    key = (id(plan), id(fold), q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), do.stride(),
           dq.stride(), q.dtype, q.device, scale, num_buffers, v_buffers, max_registers)
    bound = _BOUND.get(key, (plan, fold))
    if bound is not None:
        bound(q, k, v, do, dq, lse, delta)
        return dq
    q_box, k_box = grid_box(plan, plan.block_m), grid_box(plan, plan.block_n)
    q_desc, do_desc, dq_desc = (_descriptor(t, plan, q_box, fold) for t in (q, do, dq))
    k_desc, v_desc = (_descriptor(t, plan, k_box, fold) for t in (k, v))
    na_params, na_static, groups = launch_params(q, plan, fold)
    rows = plan.rows
    grid = (plan.n_q_tiles, batch * groups * heads)
    args = (q_desc, k_desc, v_desc, do_desc, dq_desc, lse, delta, rows.part_count, rows.part_index,
            rows.full_count, rows.full_index, na_params, heads, heads // k.shape[2], seq // groups,
            plan.map_heads, plan.n_q_tiles, rows.part_width, rows.full_width, scale, scale * LOG2E)
    options = dict(
        HEAD_D=dim, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, NA_STATIC=na_static,
        NUM_BUF=num_buffers, V_BUF=v_buffers, MASKED=plan.mask_mode == masks.MASK_NEIGHBORHOOD,
        num_warps=4, **({"maxnreg": max_registers} if max_registers else {}))
    _LAUNCH[grid](*args, **options)
    _BOUND.remember(key, _LAUNCH, grid, args, options, live=(0, 1, 2, 3, 4, 5, 6), owners=(plan, fold))
    return dq
