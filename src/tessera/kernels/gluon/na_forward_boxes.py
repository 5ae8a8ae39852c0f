"""Forward of a tiled-order N-D neighborhood over key boxes (``key_boxes``), in Gluon (sm_90).

Same scope and results as ``na_forward`` on a masked plan (q, k, v ``[B, S, H, D]`` in grid
order, 64-row query tiles that are grid boxes, 16-bit, D in {32, 64, 128}, plain softmax), but
each query tile walks its own list of key boxes (``key_boxes.build``: 8 x 8, 4 x 16 and 16 x 4
boxes of 64 keys and 4 x 8 / 8 x 4 half boxes of 32, placed from the corner of its window
union) instead of the plan's key tiles. A 64-key box runs 64 x 64 products, a half box 64 x 32
ones (the first half of the same shared-memory slot, read through a half-box view); every box
takes the neighborhood penalty from its first token's coordinates (``_box_penalty``), and
each kind has its own step code, so that its row length is a constant. The loop is
``na_forward``'s sequential one with two K slots and one V slot (64 KB at D = 128, three
programs per SM under ``REGISTERS``) and its lazy rescale: at step t the K copy of box t + 1
and the V copy of box t are issued, then QK^T, softmax and P @ V of box t; box t + 2's entry
is loaded a step before its use.

Checked against float64 on an H200 (``tests/kernels/test_gluon_gpu.py``); compiled for sm_90
without a GPU by ``benchmarks/gluon_compile_check.py --kernel boxes``.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from ..triton.flash_fwd import LOG2E, grid_box
from ..triton.launcher import BoundLaunches, Launcher
from ..triton.na_mask import NA_GRID, na_param, na_query_windows
from ..triton.row_addressing import row_tile_origin
from . import key_boxes
from .layouts import wgmma_accumulator, wgmma_register_operand
from .na_forward import (MAX_LAZY_RESCALE, _box_origin, _descriptor, _lazy_softmax, _store_output,
                         plan_rows, static_switches, supports)

_FULL = gl.constexpr(key_boxes.FULL)
_HALF_1 = gl.constexpr(key_boxes.HALF_1)
_HALF_2 = gl.constexpr(key_boxes.HALF_2)
_WIDE = gl.constexpr(key_boxes.WIDE)
# log2 of each kind's extent along grid axis 2 (keys per box row).
_SHIFT = {kind: extent[2].bit_length() - 1 for kind, extent in key_boxes.EXTENTS.items()}
_FULL_SHIFT = gl.constexpr(_SHIFT[key_boxes.FULL])
_HALF_1_SHIFT = gl.constexpr(_SHIFT[key_boxes.HALF_1])
_HALF_2_SHIFT = gl.constexpr(_SHIFT[key_boxes.HALF_2])
_WIDE_SHIFT = gl.constexpr(_SHIFT[key_boxes.WIDE])
_TALL_SHIFT = gl.constexpr(_SHIFT[key_boxes.TALL])


@gluon.jit
def _entry_at(ENTRIES, row, WIDTH, t):
    """The packed entry of the ``t``-th box of query tile ``row``."""
    return gl.load(ENTRIES + row.to(gl.int64) * WIDTH + t)


@gluon.jit
def _unpack(e):
    """``(kind, c0, c1, c2)`` of a packed entry (``key_boxes.unpack``)."""
    return e & 7, e >> 23, (e >> 13) & 1023, (e >> 3) & 1023


@gluon.jit
def _copy_into(DESC, bar, dest, origin):
    """Bulk copy of the box at ``origin`` of ``DESC`` into ``dest`` (read as ``DESC``'s block),
    on ``bar``."""
    mbarrier.expect(bar, DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(DESC, origin, bar,
                                    dest._reinterpret(dest.dtype, DESC.block_type.shape, DESC.layout))


@gluon.jit
def _issue_box_copy(kind, DESCS, bufs, bars, origin, slot):
    """Bulk copy of the box of ``kind`` at descriptor coordinates ``origin`` from the one of
    ``DESCS`` (one per kind, in ``key_boxes.EXTENTS`` order) for it into ``bufs`` slot ``slot``
    (a 32-key box into the slot's first half) on that slot's mbarrier."""
    bar = bars.index(slot)
    dest = bufs.index(slot)
    if kind == _FULL:
        _copy_into(DESCS[0], bar, dest, origin)
    elif kind == _HALF_1:
        _copy_into(DESCS[1], bar, dest, origin)
    elif kind == _HALF_2:
        _copy_into(DESCS[2], bar, dest, origin)
    elif kind == _WIDE:
        _copy_into(DESCS[3], bar, dest, origin)
    else:
        _copy_into(DESCS[4], bar, dest, origin)


@gluon.jit
def _half_view(slot, HALF1_DESC, HEAD_D: gl.constexpr):
    """The ``[32, HEAD_D]`` half box in ``slot`` (both half kinds share its bytes: 32 rows of
    HEAD_D in one swizzled layout)."""
    half = slot._reinterpret(slot.dtype, HALF1_DESC.block_type.shape, HALF1_DESC.layout)
    return half.reshape([32, HEAD_D])


@gluon.jit
def _box_penalty(c0, c1, c2, X_SHIFT: gl.constexpr, windows, BLOCK_N: gl.constexpr,
                 s_layout: gl.constexpr, AXIS0_UNIFORM: gl.constexpr):
    """The neighborhood penalty ``[BLOCK_M, BLOCK_N]`` (0 or -inf, in ``s_layout``) of a box of
    ``BLOCK_N`` keys whose first token is ``(c0, c1, c2)`` and whose rows along axis 2 hold
    ``2 ** X_SHIFT`` keys. ``windows``: the query rows' ``(lo0, hi0, lo1, hi1, lo2, hi2)``
    (``na_query_windows``, 1-D, any row layout); ``AXIS0_UNIFORM``: every query of the tile has
    one window along axis 0 and the box lies in it (one frame of the listed union), so that axis
    adds nothing."""
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    code2 = (c2 + (offs_n & ((1 << X_SHIFT) - 1)))[None, :]
    code1 = (c1 + (offs_n >> X_SHIFT))[None, :]
    lo1 = gl.convert_layout(windows[2], rows_s)[:, None]
    hi1 = gl.convert_layout(windows[3], rows_s)[:, None]
    lo2 = gl.convert_layout(windows[4], rows_s)[:, None]
    hi2 = gl.convert_layout(windows[5], rows_s)[:, None]
    penalty = (gl.where((code2 >= lo2) & (code2 < hi2), 0.0, float("-inf"))
               + gl.where((code1 >= lo1) & (code1 < hi1), 0.0, float("-inf")))
    if not AXIS0_UNIFORM:
        inside0 = (c0 >= gl.convert_layout(windows[0], rows_s)) & (c0 < gl.convert_layout(windows[1], rows_s))
        penalty = penalty + gl.where(inside0, 0.0, float("-inf"))[:, None]
    return penalty


@gluon.jit
def _box_step(q_tile, k_view, v_view, kv_bar, kv_phase, v_bar, v_phase, c0, c1, c2, X_SHIFT: gl.constexpr,
              windows, acc, m_i, l_i, qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              AXIS0_UNIFORM: gl.constexpr, LAZY_RESCALE: gl.constexpr, WARPS: gl.constexpr,
              o_layout: gl.constexpr):
    """QK^T, penalty (``_box_penalty``), softmax and P @ V of one box of ``BLOCK_N`` keys
    (``k_view``, ``v_view`` ``[BLOCK_N, D]``): ``(acc, m_i, l_i)`` with P @ V complete (``m_i``,
    ``l_i`` in the rows of ``o_layout``)."""
    s_layout: gl.constexpr = wgmma_accumulator(WARPS, BLOCK_N)
    p_layout: gl.constexpr = wgmma_register_operand(o_layout)
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    penalty = _box_penalty(c0, c1, c2, X_SHIFT, windows, BLOCK_N, s_layout, AXIS0_UNIFORM)
    mbarrier.wait(kv_bar, kv_phase)
    s = warpgroup_mma(q_tile, k_view.permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout),
                      use_acc=False, is_async=True)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    p, acc, m_new, l_new = _lazy_softmax(s * qk_scale + penalty, gl.convert_layout(m_i, rows_s),
                                         gl.convert_layout(l_i, rows_s), acc, rows_o, LAZY_RESCALE)
    mbarrier.wait(v_bar, v_phase)
    acc = warpgroup_mma(gl.convert_layout(p.to(v_view.dtype), p_layout), v_view, acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    return acc, gl.convert_layout(m_new, rows_o), gl.convert_layout(l_new, rows_o)


@gluon.jit
def _na_fwd_boxes(Q_DESC, K_DESC, V_DESC, K_HALF1, V_HALF1, K_HALF2, V_HALF2, K_WIDE, V_WIDE, K_TALL,
                  V_TALL, O_DESC, LSE, COUNTS, ENTRIES, WIDTH, NA, H_Q, GROUP, S_Q, qk_scale,
                  HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, NA_STATIC: gl.constexpr,
                  AXIS0_UNIFORM: gl.constexpr, LAZY_RESCALE: gl.constexpr, num_warps: gl.constexpr):
    m = gl.program_id(0)
    entry_head = gl.program_id(1)
    b = entry_head // H_Q
    h = entry_head - b * H_Q
    batch = (b, 0, 0)
    lse_base = (b * H_Q + h).to(gl.int64) * S_Q
    hk = h // GROUP
    total = gl.load(COUNTS + m)
    dtype: gl.constexpr = Q_DESC.dtype

    q_smem = gl.allocate_shared_memory(dtype, Q_DESC.block_type.shape, Q_DESC.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [2] + K_DESC.block_type.shape, K_DESC.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [1] + V_DESC.block_type.shape, V_DESC.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kv_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(2):
        mbarrier.init(kv_bars.index(i), count=1)
    mbarrier.init(v_bars.index(0), count=1)

    q_origin = row_tile_origin(m * BLOCK_M, batch, h, NA, 0, NA_STATIC, True, HEAD_D)
    mbarrier.expect(q_bar, Q_DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(Q_DESC, q_origin, q_bar, q_smem)

    o_layout: gl.constexpr = wgmma_accumulator(num_warps, HEAD_D)
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    offs_m = gl.arange(0, BLOCK_M, layout=rows_o)
    windows = na_query_windows(offs_m, m * BLOCK_M, NA, NA_STATIC)
    acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, o_layout)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, rows_o)
    l_i = gl.zeros([BLOCK_M], gl.float32, rows_o)

    K_DESCS = (K_DESC, K_HALF1, K_HALF2, K_WIDE, K_TALL)
    V_DESCS = (V_DESC, V_HALF1, V_HALF2, V_WIDE, V_TALL)
    row0 = batch[0] * na_param(NA, NA_GRID, 0)
    kind, c0, c1, c2 = _unpack(_entry_at(ENTRIES, m, WIDTH, 0))
    _issue_box_copy(kind, K_DESCS, k_bufs, kv_bars,
                    _box_origin(row0 + c0, c1, c2, hk, batch, NA, NA_STATIC, HEAD_D), 0)
    following = _entry_at(ENTRIES, m, WIDTH, gl.minimum(1, total - 1))
    mbarrier.wait(q_bar, 0)
    q_tile = q_smem.reshape([BLOCK_M, HEAD_D])
    for t in range(total):
        # Box t + 1 (at the last step the last box again, not copied) into the K slot that box
        # t - 1's completed QK^T read; box t's V into the slot its completed P @ V read. The
        # entry of box t + 2 is loaded here, a step before its use.
        nkind, n0, n1, n2 = _unpack(following)
        following = _entry_at(ENTRIES, m, WIDTH, gl.minimum(t + 2, total - 1))
        if t + 1 < total:
            _issue_box_copy(nkind, K_DESCS, k_bufs, kv_bars,
                            _box_origin(row0 + n0, n1, n2, hk, batch, NA, NA_STATIC, HEAD_D), (t + 1) % 2)
        _issue_box_copy(kind, V_DESCS, v_bufs, v_bars,
                        _box_origin(row0 + c0, c1, c2, hk, batch, NA, NA_STATIC, HEAD_D), 0)
        k_slot = k_bufs.index(t % 2)
        v_slot = v_bufs.index(0)
        # Every 64-key kind holds 64 rows of HEAD_D in one swizzled layout, every 32-key kind 32;
        # each kind has its own step code (a constant row length keeps the penalty cheap).
        k_64 = k_slot.reshape([64, HEAD_D])
        v_64 = v_slot.reshape([64, HEAD_D])
        k_32 = _half_view(k_slot, K_HALF1, HEAD_D)
        v_32 = _half_view(v_slot, V_HALF1, HEAD_D)
        kv_bar = kv_bars.index(t % 2)
        v_bar = v_bars.index(0)
        if kind == _FULL:
            acc, m_i, l_i = _box_step(q_tile, k_64, v_64, kv_bar, (t // 2) & 1, v_bar, t & 1, c0, c1, c2,
                                      _FULL_SHIFT, windows, acc, m_i, l_i, qk_scale, BLOCK_M, 64,
                                      AXIS0_UNIFORM, LAZY_RESCALE, num_warps, o_layout)
        elif kind == _WIDE:
            acc, m_i, l_i = _box_step(q_tile, k_64, v_64, kv_bar, (t // 2) & 1, v_bar, t & 1, c0, c1, c2,
                                      _WIDE_SHIFT, windows, acc, m_i, l_i, qk_scale, BLOCK_M, 64,
                                      AXIS0_UNIFORM, LAZY_RESCALE, num_warps, o_layout)
        elif kind == _HALF_1:
            acc, m_i, l_i = _box_step(q_tile, k_32, v_32, kv_bar, (t // 2) & 1, v_bar, t & 1, c0, c1, c2,
                                      _HALF_1_SHIFT, windows, acc, m_i, l_i, qk_scale, BLOCK_M, 32,
                                      AXIS0_UNIFORM, LAZY_RESCALE, num_warps, o_layout)
        elif kind == _HALF_2:
            acc, m_i, l_i = _box_step(q_tile, k_32, v_32, kv_bar, (t // 2) & 1, v_bar, t & 1, c0, c1, c2,
                                      _HALF_2_SHIFT, windows, acc, m_i, l_i, qk_scale, BLOCK_M, 32,
                                      AXIS0_UNIFORM, LAZY_RESCALE, num_warps, o_layout)
        else:
            acc, m_i, l_i = _box_step(q_tile, k_64, v_64, kv_bar, (t // 2) & 1, v_bar, t & 1, c0, c1, c2,
                                      _TALL_SHIFT, windows, acc, m_i, l_i, qk_scale, BLOCK_M, 64,
                                      AXIS0_UNIFORM, LAZY_RESCALE, num_warps, o_layout)
        kind, c0, c1, c2 = nkind, n0, n1, n2

    _store_output(acc, m_i, l_i, offs_m, m, q_smem, O_DESC, q_origin, LSE, lse_base, NA, BLOCK_M,
                  HEAD_D, NA_STATIC, rows_o)


# Register caps per head dim: three programs per SM at D = 128 (a few bytes of spills), four at
# D = 64 (3-D suite case 0.849 ms against 0.910 at 168,
# ``results/tuning/2026-12-01-h200-gluon-forward-19-box-kinds.json``) and at D = 32 (0.720
# against 0.776 uncapped; 96 registers 0.719, ``-gluon-forward-23-head-dim-32.json``).
REGISTERS = {128: 168, 64: 128, 32: 128}

_LAUNCH = Launcher(_na_fwd_boxes)
# Repeat calls (same plan, shapes, strides, dtype, device, scale and threshold) launch with only
# the tensors filled in (``launcher.BoundLaunch``).
_BOUND = BoundLaunches()


def boxes_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan) -> bool:
    """Whether ``na_forward_boxes`` runs this call: ``na_forward.supports`` on a plan that
    ``key_boxes.fits``."""
    return key_boxes.fits(plan) and supports(q, k, v, plan)


def call_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan):
    """The plan the key-box kernels run a call over ``plan`` on (``boxes_supported`` for
    ``plan``): ``key_boxes.box_plan(plan)`` when it is ``plan`` or ``boxes_supported`` holds for
    it, else ``plan``."""
    chosen = key_boxes.box_plan(plan)
    return chosen if chosen is plan or boxes_supported(q, k, v, chosen) else plan


def na_forward_boxes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan, *, scale: float,
                     lazy_rescale: float = 8.0, max_registers: int | None = None,
                     scope_checked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o [B, S, H_q, D], lse float32 [B, H_q, S])`` of softmax attention over ``plan`` (a
    masked tiled neighborhood's plan at 64-row query tiles; ``boxes_supported``) for grid-order
    ``q [B, S, H_q, D]``, ``k``, ``v`` ``[B, S, H_kv, D]``, each query tile over its key boxes
    (``key_boxes.key_boxes(plan)``). ``lazy_rescale``: as ``na_forward``'s (0: every box
    rescales); ``max_registers``: a register cap per thread (None: ``REGISTERS`` of the head
    dim; 0: none); ``scope_checked``: the caller has found ``boxes_supported`` true."""
    if not 0.0 <= lazy_rescale <= MAX_LAZY_RESCALE:
        raise ValueError(f"na_forward_boxes: lazy_rescale must be in [0, {MAX_LAZY_RESCALE}], "
                         f"got {lazy_rescale}")
    if not scope_checked and not boxes_supported(q, k, v, plan):
        raise ValueError("na_forward_boxes: this call is outside the key-box forward's scope "
                         "(see boxes_supported)")
    batch, heads, dim = q.shape[0], q.shape[2], q.shape[3]
    seq = plan_rows(plan)
    if max_registers is None:
        max_registers = REGISTERS[dim]
    o = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq, dtype=torch.float32, device=q.device)
    key = (id(plan), q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype,
           q.device, scale, lazy_rescale, max_registers)
    bound = _BOUND.get(key, (plan,))
    if bound is not None:
        bound(q, *(k, v) * len(key_boxes.EXTENTS), o, lse)
        return o, lse
    boxes = key_boxes.key_boxes(plan)
    q_box = grid_box(plan, plan.block_m)
    descriptors = [_descriptor(t, plan, q_box) for t in (q, o)]
    kv = [_descriptor(t, plan, extent) for extent in key_boxes.EXTENTS.values() for t in (k, v)]
    grid = (plan.n_q_tiles, batch * heads)
    args = (descriptors[0], *kv, descriptors[1], lse, boxes.counts, boxes.entries, boxes.width,
            plan.na_params, heads, heads // k.shape[2], seq, scale * LOG2E)
    options = dict(HEAD_D=dim, BLOCK_M=plan.block_m, NA_STATIC=static_switches(q, plan),
                   AXIS0_UNIFORM=q_box[0] == 1, LAZY_RESCALE=float(lazy_rescale), num_warps=4,
                   **({"maxnreg": max_registers} if max_registers else {}))
    _LAUNCH[grid](*args, **options)
    _BOUND.remember(key, _LAUNCH, grid, args, options, live=tuple(range(len(kv) + 3)), owners=(plan,))
    return o, lse
