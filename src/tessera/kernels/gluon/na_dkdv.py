"""dk and dv of a tiled-order N-D neighborhood in grid order, in Gluon (Hopper, sm_90).

Same scope as ``na_forward`` (``supports``: grid-order plans whose 64-token tiles are grid boxes,
the analytic mask or full tiles only, 16-bit, D in {32, 64, 128}, softmax without biases, every
group of a dilation fold), for the backward's key side. One program per (key tile, batch (x
dilation group) x key head), one warpgroup. The key tile's k and v arrive by bulk copies into
shared memory and stay there as the A operands of ``S^T = K Q^T`` and ``dP^T = V dO^T``; the query
tiles that list the key tile (the plan's transposed lists, ``plan.cols``, for each query head of
the group) stream their q and dO tiles through a ring of ``NUM_BUF`` slots under mbarriers, loaded
ahead of use. Per query tile, with lse and delta (``rowsum(o * do)``) read by pointers:

    P^T = exp2(S^T * scale * log2(e) + penalty - lse * log2(e))
    dV += P^T dO                 dS^T = P^T * (dP^T - delta)            dK += dS^T Q

(``penalty``: ``na_mask.na_penalty`` of the key windows against the query codes, computed
before the products are waited for.) Three loops (``pipeline``): each tile's products waited for
in turn, one ``[BLOCK_N, BLOCK_M]`` product in registers besides dk and dv (``SEQUENTIAL``); the
tile's dK left in flight (``DEFER_DK``); or dP^T issued with S^T and dV and dK left in flight
(``EARLY_DP``), the copy of tile t + NUM_BUF - 1 then issued once tile t - 1's products are
waited for. dk (times ``scale``) and dv leave through k's and v's buffers by bulk stores. The
Triton dk/dv kernel holds k and v in registers (255 registers and a spill at D = 128); here they
stay in shared memory.

Compiled for sm_90 without a GPU by ``benchmarks/gluon_compile_check.py --kernel dkdv``; its
float64 check is ``tests/kernels/test_gluon_gpu.py::test_gluon_dkdv_against_float64``; the
backward takes dk and dv from it where ``backward_route.routes`` sends them.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                              warpgroup_mma, warpgroup_mma_init,
                                                              warpgroup_mma_wait)

from ..triton import masks
from ..triton.flash_fwd import LOG2E, grid_box
from ..triton.launcher import BoundLaunches, Launcher
from ..triton.na_mask import na_codes, na_key_windows, na_penalty
from ..triton.row_addressing import bulk_copy_batch, memory_rows, row_tile_origin
from .layouts import wgmma_accumulator, wgmma_register_operand
from .na_forward import (_descriptor, _fold_entry, _tile_of, check_row_stats, launch_params, plan_rows,
                         supports)


# ``na_dkdv``'s loops (``pipeline``; the module docstring says what each leaves in flight), and
# the same as the kernel's constants.
SEQUENTIAL, DEFER_DK, EARLY_DP = 0, 1, 2
_SEQUENTIAL, _DEFER_DK, _EARLY_DP = gl.constexpr(SEQUENTIAL), gl.constexpr(DEFER_DK), gl.constexpr(EARLY_DP)


@gluon.jit
def _issue_q_do(Q_DESC, DO_DESC, q_bufs, do_bufs, bars, tile, slot, batch, h, NA,
                NA_STATIC: gl.constexpr, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr):
    """Bulk copies of query tile ``tile`` of q and dO (batch ``batch``, ``bulk_copy_batch``'s,
    query head ``h``) into ring slot ``slot``."""
    origin = row_tile_origin(tile * BLOCK_M, batch, h, NA, 0, NA_STATIC, True, HEAD_D)
    bar = bars.index(slot)
    mbarrier.expect(bar, Q_DESC.block_type.nbytes + DO_DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(Q_DESC, origin, bar, q_bufs.index(slot))
    tma.async_copy_global_to_shared(DO_DESC, origin, bar, do_bufs.index(slot))


@gluon.jit
def _store_dk_dv(dk, dv, scale, k_smem, v_smem, DK_DESC, DV_DESC, k_origin, BLOCK_N: gl.constexpr,
                 HEAD_D: gl.constexpr):
    """dk (times ``scale``) and dv out through k's and v's buffers by bulk stores at ``k_origin``
    (every product that read those buffers has completed)."""
    k_smem.reshape([BLOCK_N, HEAD_D]).store((dk * scale).to(k_smem.dtype))
    v_smem.reshape([BLOCK_N, HEAD_D]).store(dv.to(v_smem.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(DK_DESC, k_origin, k_smem)
    tma.async_copy_shared_to_global(DV_DESC, k_origin, v_smem)
    tma.store_wait(pendings=0)


@gluon.jit
def _na_dkdv(Q_DESC, K_DESC, V_DESC, DO_DESC, DK_DESC, DV_DESC, LSE, DELTA, PART_CNT, PART_IDX,
             FULL_CNT, FULL_IDX, NA, H_Q, GROUP, S_Q, MAP_HEADS, N_K_TILES, PART_W, FULL_W, scale,
             qk_scale, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
             NA_STATIC: gl.constexpr, NUM_BUF: gl.constexpr, MASKED: gl.constexpr,
             PIPELINE: gl.constexpr, num_warps: gl.constexpr):
    n = gl.program_id(0)
    entry_head = gl.program_id(1)
    h_kv = H_Q // GROUP
    entry = entry_head // h_kv
    hk = entry_head - entry * h_kv
    b, first_row, groups = _fold_entry(entry, NA, NA_STATIC)
    batch = bulk_copy_batch(b, first_row, NA, NA_STATIC)
    dtype: gl.constexpr = Q_DESC.dtype

    # Scores are transposed, [BLOCK_N keys, BLOCK_M queries]; dk and dv are [BLOCK_N, HEAD_D].
    t_layout: gl.constexpr = wgmma_accumulator(num_warps, BLOCK_M)
    g_layout: gl.constexpr = wgmma_accumulator(num_warps, HEAD_D)
    a_layout: gl.constexpr = wgmma_register_operand(g_layout)
    keys: gl.constexpr = gl.SliceLayout(1, t_layout)
    queries: gl.constexpr = gl.SliceLayout(0, t_layout)

    k_smem = gl.allocate_shared_memory(dtype, K_DESC.block_type.shape, K_DESC.layout)
    v_smem = gl.allocate_shared_memory(dtype, V_DESC.block_type.shape, V_DESC.layout)
    q_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + Q_DESC.block_type.shape, Q_DESC.layout)
    do_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + DO_DESC.block_type.shape, DO_DESC.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(bars.index(i), count=1)

    k_origin = row_tile_origin(n * BLOCK_N, batch, hk, NA, 1, NA_STATIC, True, HEAD_D)
    mbarrier.expect(kv_bar, K_DESC.block_type.nbytes + V_DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(K_DESC, k_origin, kv_bar, k_smem)
    tma.async_copy_global_to_shared(V_DESC, k_origin, kv_bar, v_smem)

    offs_n = gl.arange(0, BLOCK_N, layout=keys)
    offs_m = gl.arange(0, BLOCK_M, layout=queries)
    # The queries each key of the tile is seen by, once per program.
    windows = na_key_windows(offs_n[:, None], n * BLOCK_N, NA, NA_STATIC)
    t_zero = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, t_layout)
    dk = gl.zeros([BLOCK_N, HEAD_D], gl.float32, g_layout)
    dv = gl.zeros([BLOCK_N, HEAD_D], gl.float32, g_layout)
    k_tile = k_smem.reshape([BLOCK_N, HEAD_D])
    v_tile = v_smem.reshape([BLOCK_N, HEAD_D])
    mbarrier.wait(kv_bar, 0)

    if PIPELINE >= _DEFER_DK:
        dk = warpgroup_mma_init(dk)
    if PIPELINE == _EARLY_DP:
        dv = warpgroup_mma_init(dv)
    c = 0  # query tiles taken so far: tile c of the program is in slot c % NUM_BUF
    for g in range(GROUP):
        h = hk * GROUP + g
        row = (h % MAP_HEADS) * N_K_TILES + n
        n_part = gl.load(PART_CNT + row)
        total = n_part + gl.load(FULL_CNT + row)
        # lse and delta [B, H, S] hold the whole grid's rows (S = S_Q * groups under a fold).
        stats = (b * H_Q + h).to(gl.int64) * (S_Q * groups) + first_row
        for i in gl.static_range(NUM_BUF - 1):
            if i < total:
                _issue_q_do(Q_DESC, DO_DESC, q_bufs, do_bufs, bars,
                            _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, i),
                            (c + i) % NUM_BUF, batch, h, NA, NA_STATIC, HEAD_D, BLOCK_M)
        for t in range(total):
            ahead = t + NUM_BUF - 1
            if PIPELINE == _SEQUENTIAL and ahead < total:
                # Into the slot tile t - 1 read (its products completed).
                _issue_q_do(Q_DESC, DO_DESC, q_bufs, do_bufs, bars,
                            _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, ahead),
                            (c + ahead) % NUM_BUF, batch, h, NA, NA_STATIC, HEAD_D, BLOCK_M)
            m = _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, t)
            q_mem = memory_rows(offs_m, m * BLOCK_M, NA, 0, NA_STATIC, True).to(gl.int64)
            lse = gl.load(LSE + stats + q_mem)
            delta = gl.load(DELTA + stats + q_mem)
            # Fully masked rows have lse = -inf: read as +inf so that p = 0 there.
            lse2 = gl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
            if MASKED:
                penalty = na_penalty(windows, na_codes(offs_m[None, :], m * BLOCK_M, NA, 0, NA_STATIC),
                                     NA_STATIC, True)
            slot = (c + t) % NUM_BUF
            mbarrier.wait(bars.index(slot), ((c + t) // NUM_BUF) & 1)
            q_tile = q_bufs.index(slot).reshape([BLOCK_M, HEAD_D])
            do_tile = do_bufs.index(slot).reshape([BLOCK_M, HEAD_D])
            s_t = warpgroup_mma(k_tile, q_tile.permute((1, 0)), t_zero, use_acc=False, is_async=True)
            if PIPELINE == _EARLY_DP:
                dp_t = warpgroup_mma(v_tile, do_tile.permute((1, 0)), t_zero, use_acc=False, is_async=True)
                s_t, dk, dv = warpgroup_mma_wait(num_outstanding=1, deps=(s_t, dk, dv))
            elif PIPELINE == _DEFER_DK:
                s_t, dk = warpgroup_mma_wait(num_outstanding=0, deps=(s_t, dk))
            else:
                s_t = warpgroup_mma_wait(num_outstanding=0, deps=(s_t,))
            if PIPELINE != _SEQUENTIAL and ahead < total:
                # Into the slot tile t - 1 read (its products completed with the wait above).
                _issue_q_do(Q_DESC, DO_DESC, q_bufs, do_bufs, bars,
                            _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, ahead),
                            (c + ahead) % NUM_BUF, batch, h, NA, NA_STATIC, HEAD_D, BLOCK_M)
            z = s_t * qk_scale
            if MASKED:
                z = z + penalty
            p_t = gl.exp2(z - lse2[None, :])
            dv = warpgroup_mma(gl.convert_layout(p_t.to(dtype), a_layout), do_tile, dv, is_async=True)
            if PIPELINE == _EARLY_DP:
                dp_t = warpgroup_mma_wait(num_outstanding=1, deps=(dp_t,))
            else:
                dp_t = warpgroup_mma(v_tile, do_tile.permute((1, 0)), t_zero, use_acc=False, is_async=True)
                dp_t, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dp_t, dv))
            ds_t = p_t * (dp_t - delta[None, :])
            dk = warpgroup_mma(gl.convert_layout(ds_t.to(dtype), a_layout), q_tile, dk, is_async=True)
            if PIPELINE == _SEQUENTIAL:
                dk = warpgroup_mma_wait(num_outstanding=0, deps=(dk,))
        c += total
    if PIPELINE != _SEQUENTIAL:
        dk, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv))

    _store_dk_dv(dk, dv, scale, k_smem, v_smem, DK_DESC, DV_DESC, k_origin, BLOCK_N, HEAD_D)


_LAUNCH = Launcher(_na_dkdv)
# Repeat calls launch with only the tensors filled in (``launcher.BoundLaunch``).
_BOUND = BoundLaunches()


def na_dkdv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, lse: torch.Tensor,
            delta: torch.Tensor, plan, *, scale: float, num_buffers: int = 2,
            dk: torch.Tensor | None = None, dv: torch.Tensor | None = None,
            max_registers: int | None = None, pipeline: int = SEQUENTIAL, fold=None,
            scope_checked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dk, dv)``, like ``k`` and ``v`` ``[B, S, H_kv, D]``, of softmax attention over ``plan``
    for grid-order ``q``, ``do`` ``[B, S, H_q, D]``, ``k``, ``v``, with the forward's ``lse`` and
    ``delta = rowsum(o * do)`` (float32 ``[B, H_q, S]``, contiguous); ``supports(q, k, v, plan)``
    and ``supports(do, k, v, plan)`` must hold. ``num_buffers``: q/dO ring slots (at least 2);
    ``dk``, ``dv``: where to write (contiguous, like ``k`` and ``v``), else new tensors;
    ``max_registers``: a register cap per thread (None: the compiler's choice); ``pipeline``:
    the loop, ``SEQUENTIAL``, ``DEFER_DK`` or ``EARLY_DP`` (see there); ``fold``: a
    ``masks.DilationFold`` whose groups all run over ``plan`` (one group's; ``supports(...,
    fold)``), the tensors and lse and delta then covering the whole grid (``plan_rows``);
    ``scope_checked``: the caller has found both ``supports`` true (``backward_route`` does).
    Launched on the current stream."""
    if num_buffers < 2:
        raise ValueError(f"na_dkdv: num_buffers must be at least 2, got {num_buffers}")
    if pipeline not in (SEQUENTIAL, DEFER_DK, EARLY_DP):
        raise ValueError(f"na_dkdv: pipeline must be SEQUENTIAL, DEFER_DK or EARLY_DP (0, 1, 2), "
                         f"got {pipeline!r}")
    if (plan.block_m, plan.block_n) != (64, 64) or not (
            scope_checked or (supports(q, k, v, plan, fold) and supports(do, k, v, plan, fold))):
        raise ValueError("na_dkdv: this call is outside the Gluon kernels' scope (see "
                         "na_forward.supports; 64 x 64 tiles)")
    batch, heads, dim = q.shape[0], q.shape[2], q.shape[3]
    seq = plan_rows(plan, fold)
    check_row_stats("na_dkdv", lse, delta, (batch, heads, seq))
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if dk is None else dk
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if dv is None else dv
    key = (id(plan), id(fold), q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), do.stride(),
           dk.stride(), dv.stride(), q.dtype, q.device, scale, num_buffers, max_registers, pipeline)
    bound = _BOUND.get(key, (plan, fold))
    if bound is not None:
        bound(q, k, v, do, dk, dv, lse, delta)
        return dk, dv
    q_box, k_box = grid_box(plan, plan.block_m), grid_box(plan, plan.block_n)
    q_desc, do_desc = (_descriptor(t, plan, q_box, fold) for t in (q, do))
    k_desc, v_desc, dk_desc, dv_desc = (_descriptor(t, plan, k_box, fold) for t in (k, v, dk, dv))
    na_params, na_static, groups = launch_params(q, plan, fold)
    cols = plan.cols
    grid = (plan.n_k_tiles, batch * groups * k.shape[2])
    args = (q_desc, k_desc, v_desc, do_desc, dk_desc, dv_desc, lse, delta, cols.part_count,
            cols.part_index, cols.full_count, cols.full_index, na_params, heads,
            heads // k.shape[2], seq // groups, plan.map_heads, plan.n_k_tiles, cols.part_width,
            cols.full_width, scale, scale * LOG2E)
    options = dict(HEAD_D=dim, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, NA_STATIC=na_static,
                   NUM_BUF=num_buffers, MASKED=plan.mask_mode == masks.MASK_NEIGHBORHOOD,
                   PIPELINE=pipeline, num_warps=4,
                   **({"maxnreg": max_registers} if max_registers else {}))
    _LAUNCH[grid](*args, **options)
    _BOUND.remember(key, _LAUNCH, grid, args, options, live=(0, 1, 2, 3, 4, 5, 6, 7), owners=(plan, fold))
    return dk, dv
