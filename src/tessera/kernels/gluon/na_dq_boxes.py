"""dq of a tiled-order N-D neighborhood over key boxes (``key_boxes``), in Gluon (sm_90).

``na_dq`` (same scope, same products per key tile) with each query tile walking its own key
boxes, as ``na_forward_boxes`` does: per box of 64 or 32 keys, with lse and delta read once,

    P = exp2(S * scale * log2(e) + penalty - lse * log2(e))
    dS = P * (dP - delta)                  dQ += dS K

(``penalty``: ``na_forward_boxes._box_penalty``). q and dO stay in shared memory; boxes stream
through two K and two V slots (96 KB at D = 128, two programs per SM), box t + 1's copies
issued at step t into the slots box t - 1's completed products read, its entry loaded a step
before that. dq (times ``scale``) leaves through q's buffer by a bulk store.

Checked against float64 on an H200 (``tests/kernels/test_gluon_gpu.py``); compiled for sm_90
without a GPU by ``benchmarks/gluon_compile_check.py --kernel dq-boxes``.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                              warpgroup_mma, warpgroup_mma_wait)

from ..triton.flash_fwd import LOG2E, grid_box
from ..triton.launcher import BoundLaunches, Launcher
from ..triton.na_mask import NA_GRID, na_param, na_query_windows
from ..triton.row_addressing import memory_rows, row_tile_origin
from . import key_boxes
from .layouts import wgmma_accumulator, wgmma_register_operand
from .na_forward import _box_origin, _descriptor, check_row_stats, plan_rows, static_switches
from .na_forward_boxes import (_FULL, _FULL_SHIFT, _HALF_1, _HALF_1_SHIFT, _HALF_2, _HALF_2_SHIFT,
                               _TALL_SHIFT, _WIDE, _WIDE_SHIFT, _box_penalty, _entry_at, _half_view,
                               _issue_box_copy, _unpack, boxes_supported)


@gluon.jit
def _dq_box_step(q_tile, do_tile, k_view, v_view, k_bar, v_bar, phase, c0, c1, c2, X_SHIFT: gl.constexpr,
                 windows, lse2, delta, dq, qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                 AXIS0_UNIFORM: gl.constexpr, WARPS: gl.constexpr, g_layout: gl.constexpr):
    """S = QK^T and dP = dO V^T of one box of ``BLOCK_N`` keys (``k_view``, ``v_view``
    ``[BLOCK_N, D]``), then dS and ``dq += dS K``, complete; ``lse2`` (lse in log2 units, +inf
    for rows that saw nothing) and ``delta`` in the rows of ``g_layout``."""
    s_layout: gl.constexpr = wgmma_accumulator(WARPS, BLOCK_N)
    a_layout: gl.constexpr = wgmma_register_operand(g_layout)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    penalty = _box_penalty(c0, c1, c2, X_SHIFT, windows, BLOCK_N, s_layout, AXIS0_UNIFORM)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    mbarrier.wait(k_bar, phase)
    s = warpgroup_mma(q_tile, k_view.permute((1, 0)), s_zero, use_acc=False, is_async=True)
    mbarrier.wait(v_bar, phase)
    dp = warpgroup_mma(do_tile, v_view.permute((1, 0)), s_zero, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
    p = gl.exp2(s * qk_scale + penalty - gl.convert_layout(lse2, rows_s)[:, None])
    dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
    ds = p * (dp - gl.convert_layout(delta, rows_s)[:, None])
    dq = warpgroup_mma(gl.convert_layout(ds.to(k_view.dtype), a_layout), k_view, dq, is_async=True)
    return warpgroup_mma_wait(num_outstanding=0, deps=(dq,))


@gluon.jit
def _na_dq_boxes(Q_DESC, DO_DESC, DQ_DESC, K_DESC, V_DESC, K_HALF1, V_HALF1, K_HALF2, V_HALF2, K_WIDE,
                 V_WIDE, K_TALL, V_TALL, LSE, DELTA, COUNTS, ENTRIES, WIDTH, NA, H_Q, GROUP, S_Q, scale,
                 qk_scale, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, NA_STATIC: gl.constexpr,
                 AXIS0_UNIFORM: gl.constexpr, num_warps: gl.constexpr):
    m = gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H_Q
    h = bh - b * H_Q
    batch = (b, 0, 0)
    hk = h // GROUP
    total = gl.load(COUNTS + m)
    dtype: gl.constexpr = Q_DESC.dtype

    q_smem = gl.allocate_shared_memory(dtype, Q_DESC.block_type.shape, Q_DESC.layout)
    do_smem = gl.allocate_shared_memory(dtype, DO_DESC.block_type.shape, DO_DESC.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [2] + K_DESC.block_type.shape, K_DESC.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [2] + V_DESC.block_type.shape, V_DESC.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(2):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)

    q_origin = row_tile_origin(m * BLOCK_M, batch, h, NA, 0, NA_STATIC, True, HEAD_D)
    mbarrier.expect(q_bar, Q_DESC.block_type.nbytes + DO_DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(Q_DESC, q_origin, q_bar, q_smem)
    tma.async_copy_global_to_shared(DO_DESC, q_origin, q_bar, do_smem)
    K_DESCS = (K_DESC, K_HALF1, K_HALF2, K_WIDE, K_TALL)
    V_DESCS = (V_DESC, V_HALF1, V_HALF2, V_WIDE, V_TALL)
    row0 = b * na_param(NA, NA_GRID, 0)
    kind, c0, c1, c2 = _unpack(_entry_at(ENTRIES, m, WIDTH, 0))
    origin = _box_origin(row0 + c0, c1, c2, hk, batch, NA, NA_STATIC, HEAD_D)
    _issue_box_copy(kind, K_DESCS, k_bufs, k_bars, origin, 0)
    _issue_box_copy(kind, V_DESCS, v_bufs, v_bars, origin, 0)
    following = _entry_at(ENTRIES, m, WIDTH, gl.minimum(1, total - 1))

    g_layout: gl.constexpr = wgmma_accumulator(num_warps, HEAD_D)
    rows_g: gl.constexpr = gl.SliceLayout(1, g_layout)
    offs_m = gl.arange(0, BLOCK_M, layout=rows_g)
    windows = na_query_windows(offs_m, m * BLOCK_M, NA, NA_STATIC)
    q_mem = memory_rows(offs_m, m * BLOCK_M, NA, 0, NA_STATIC, True).to(gl.int64)
    stats = bh.to(gl.int64) * S_Q
    lse = gl.load(LSE + stats + q_mem)
    delta = gl.load(DELTA + stats + q_mem)
    # Fully masked rows have lse = -inf: read as +inf so that p = 0 there.
    lse2 = gl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    dq = gl.zeros([BLOCK_M, HEAD_D], gl.float32, g_layout)
    q_tile = q_smem.reshape([BLOCK_M, HEAD_D])
    do_tile = do_smem.reshape([BLOCK_M, HEAD_D])
    mbarrier.wait(q_bar, 0)
    for t in range(total):
        nkind, n0, n1, n2 = _unpack(following)
        following = _entry_at(ENTRIES, m, WIDTH, gl.minimum(t + 2, total - 1))
        if t + 1 < total:
            origin = _box_origin(row0 + n0, n1, n2, hk, batch, NA, NA_STATIC, HEAD_D)
            _issue_box_copy(nkind, K_DESCS, k_bufs, k_bars, origin, (t + 1) % 2)
            _issue_box_copy(nkind, V_DESCS, v_bufs, v_bars, origin, (t + 1) % 2)
        k_slot = k_bufs.index(t % 2)
        v_slot = v_bufs.index(t % 2)
        k_64 = k_slot.reshape([64, HEAD_D])
        v_64 = v_slot.reshape([64, HEAD_D])
        k_32 = _half_view(k_slot, K_HALF1, HEAD_D)
        v_32 = _half_view(v_slot, V_HALF1, HEAD_D)
        k_bar = k_bars.index(t % 2)
        v_bar = v_bars.index(t % 2)
        phase = (t // 2) & 1
        if kind == _FULL:
            dq = _dq_box_step(q_tile, do_tile, k_64, v_64, k_bar, v_bar, phase, c0, c1, c2, _FULL_SHIFT,
                              windows, lse2, delta, dq, qk_scale, BLOCK_M, 64, AXIS0_UNIFORM, num_warps,
                              g_layout)
        elif kind == _WIDE:
            dq = _dq_box_step(q_tile, do_tile, k_64, v_64, k_bar, v_bar, phase, c0, c1, c2, _WIDE_SHIFT,
                              windows, lse2, delta, dq, qk_scale, BLOCK_M, 64, AXIS0_UNIFORM, num_warps,
                              g_layout)
        elif kind == _HALF_1:
            dq = _dq_box_step(q_tile, do_tile, k_32, v_32, k_bar, v_bar, phase, c0, c1, c2, _HALF_1_SHIFT,
                              windows, lse2, delta, dq, qk_scale, BLOCK_M, 32, AXIS0_UNIFORM, num_warps,
                              g_layout)
        elif kind == _HALF_2:
            dq = _dq_box_step(q_tile, do_tile, k_32, v_32, k_bar, v_bar, phase, c0, c1, c2, _HALF_2_SHIFT,
                              windows, lse2, delta, dq, qk_scale, BLOCK_M, 32, AXIS0_UNIFORM, num_warps,
                              g_layout)
        else:
            dq = _dq_box_step(q_tile, do_tile, k_64, v_64, k_bar, v_bar, phase, c0, c1, c2, _TALL_SHIFT,
                              windows, lse2, delta, dq, qk_scale, BLOCK_M, 64, AXIS0_UNIFORM, num_warps,
                              g_layout)
        kind, c0, c1, c2 = nkind, n0, n1, n2

    # q's buffer carries dq out (every product that read it has completed).
    q_tile.store((dq * scale).to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(DQ_DESC, q_origin, q_smem)
    tma.store_wait(pendings=0)


_LAUNCH = Launcher(_na_dq_boxes)
# Repeat calls launch with only the tensors filled in (``launcher.BoundLaunch``).
_BOUND = BoundLaunches()


def na_dq_boxes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, lse: torch.Tensor,
                delta: torch.Tensor, plan, *, scale: float, dq: torch.Tensor | None = None,
                max_registers: int | None = None, scope_checked: bool = False) -> torch.Tensor:
    """``dq``, like ``q`` ``[B, S, H_q, D]``, of softmax attention over ``plan`` for grid-order
    ``q``, ``do``, ``k``, ``v`` ``[B, S, H_kv, D]``, with the forward's ``lse`` and ``delta =
    rowsum(o * do)`` (float32 ``[B, H_q, S]``, contiguous), each query tile over its key boxes
    (``key_boxes.key_boxes(plan)``); ``boxes_supported(q, k, v, plan)`` must hold, and do must
    be laid out as q. ``dq``: where to write (contiguous, like ``q``), else a new tensor;
    ``max_registers``: a register cap per thread; ``scope_checked``: the caller has checked
    that scope (``backward_route`` does). Launched on the current stream."""
    if not scope_checked and not (boxes_supported(q, k, v, plan) and do.shape == q.shape
                                  and do.stride() == q.stride() and do.dtype == q.dtype):
        raise ValueError("na_dq_boxes: this call is outside the key-box kernels' scope (see "
                         "na_forward_boxes.boxes_supported; do laid out as q)")
    batch, heads, dim = q.shape[0], q.shape[2], q.shape[3]
    seq = plan_rows(plan)
    check_row_stats("na_dq_boxes", lse, delta, (batch, heads, seq))
    dq = torch.empty_like(q) if dq is None else dq
    key = (id(plan), q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), do.stride(),
           dq.stride(), q.dtype, q.device, scale, max_registers)
    bound = _BOUND.get(key, (plan,))
    if bound is not None:
        bound(q, do, dq, *(k, v) * len(key_boxes.EXTENTS), lse, delta)
        return dq
    boxes = key_boxes.key_boxes(plan)
    q_box = grid_box(plan, plan.block_m)
    rows = [_descriptor(t, plan, q_box) for t in (q, do, dq)]
    kv = [_descriptor(t, plan, extent) for extent in key_boxes.EXTENTS.values() for t in (k, v)]
    grid = (plan.n_q_tiles, batch * heads)
    args = (*rows, *kv, lse, delta, boxes.counts, boxes.entries, boxes.width, plan.na_params, heads,
            heads // k.shape[2], seq, scale, scale * LOG2E)
    options = dict(HEAD_D=dim, BLOCK_M=plan.block_m, NA_STATIC=static_switches(q, plan),
                   AXIS0_UNIFORM=q_box[0] == 1, num_warps=4,
                   **({"maxnreg": max_registers} if max_registers else {}))
    _LAUNCH[grid](*args, **options)
    _BOUND.remember(key, _LAUNCH, grid, args, options, live=tuple(range(len(rows) + len(kv) + 2)),
                    owners=(plan,))
    return dq
