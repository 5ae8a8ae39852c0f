"""Forward of a tiled-order N-D neighborhood with ``TURNS`` query tiles per program whose
warpgroups take turns at the tensor cores, in Gluon (Hopper, sm_90). Experimental and not
routed: timed against the routed forward by ``benchmarks/gpu_forward_turns.py``, checked against
float64 by ``tests/kernels/test_gluon_gpu.py``.

Why: the routed forward (``na_forward``, the ``defer_pv`` loop) runs three programs of one
warpgroup per SM at D = 128 and leaves them to the warp schedulers, so their QK^T products and
softmaxes may coincide. Here one program holds the same three warpgroups, each with its own
query tile, K/V slots and loop (``na_forward._deferred_pv_loop``), and each QK^T is issued in
its warpgroup's turn (``turns``: FA3's ping-pong on named barriers), so the warpgroups'
products reach the tensor cores in rotation while the others run their softmax. A warpgroup
whose query tile lists fewer key tiles than the others' (or that has none, past the last query
tile) takes empty turns until every warpgroup of the program is done.

Scope as ``na_forward_shared.shared_supports``: ``na_forward.supports`` without a dilation
fold, 64 x 64 tiles, no padded extent, no batch axis view.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma

from ..triton import masks
from ..triton.flash_fwd import LOG2E, grid_box
from ..triton.launcher import Launcher
from ..triton.row_addressing import bulk_copy_batch, row_tile_origin
from .layouts import wgmma_accumulator, wgmma_register_operand
from .na_forward import _deferred_pv_loop, _descriptor, _query_tile_start, _store_output, plan_rows
from . import one_shot_workers
from .na_forward_shared import shared_supports
from .turns import pass_turn, take_turn

TURNS = 3


@gluon.jit
def _warpgroup_buffers(Q_DESC, K_DESC, V_DESC):
    """One warpgroup's shared memory, as ``na_forward``'s deferred loop takes it: ``(q_smem,
    k_bufs [1], v_bufs [2], q_bar, kv_bars [1], v_bars [2])``, the barriers initialized."""
    dtype: gl.constexpr = Q_DESC.dtype
    q_smem = gl.allocate_shared_memory(dtype, Q_DESC.block_type.shape, Q_DESC.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [1] + K_DESC.block_type.shape, K_DESC.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [2] + V_DESC.block_type.shape, V_DESC.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kv_bars = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    mbarrier.init(kv_bars.index(0), count=1)
    mbarrier.init(v_bars.index(0), count=1)
    mbarrier.init(v_bars.index(1), count=1)
    return q_smem, k_bufs, v_bufs, q_bar, kv_bars, v_bars


@gluon.jit
def _turn_taker(q_smem, k_bufs, v_bufs, q_bar, kv_bars, v_bars,
                Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX, FULL_CNT, FULL_IDX, NA,
                g, batch, lse_base, h, hk, head_row, N_Q_TILES, PART_W, FULL_W, qk_scale,
                WHICH: gl.constexpr, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr,
                BLOCK_N: gl.constexpr, NA_STATIC: gl.constexpr, TURNS: gl.constexpr,
                MASKED: gl.constexpr, SCALE_NONNEGATIVE: gl.constexpr,
                LAZY_RESCALE: gl.constexpr, TAKE_TURNS: gl.constexpr):
    """Warpgroup ``WHICH``: query tile ``TURNS * g + WHICH`` (none past the last) through the
    deferred loop with turns, then as many empty turns as the program's longest key list needs
    (without ``TAKE_TURNS`` the same program with no turns: for comparison)."""
    s_layout: gl.constexpr = wgmma_accumulator(4, BLOCK_N)
    o_layout: gl.constexpr = wgmma_accumulator(4, HEAD_D)
    p_layout: gl.constexpr = wgmma_register_operand(o_layout)
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    turns = 0
    for w in gl.static_range(TURNS):
        other = gl.minimum(g * TURNS + w, N_Q_TILES - 1)
        count = gl.load(PART_CNT + head_row + other) + gl.load(FULL_CNT + head_row + other)
        turns = gl.maximum(turns, gl.where(g * TURNS + w < N_Q_TILES, count, 0))
    if TAKE_TURNS and WHICH == TURNS - 1:
        pass_turn(0)

    m = g * TURNS + WHICH
    if m < N_Q_TILES:
        row = head_row + m
        n_part = gl.load(PART_CNT + row)
        total = n_part + gl.load(FULL_CNT + row)
        q_origin = row_tile_origin(m * BLOCK_M, batch, h, NA, 0, NA_STATIC, True, HEAD_D)
        mbarrier.expect(q_bar, Q_DESC.block_type.nbytes)
        tma.async_copy_global_to_shared(Q_DESC, q_origin, q_bar, q_smem)
        offs_m, offs_n, windows, acc, m_i, l_i, s_zero = _query_tile_start(
            m, NA, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, s_layout, o_layout)
        mbarrier.wait(q_bar, 0)
        acc, m_i, l_i = _deferred_pv_loop(q_smem.reshape([BLOCK_M, HEAD_D]), k_bufs, v_bufs, kv_bars,
                                          v_bars, K_DESC, V_DESC, PART_IDX, FULL_IDX, NA, row, n_part,
                                          total, batch, hk, PART_W, FULL_W, windows, offs_n, acc,
                                          m_i, l_i, s_zero, qk_scale, HEAD_D, BLOCK_N, NA_STATIC,
                                          rows_o, p_layout, MASKED, SCALE_NONNEGATIVE,
                                          LAZY_RESCALE, 0, TURNS if TAKE_TURNS else 0, WHICH)
        _store_output(acc, m_i, l_i, offs_m, m, q_smem, O_DESC, q_origin, LSE, lse_base, NA,
                      BLOCK_M, HEAD_D, NA_STATIC, rows_o)
    else:
        total = 0
    if TAKE_TURNS:
        for _ in range(total, turns):
            take_turn(WHICH)
            pass_turn((WHICH + 1) % TURNS)
        if WHICH == 0:
            take_turn(0)


@gluon.jit
def _turns_program(Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX, FULL_CNT, FULL_IDX, NA,
                   H_Q, GROUP, S_Q, MAP_HEADS, N_Q_TILES, PART_W, FULL_W, qk_scale,
                   HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                   NA_STATIC: gl.constexpr, TURNS: gl.constexpr, MASKED: gl.constexpr,
                   SCALE_NONNEGATIVE: gl.constexpr, LAZY_RESCALE: gl.constexpr,
                   TAKE_TURNS: gl.constexpr, WORKER_REGISTERS: gl.constexpr):
    """One program: ``TURNS`` (2 or 3) query tiles, one warpgroup each (the default partition
    and one or two workers)."""
    g = gl.program_id(0)
    entry_head = gl.program_id(1)
    b = entry_head // H_Q
    h = entry_head - b * H_Q
    batch = bulk_copy_batch(b, (b * 0).to(gl.int64), NA, NA_STATIC)
    lse_base = (b * H_Q + h).to(gl.int64) * S_Q
    head_row = (h % MAP_HEADS) * N_Q_TILES
    hk = h // GROUP
    first = _warpgroup_buffers(Q_DESC, K_DESC, V_DESC)
    second = _warpgroup_buffers(Q_DESC, K_DESC, V_DESC)
    if TURNS == 3:
        third = _warpgroup_buffers(Q_DESC, K_DESC, V_DESC)
        gl.warp_specialize([
            (_turn_taker, (first[0], first[1], first[2], first[3], first[4], first[5],
                           Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX,
                           FULL_CNT, FULL_IDX, NA, g, batch, lse_base, h, hk, head_row, N_Q_TILES,
                           PART_W, FULL_W, qk_scale, 0, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, TURNS,
                           MASKED, SCALE_NONNEGATIVE, LAZY_RESCALE, TAKE_TURNS)),
            (_turn_taker, (second[0], second[1], second[2], second[3], second[4], second[5],
                           Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX,
                           FULL_CNT, FULL_IDX, NA, g, batch, lse_base, h, hk, head_row, N_Q_TILES,
                           PART_W, FULL_W, qk_scale, 1, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, TURNS,
                           MASKED, SCALE_NONNEGATIVE, LAZY_RESCALE, TAKE_TURNS)),
            (_turn_taker, (third[0], third[1], third[2], third[3], third[4], third[5],
                           Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX,
                           FULL_CNT, FULL_IDX, NA, g, batch, lse_base, h, hk, head_row, N_Q_TILES,
                           PART_W, FULL_W, qk_scale, 2, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, TURNS,
                           MASKED, SCALE_NONNEGATIVE, LAZY_RESCALE, TAKE_TURNS)),
        ], [4, 4], [WORKER_REGISTERS, WORKER_REGISTERS])
    else:
        gl.warp_specialize([
            (_turn_taker, (first[0], first[1], first[2], first[3], first[4], first[5],
                           Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX,
                           FULL_CNT, FULL_IDX, NA, g, batch, lse_base, h, hk, head_row, N_Q_TILES,
                           PART_W, FULL_W, qk_scale, 0, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, TURNS,
                           MASKED, SCALE_NONNEGATIVE, LAZY_RESCALE, TAKE_TURNS)),
            (_turn_taker, (second[0], second[1], second[2], second[3], second[4], second[5],
                           Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX,
                           FULL_CNT, FULL_IDX, NA, g, batch, lse_base, h, hk, head_row, N_Q_TILES,
                           PART_W, FULL_W, qk_scale, 1, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, TURNS,
                           MASKED, SCALE_NONNEGATIVE, LAZY_RESCALE, TAKE_TURNS)),
        ], [4], [WORKER_REGISTERS])


@gluon.jit
def _na_fwd_turns(Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX, FULL_CNT, FULL_IDX, NA,
                  H_Q, GROUP, S_Q, MAP_HEADS, N_Q_TILES, PART_W, FULL_W, qk_scale,
                  HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                  NA_STATIC: gl.constexpr, TURNS: gl.constexpr, MASKED: gl.constexpr,
                  SCALE_NONNEGATIVE: gl.constexpr, LAZY_RESCALE: gl.constexpr,
                  TAKE_TURNS: gl.constexpr, WORKER_REGISTERS: gl.constexpr,
                  num_warps: gl.constexpr):
    _turns_program(Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX, FULL_CNT, FULL_IDX, NA,
                   H_Q, GROUP, S_Q, MAP_HEADS, N_Q_TILES, PART_W, FULL_W, qk_scale, HEAD_D,
                   BLOCK_M, BLOCK_N, NA_STATIC, TURNS, MASKED, SCALE_NONNEGATIVE, LAZY_RESCALE,
                   TAKE_TURNS, WORKER_REGISTERS)


@gluon.jit
def _na_fwd_turns_one_shot(Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX, FULL_CNT,
                           FULL_IDX, NA, H_Q, GROUP, S_Q, MAP_HEADS, N_Q_TILES, PART_W, FULL_W,
                           qk_scale, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr,
                           BLOCK_N: gl.constexpr, NA_STATIC: gl.constexpr, TURNS: gl.constexpr,
                           MASKED: gl.constexpr, SCALE_NONNEGATIVE: gl.constexpr,
                           LAZY_RESCALE: gl.constexpr, TAKE_TURNS: gl.constexpr,
                           WORKER_REGISTERS: gl.constexpr, num_warps: gl.constexpr):
    """``_na_fwd_turns`` with its workers leaving after their partition (``one_shot_workers``)."""
    _turns_program(Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX, FULL_CNT, FULL_IDX, NA,
                   H_Q, GROUP, S_Q, MAP_HEADS, N_Q_TILES, PART_W, FULL_W, qk_scale, HEAD_D,
                   BLOCK_M, BLOCK_N, NA_STATIC, TURNS, MASKED, SCALE_NONNEGATIVE, LAZY_RESCALE,
                   TAKE_TURNS, WORKER_REGISTERS)


one_shot_workers.register(_na_fwd_turns_one_shot.__name__)
_LAUNCH = Launcher(_na_fwd_turns)
_LAUNCH_ONE_SHOT = Launcher(_na_fwd_turns_one_shot)


def na_forward_turns(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan, *, scale: float,
                     lazy_rescale: float = 8.0, registers: int = 168,
                     take_turns: bool = True, one_shot: bool = False,
                     tiles_per_program: int = TURNS) -> tuple[torch.Tensor, torch.Tensor]:
    """``na_forward``'s ``(o, lse)`` with ``tiles_per_program`` (2 or 3) query tiles per program,
    their warpgroups taking turns to issue QK^T (``take_turns=False``: the same program without
    turns); every warpgroup at ``registers`` per thread (a multiple of 8 from 128 to 65,536 /
    (128 ``tiles_per_program``), at most 240: the program's warps share the SM's registers);
    ``one_shot``: the workers leave after their partition (``one_shot_workers``: wgmmas not
    serialized); ``shared_supports`` must hold."""
    if not shared_supports(q, k, v, plan):
        raise ValueError("na_forward_turns: this call is outside its scope (see "
                         "na_forward_shared.shared_supports)")
    if tiles_per_program not in (2, 3):
        raise ValueError(f"na_forward_turns: tiles_per_program must be 2 or 3, got {tiles_per_program}")
    most = min(240, 65536 // (128 * tiles_per_program) // 8 * 8)
    if registers % 8 or not 128 <= registers <= most:
        raise ValueError(f"na_forward_turns: registers must be a multiple of 8 in [128, {most}], "
                         f"got {registers}")
    batch, heads, dim = q.shape[0], q.shape[2], q.shape[3]
    o = torch.empty_like(q)
    lse = torch.empty(batch, heads, plan_rows(plan), dtype=torch.float32, device=q.device)
    q_box, k_box = grid_box(plan, plan.block_m), grid_box(plan, plan.block_n)
    q_desc, o_desc = (_descriptor(t, plan, q_box) for t in (q, o))
    k_desc, v_desc = (_descriptor(t, plan, k_box) for t in (k, v))
    rows = plan.rows
    grid = (-(-plan.n_q_tiles // tiles_per_program), batch * heads)
    launch = _LAUNCH_ONE_SHOT if one_shot else _LAUNCH
    launch[grid](q_desc, k_desc, v_desc, o_desc, lse, rows.part_count, rows.part_index,
                  rows.full_count, rows.full_index, plan.na_params, heads, heads // k.shape[2],
                  plan_rows(plan), plan.map_heads, plan.n_q_tiles, rows.part_width, rows.full_width,
                  scale * LOG2E, HEAD_D=dim, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n,
                  NA_STATIC=plan.na_static, TURNS=tiles_per_program,
                  MASKED=plan.mask_mode == masks.MASK_NEIGHBORHOOD, SCALE_NONNEGATIVE=scale >= 0,
                  LAZY_RESCALE=float(lazy_rescale), TAKE_TURNS=take_turns,
                  WORKER_REGISTERS=registers, num_warps=4,
                  maxnreg=registers)
    return o, lse
