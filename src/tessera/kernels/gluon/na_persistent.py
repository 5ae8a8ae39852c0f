"""Persistent forward of a tiled-order N-D neighborhood in grid order, in Gluon (Hopper, sm_90).

Same scope, inputs and outputs as ``na_forward`` (see ``na_forward.supports``). Where
``na_forward`` launches one program per (query tile, batch x query head), this kernel launches
as many programs as fit on the GPU at once (two per SM) and each walks work items (query tile,
batch x head) in strides of the grid, query tiles of one head consecutive. A producer warp
(warp specialization, 232 / 24 registers under the launch cap of 128) copies each item's q into
one of ``Q_BUF`` shared-memory slots and its K and V tiles into a ring of ``NUM_BUF`` slots,
and moves on to the next item as soon as slots free up: the next item's q and first key tiles
arrive while the computing warpgroup finishes the current one. That hides the per-item start
(q's load, the first tiles' latency) which dominates when an item lists few key tiles (blocked
attention lists 4). The warpgroup hands back q's slot after the item's last QK^T and writes o
and lse from registers, so no slot waits on a store.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from ..triton import masks
from ..triton.flash_fwd import LOG2E, grid_box
from ..triton.na_mask import na_query_windows
from ..triton.row_addressing import memory_rows, row_tile_origin
from .na_forward import PRODUCER_REGISTERS, _descriptor, _issue_kv, _softmax_step, _tile_of, supports

# Shared memory one SM gives its programs (H100 / H200), and programs per SM the register cap
# allows (two: 2 x 8 warps x 128 registers fill the register file).
_SHARED_PER_SM = 232448
_PROGRAMS_PER_SM = 2


@gluon.jit
def _item(item, H_Q, GROUP, MAP_HEADS, N_Q_TILES, PART_CNT, FULL_CNT):
    """``(m, b, h, hk, row, n_part, total)`` of work item ``item``: query tile ``m`` of batch
    entry ``b`` and query head ``h`` (key head ``hk``), its tile-map row, partial and listed
    key tiles."""
    m = item % N_Q_TILES
    bh = item // N_Q_TILES
    b = bh // H_Q
    h = bh - b * H_Q
    row = (h % MAP_HEADS) * N_Q_TILES + m
    n_part = gl.load(PART_CNT + row)
    return m, b, h, h // GROUP, row, n_part, n_part + gl.load(FULL_CNT + row)


@gluon.jit
def _producer(Q_DESC, K_DESC, V_DESC, q_bufs, k_bufs, v_bufs, q_bars, q_free, kv_bars, free_bars,
              PART_CNT, PART_IDX, FULL_CNT, FULL_IDX, NA, H_Q, GROUP, MAP_HEADS, N_Q_TILES, N_ITEMS,
              PART_W, FULL_W, NA_STATIC: gl.constexpr, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr,
              BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr, Q_BUF: gl.constexpr):
    """One warp: for each of this program's items, q into slot ``j % Q_BUF`` once the consumer
    has handed it back, then the item's key tiles into the ring (tile ``c`` of the program's
    running count into slot ``c % NUM_BUF``). A fresh barrier counts as handed back."""
    c = 0
    j = 0
    for item in range(gl.program_id(0), N_ITEMS, gl.num_programs(0)):
        m, b, h, hk, row, n_part, total = _item(item, H_Q, GROUP, MAP_HEADS, N_Q_TILES, PART_CNT,
                                                FULL_CNT)
        qs = j % Q_BUF
        mbarrier.wait(q_free.index(qs), ((j // Q_BUF) & 1) ^ 1)
        q_origin = row_tile_origin(m * BLOCK_M, (b, 0, 0), h, NA, 0, NA_STATIC, True, HEAD_D)
        mbarrier.expect(q_bars.index(qs), Q_DESC.block_type.nbytes)
        tma.async_copy_global_to_shared(Q_DESC, q_origin, q_bars.index(qs), q_bufs.index(qs))
        for t in range(total):
            slot = c % NUM_BUF
            mbarrier.wait(free_bars.index(slot), ((c // NUM_BUF) & 1) ^ 1)
            _issue_kv(K_DESC, V_DESC, k_bufs, v_bufs, kv_bars,
                      _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, t), slot, b, hk, NA,
                      NA_STATIC, HEAD_D, BLOCK_N)
            c += 1
        j += 1


@gluon.jit
def _consumer(q_bufs, k_bufs, v_bufs, q_bars, q_free, kv_bars, free_bars, O, LSE, PART_CNT,
              PART_IDX, FULL_CNT, FULL_IDX, NA, H_Q, GROUP, S_Q, MAP_HEADS, N_Q_TILES, N_ITEMS,
              PART_W, FULL_W, stride_ob, stride_os, stride_oh, qk_scale, HEAD_D: gl.constexpr,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NA_STATIC: gl.constexpr,
              NUM_BUF: gl.constexpr, Q_BUF: gl.constexpr, MASKED: gl.constexpr,
              WARPS: gl.constexpr):
    """The warpgroup that computes: per item, QK^T, softmax and P @ V over its listed key tiles,
    each slot handed back once read; then o and lse by pointers."""
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1],
                                                       instr_shape=[16, HEAD_D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = q_bufs.dtype

    offs_m = gl.arange(0, BLOCK_M, layout=rows_s)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    offs_mo = gl.arange(0, BLOCK_M, layout=rows_o)
    offs_d = gl.arange(0, HEAD_D, layout=gl.SliceLayout(0, o_layout))
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    c = 0
    j = 0
    for item in range(gl.program_id(0), N_ITEMS, gl.num_programs(0)):
        m, b, h, hk, row, n_part, total = _item(item, H_Q, GROUP, MAP_HEADS, N_Q_TILES, PART_CNT,
                                                FULL_CNT)
        windows = na_query_windows(offs_m[:, None], m * BLOCK_M, NA, NA_STATIC)
        acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, o_layout)
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, rows_s)
        l_i = gl.zeros([BLOCK_M], gl.float32, rows_s)
        qs = j % Q_BUF
        mbarrier.wait(q_bars.index(qs), (j // Q_BUF) & 1)
        q_tile = q_bufs.index(qs).reshape([BLOCK_M, HEAD_D])
        for t in range(total):
            slot = c % NUM_BUF
            tile = _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, t)
            mbarrier.wait(kv_bars.index(slot), (c // NUM_BUF) & 1)
            s = warpgroup_mma(q_tile, k_bufs.index(slot).reshape([BLOCK_N, HEAD_D]).permute((1, 0)),
                              s_zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            mbarrier.arrive(q_free.index(qs), count=1, pred=t == total - 1)
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, tile, windows, offs_n, NA, qk_scale,
                                               BLOCK_N, NA_STATIC, MASKED)
            acc = acc * gl.convert_layout(alpha, rows_o)[:, None]
            acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout),
                                v_bufs.index(slot).reshape([BLOCK_N, HEAD_D]), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(free_bars.index(slot), count=1)
            c += 1
        empty = l_i == 0.0
        l_safe = gl.where(empty, 1.0, l_i)
        o = acc / gl.convert_layout(l_safe, rows_o)[:, None]
        lse = gl.where(empty, float("-inf"), (m_i + gl.log2(l_safe)) * 0.6931471805599453)
        q_mem = memory_rows(offs_m, m * BLOCK_M, NA, 0, NA_STATIC, True).to(gl.int64)
        gl.store(LSE + (b * H_Q + h).to(gl.int64) * S_Q + q_mem, lse)
        o_mem = memory_rows(offs_mo, m * BLOCK_M, NA, 0, NA_STATIC, True).to(gl.int64)
        o_ptrs = (O + b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh
                  + o_mem[:, None] * stride_os + offs_d[None, :])
        gl.store(o_ptrs, o.to(dtype))
        j += 1


@gluon.jit
def _na_fwd_persistent(Q_DESC, K_DESC, V_DESC, O, LSE, PART_CNT, PART_IDX, FULL_CNT, FULL_IDX, NA,
                       H_Q, GROUP, S_Q, MAP_HEADS, N_Q_TILES, N_ITEMS, PART_W, FULL_W, stride_ob,
                       stride_os, stride_oh, qk_scale, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr,
                       BLOCK_N: gl.constexpr, NA_STATIC: gl.constexpr, NUM_BUF: gl.constexpr,
                       Q_BUF: gl.constexpr, MASKED: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = Q_DESC.dtype
    q_bufs = gl.allocate_shared_memory(dtype, [Q_BUF] + Q_DESC.block_type.shape, Q_DESC.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + K_DESC.block_type.shape, K_DESC.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + V_DESC.block_type.shape, V_DESC.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [Q_BUF, 1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [Q_BUF, 1], mbarrier.MBarrierLayout())
    kv_bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    free_bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(Q_BUF):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(q_free.index(i), count=1)
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(kv_bars.index(i), count=1)
        mbarrier.init(free_bars.index(i), count=1)
    gl.warp_specialize([
        (_consumer, (q_bufs, k_bufs, v_bufs, q_bars, q_free, kv_bars, free_bars, O, LSE, PART_CNT,
                     PART_IDX, FULL_CNT, FULL_IDX, NA, H_Q, GROUP, S_Q, MAP_HEADS, N_Q_TILES,
                     N_ITEMS, PART_W, FULL_W, stride_ob, stride_os, stride_oh, qk_scale, HEAD_D,
                     BLOCK_M, BLOCK_N, NA_STATIC, NUM_BUF, Q_BUF, MASKED, num_warps)),
        (_producer, (Q_DESC, K_DESC, V_DESC, q_bufs, k_bufs, v_bufs, q_bars, q_free, kv_bars,
                     free_bars, PART_CNT, PART_IDX, FULL_CNT, FULL_IDX, NA, H_Q, GROUP, MAP_HEADS,
                     N_Q_TILES, N_ITEMS, PART_W, FULL_W, NA_STATIC, HEAD_D, BLOCK_M, BLOCK_N,
                     NUM_BUF, Q_BUF)),
    ], [1], [PRODUCER_REGISTERS])


def shared_bytes(block_m: int, block_n: int, dim: int, num_buffers: int, q_buffers: int) -> int:
    """Shared memory of one program: q slots and the K/V ring (16-bit), plus barriers."""
    return 2 * dim * (q_buffers * block_m + 2 * num_buffers * block_n) + 1024


def na_forward_persistent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan, *, scale: float,
                          num_buffers: int = 2, q_buffers: int = 2,
                          programs: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o [B, S, H_q, D], lse float32 [B, H_q, S])`` of softmax attention over ``plan``, as
    ``na_forward`` computes it (``na_forward.supports`` must hold), by persistent programs.
    ``num_buffers``: K/V ring slots (at least 2); ``q_buffers``: q slots (1 or 2); ``programs``:
    how many to launch (default: as many as fit at once, at most one per work item)."""
    if num_buffers < 2:
        raise ValueError(f"na_forward_persistent: num_buffers must be at least 2, got {num_buffers}")
    if q_buffers not in (1, 2):
        raise ValueError(f"na_forward_persistent: q_buffers must be 1 or 2, got {q_buffers}")
    if not supports(q, k, v, plan):
        raise ValueError("na_forward_persistent: this call is outside the Gluon forward's scope "
                         "(see na_forward.supports)")
    batch, seq, heads, dim = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq, dtype=torch.float32, device=q.device)
    items = plan.n_q_tiles * batch * heads
    if programs is None:
        per_sm = min(_PROGRAMS_PER_SM, _SHARED_PER_SM // shared_bytes(plan.block_m, plan.block_n, dim,
                                                                      num_buffers, q_buffers))
        if per_sm < 1:
            raise ValueError(f"na_forward_persistent: num_buffers={num_buffers}, "
                             f"q_buffers={q_buffers} need more shared memory than an SM has")
        programs = per_sm * torch.cuda.get_device_properties(q.device).multi_processor_count
    programs = max(1, min(programs, items))
    grid = plan.na_values[0:3]
    box = grid_box(plan, plan.block_m)
    descs = [_descriptor(t, grid, box) for t in (q, k, v)]
    rows = plan.rows
    _na_fwd_persistent[(programs,)](
        *descs, o, lse, rows.part_count, rows.part_index, rows.full_count, rows.full_index,
        plan.na_params, heads, heads // k.shape[2], seq, plan.map_heads, plan.n_q_tiles, items,
        rows.part_width, rows.full_width, o.stride(0), o.stride(1), o.stride(2), scale * LOG2E,
        HEAD_D=dim, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, NA_STATIC=plan.na_static,
        NUM_BUF=num_buffers, Q_BUF=q_buffers, MASKED=plan.mask_mode == masks.MASK_NEIGHBORHOOD,
        num_warps=4, maxnreg=128)
    return o, lse
