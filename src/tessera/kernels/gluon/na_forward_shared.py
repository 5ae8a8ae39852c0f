"""Forward of a tiled-order N-D neighborhood in which ``QUERIES`` consecutive query tiles share one
stream of key tiles, in Gluon (Hopper, sm_90). Experimental and not routed: slower than the routed
forward so far (below). Timed against it by ``benchmarks/gpu_forward_shared.py``, checked against
float64 by ``tests/kernels/test_gluon_gpu.py``.

Why: on an H200 the routed forward of the 2-D kernel-17 suite case (``na_forward``, one query
tile per program, three programs per SM at D = 128) keeps L2 68% busy and waits on the mbarriers
of its K/V bulk copies in about 10% of its stall samples, while its mask costs 2% of its time (Nsight Compute and
``benchmarks/gpu_forward_ablation.py``, 2026-12-03). Each key tile is copied once per query tile
that lists it (nine times over for 8 x 8 boxes and kernel 17). Here one program holds
``QUERIES`` query tiles (three warpgroups, as many as three routed programs per SM) and one
producer warp copies the union of their key lists once into a ring of ``NUM_BUF`` K/V slots:
about 15 copies for three adjacent 8 x 8 boxes instead of 27.

Measured (H200, bf16, 2-D 128 x 128 kernel 17, B = 1, H = 16): L2 43% busy instead of 68%, but
0.225 ms against the routed 0.190 at D = 128 and 0.178 against 0.126 at D = 64, the same with
3 or 5 ring slots (``results/tuning/2026-12-03-h200-forward-shared.json``). The three
warpgroups move in step through the shared ring (each waits for every entry and frees it), and
each runs the plain sequential loop (no P @ V left in flight, which the routed forward does).
Its SASS shows a third cause: every entry waits on a global load of its membership bit before it
can branch (``LDG`` then ``R2UR`` at the loop's top; estimated from the latency, an L2 hit per
entry is some 15-20% of a program's time). ``membership_word`` gathers a consumer's bits once before the loop; compiled
for sm_90 without a GPU (the per-entry load is gone from the loop), not yet run on one.

Scope as ``na_forward.supports`` without a dilation fold; no padded extents (``NA_PADDED``),
no batch axis view. Host side: ``shared_lists`` builds, per group of ``QUERIES`` consecutive
query tiles (per mapped head), the sorted union of their listed key tiles and, per union
entry, a bit per query tile that lists it.

Program: (group, batch x query head). Consumer warpgroup ``w`` takes query tile ``QUERIES * g +
w`` (none past the last tile): for every union entry it waits for the slot, and, when its bit
is set, runs QK^T, the neighborhood penalty (zero on full tiles), the online softmax and P @ V;
then it hands the slot back (each slot's free barrier counts ``QUERIES`` arrivals).
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

from ..triton import masks
from ..triton.flash_fwd import LOG2E, grid_box
from ..triton.launcher import Launcher
from ..triton.row_addressing import bulk_copy_batch, row_tile_origin
from .layouts import wgmma_accumulator, wgmma_register_operand
from .na_forward import (PRODUCER_REGISTERS, _descriptor, _issue_kv, _penalty, _query_tile_start,
                         _store_output, _tile_softmax, batch_axis, plan_rows, supports)

QUERIES = 3


@gluon.jit
def _shared_consumer(q_bufs, k_bufs, v_bufs, q_bars, kv_bars, free_bars, O_DESC, LSE, U_IDX, U_BITS,
                     NA, grow, total, g, batch, lse_base, h, U_W, N_Q_TILES, qk_scale,
                     WHICH: gl.constexpr, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr,
                     BLOCK_N: gl.constexpr, NA_STATIC: gl.constexpr, NUM_BUF: gl.constexpr,
                     QUERIES: gl.constexpr, MASKED: gl.constexpr,
                     SCALE_NONNEGATIVE: gl.constexpr, LAZY_RESCALE: gl.constexpr,
                     MEMBERSHIP_WORD: gl.constexpr):
    """Warpgroup ``WHICH``: query tile ``QUERIES * g + WHICH`` over the union stream. With
    ``MEMBERSHIP_WORD`` its bits of the group's entries (at most 64) are gathered into one int64
    before the loop, so no entry waits on a load of its bit."""
    dtype: gl.constexpr = q_bufs.dtype
    s_layout: gl.constexpr = wgmma_accumulator(4, BLOCK_N)
    o_layout: gl.constexpr = wgmma_accumulator(4, HEAD_D)
    p_layout: gl.constexpr = wgmma_register_operand(o_layout)
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    m = g * QUERIES + WHICH
    valid = m < N_Q_TILES
    offs_m, offs_n, windows, acc, m_i, l_i, s_zero = _query_tile_start(
        m, NA, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, s_layout, o_layout)
    q_smem = q_bufs.index(WHICH)
    q_tile = q_smem.reshape([BLOCK_M, HEAD_D])
    if MEMBERSHIP_WORD:
        entries_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
        offs_e = gl.arange(0, 64, layout=entries_layout)
        marks = gl.load(U_BITS + grow.to(gl.int64) * U_W + offs_e, mask=offs_e < total, other=0)
        word = gl.sum(((marks >> WHICH) & 1).to(gl.int64) << offs_e.to(gl.int64), 0)
    if valid:
        mbarrier.wait(q_bars.index(WHICH), 0)
    for t in range(total):
        slot = t % NUM_BUF
        mbarrier.wait(kv_bars.index(slot), (t // NUM_BUF) & 1)
        entry = grow.to(gl.int64) * U_W + t
        if MEMBERSHIP_WORD:
            listed = ((word >> t) & 1) != 0
        else:
            listed = ((gl.load(U_BITS + entry) >> WHICH) & 1) != 0
        if listed & valid:
            s = warpgroup_mma(q_tile, k_bufs.index(slot).reshape([BLOCK_N, HEAD_D]).permute((1, 0)),
                              s_zero, use_acc=False, is_async=True)
            if MASKED:
                penalty = _penalty(gl.load(U_IDX + entry), windows, offs_n, NA, BLOCK_N, NA_STATIC)
            else:
                penalty = 0.0
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            p, acc, m_i, l_i = _tile_softmax(s, penalty, m_i, l_i, acc, qk_scale, rows_o, MASKED,
                                             SCALE_NONNEGATIVE, LAZY_RESCALE)
            acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout),
                                v_bufs.index(slot).reshape([BLOCK_N, HEAD_D]), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(free_bars.index(slot), count=1)
    if valid:
        q_origin = row_tile_origin(m * BLOCK_M, batch, h, NA, 0, NA_STATIC, True, HEAD_D)
        _store_output(acc, m_i, l_i, offs_m, m, q_smem, O_DESC, q_origin, LSE, lse_base, NA,
                      BLOCK_M, HEAD_D, NA_STATIC, rows_o)


@gluon.jit
def _shared_producer(K_DESC, V_DESC, k_bufs, v_bufs, kv_bars, free_bars, U_IDX, grow, total, U_W,
                     batch, hk, NA, NA_STATIC: gl.constexpr, HEAD_D: gl.constexpr,
                     BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr):
    """One warp that copies the union's key tiles into the ring, each slot once every consumer
    has handed it back."""
    for t in range(total):
        slot = t % NUM_BUF
        mbarrier.wait(free_bars.index(slot), ((t // NUM_BUF) & 1) ^ 1)
        tile = gl.load(U_IDX + grow.to(gl.int64) * U_W + t)
        _issue_kv(K_DESC, V_DESC, k_bufs, v_bufs, kv_bars, tile, slot, batch, hk, NA, NA_STATIC,
                  HEAD_D, BLOCK_N)


@gluon.jit
def _na_fwd_shared(Q_DESC, K_DESC, V_DESC, O_DESC, LSE, U_CNT, U_IDX, U_BITS, NA, H_Q, GROUP, S_Q,
                   MAP_HEADS, N_Q_TILES, N_GROUPS, U_W, qk_scale, HEAD_D: gl.constexpr,
                   BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, NA_STATIC: gl.constexpr,
                   NUM_BUF: gl.constexpr, QUERIES: gl.constexpr, MASKED: gl.constexpr,
                   SCALE_NONNEGATIVE: gl.constexpr, LAZY_RESCALE: gl.constexpr,
                   MEMBERSHIP_WORD: gl.constexpr, CONSUMER_REGISTERS: gl.constexpr,
                   num_warps: gl.constexpr):
    g = gl.program_id(0)
    entry_head = gl.program_id(1)
    b = entry_head // H_Q
    h = entry_head - b * H_Q
    batch = bulk_copy_batch(b, (b * 0).to(gl.int64), NA, NA_STATIC)
    lse_base = (b * H_Q + h).to(gl.int64) * S_Q
    hk = h // GROUP
    grow = (h % MAP_HEADS) * N_GROUPS + g
    total = gl.load(U_CNT + grow)
    dtype: gl.constexpr = Q_DESC.dtype

    q_bufs = gl.allocate_shared_memory(dtype, [QUERIES] + Q_DESC.block_type.shape, Q_DESC.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + K_DESC.block_type.shape, K_DESC.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + V_DESC.block_type.shape, V_DESC.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [QUERIES, 1], mbarrier.MBarrierLayout())
    kv_bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    free_bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(QUERIES):
        mbarrier.init(q_bars.index(i), count=1)
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(kv_bars.index(i), count=1)
        mbarrier.init(free_bars.index(i), count=QUERIES)
    for i in gl.static_range(QUERIES):
        m = g * QUERIES + i
        if m < N_Q_TILES:
            q_origin = row_tile_origin(m * BLOCK_M, batch, h, NA, 0, NA_STATIC, True, HEAD_D)
            mbarrier.expect(q_bars.index(i), Q_DESC.block_type.nbytes)
            tma.async_copy_global_to_shared(Q_DESC, q_origin, q_bars.index(i), q_bufs.index(i))
    gl.warp_specialize([
        (_shared_consumer, (q_bufs, k_bufs, v_bufs, q_bars, kv_bars, free_bars, O_DESC, LSE, U_IDX,
                            U_BITS, NA, grow, total, g, batch, lse_base, h, U_W, N_Q_TILES,
                            qk_scale, 0, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, NUM_BUF, QUERIES,
                            MASKED, SCALE_NONNEGATIVE, LAZY_RESCALE, MEMBERSHIP_WORD)),
        (_shared_consumer, (q_bufs, k_bufs, v_bufs, q_bars, kv_bars, free_bars, O_DESC, LSE, U_IDX,
                            U_BITS, NA, grow, total, g, batch, lse_base, h, U_W, N_Q_TILES,
                            qk_scale, 1, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, NUM_BUF, QUERIES,
                            MASKED, SCALE_NONNEGATIVE, LAZY_RESCALE, MEMBERSHIP_WORD)),
        (_shared_consumer, (q_bufs, k_bufs, v_bufs, q_bars, kv_bars, free_bars, O_DESC, LSE, U_IDX,
                            U_BITS, NA, grow, total, g, batch, lse_base, h, U_W, N_Q_TILES,
                            qk_scale, 2, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, NUM_BUF, QUERIES,
                            MASKED, SCALE_NONNEGATIVE, LAZY_RESCALE, MEMBERSHIP_WORD)),
        (_shared_producer, (K_DESC, V_DESC, k_bufs, v_bufs, kv_bars, free_bars, U_IDX, grow, total,
                            U_W, batch, hk, NA, NA_STATIC, HEAD_D, BLOCK_N, NUM_BUF)),
    ], [4, 4, 1], [CONSUMER_REGISTERS, CONSUMER_REGISTERS, PRODUCER_REGISTERS])


_LAUNCH = Launcher(_na_fwd_shared)
# id(plan) -> (plan, device, (U_CNT, U_IDX, U_BITS)).
_LISTS: dict = {}
MAX_LISTS = 64


def shared_lists(plan, device, queries: int = QUERIES):
    """``(U_CNT [R], U_IDX [R, W], U_BITS [R, W])`` int32 for ``R = map_heads * groups`` rows,
    ``groups = ceil(n_q_tiles / queries)``: per group of ``queries`` consecutive query tiles (per
    mapped head) the number of distinct key tiles they list, those tiles in increasing order, and
    for each a bit per query tile of the group (bit ``w``: tile ``queries * g + w``) that lists
    it. Kept per plan."""
    hit = _LISTS.get(id(plan))
    if hit is not None and hit[0] is plan and hit[1] == device:
        return hit[2]
    rows = plan.rows
    part_count, full_count = (c.cpu().reshape(-1).tolist() for c in (rows.part_count, rows.full_count))
    part_index = rows.part_index.cpu().reshape(len(part_count), -1)
    full_index = rows.full_index.cpu().reshape(len(full_count), -1)
    n_q = plan.n_q_tiles
    groups = -(-n_q // queries)
    counts, indices, bits = [], [], []
    for head in range(plan.map_heads):
        for g in range(groups):
            members: dict[int, int] = {}
            for w in range(queries):
                m = g * queries + w
                if m >= n_q:
                    break
                r = head * n_q + m
                listed = (part_index[r, :part_count[r]].tolist()
                          + full_index[r, :full_count[r]].tolist())
                for tile in listed:
                    members[tile] = members.get(tile, 0) | (1 << w)
            tiles = sorted(members)
            counts.append(len(tiles))
            indices.append(tiles)
            bits.append([members[t] for t in tiles])
    width = max(1, max(counts))
    index = torch.zeros(len(counts), width, dtype=torch.int32)
    flags = torch.zeros(len(counts), width, dtype=torch.int32)
    for r, (tiles, marks) in enumerate(zip(indices, bits)):
        index[r, :len(tiles)] = torch.tensor(tiles, dtype=torch.int32)
        flags[r, :len(marks)] = torch.tensor(marks, dtype=torch.int32)
    lists = (torch.tensor(counts, dtype=torch.int32).to(device), index.to(device), flags.to(device))
    if len(_LISTS) >= MAX_LISTS:
        _LISTS.clear()
    _LISTS[id(plan)] = (plan, device, lists)
    return lists


def shared_supports(q, k, v, plan) -> bool:
    """Whether ``na_forward_shared`` handles this call: ``na_forward.supports`` without a fold,
    64 x 64 tiles, no padded extent and no batch axis view."""
    return (supports(q, k, v, plan) and plan.block_m == 64 and plan.block_n == 64
            and not plan.na_static & masks.NA_PADDED_BIT and not batch_axis(q, plan))


def na_forward_shared(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan, *, scale: float,
                      num_buffers: int = 3, lazy_rescale: float = 8.0,
                      consumer_registers: int = 152,
                      membership_word: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``na_forward``'s ``(o, lse)`` with ``QUERIES`` query tiles per program sharing one stream of
    key tiles (``num_buffers`` K/V ring slots, at least 2; ``consumer_registers`` per consumer
    thread, the producer warp at ``PRODUCER_REGISTERS``; ``membership_word``: each consumer
    gathers its bits of the group's entries once, groups of at most 64 entries);
    ``shared_supports`` must hold."""
    if not shared_supports(q, k, v, plan):
        raise ValueError("na_forward_shared: this call is outside its scope (see shared_supports)")
    if num_buffers < 2:
        raise ValueError(f"na_forward_shared: num_buffers must be at least 2, got {num_buffers}")
    if consumer_registers % 8 or not 128 <= consumer_registers <= 160:
        # The program's 16 warps share the SM's 65,536 registers (launched at 128 per thread).
        raise ValueError(f"na_forward_shared: consumer_registers must be a multiple of 8 in "
                         f"[128, 160], got {consumer_registers}")
    batch, heads, dim = q.shape[0], q.shape[2], q.shape[3]
    o = torch.empty_like(q)
    lse = torch.empty(batch, heads, plan_rows(plan), dtype=torch.float32, device=q.device)
    u_cnt, u_idx, u_bits = shared_lists(plan, q.device)
    if membership_word and u_idx.shape[1] > 64:
        raise ValueError(f"na_forward_shared: membership_word needs at most 64 key tiles per group, "
                         f"the plan's groups list up to {u_idx.shape[1]}")
    q_box, k_box = grid_box(plan, plan.block_m), grid_box(plan, plan.block_n)
    q_desc, o_desc = (_descriptor(t, plan, q_box) for t in (q, o))
    k_desc, v_desc = (_descriptor(t, plan, k_box) for t in (k, v))
    groups = -(-plan.n_q_tiles // QUERIES)
    grid = (groups, batch * heads)
    args = (q_desc, k_desc, v_desc, o_desc, lse, u_cnt, u_idx, u_bits, plan.na_params, heads,
            heads // k.shape[2], plan_rows(plan), plan.map_heads, plan.n_q_tiles, groups,
            u_idx.shape[1], scale * LOG2E)
    _LAUNCH[grid](*args, HEAD_D=dim, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n,
                  NA_STATIC=plan.na_static, NUM_BUF=num_buffers, QUERIES=QUERIES,
                  MASKED=plan.mask_mode == masks.MASK_NEIGHBORHOOD, SCALE_NONNEGATIVE=scale >= 0,
                  LAZY_RESCALE=float(lazy_rescale), MEMBERSHIP_WORD=membership_word,
                  CONSUMER_REGISTERS=consumer_registers,
                  num_warps=4, maxnreg=128)
    return o, lse
