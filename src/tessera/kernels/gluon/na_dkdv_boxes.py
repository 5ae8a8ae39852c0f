"""dk and dv of a tiled-order N-D neighborhood over query boxes (``key_boxes.query_boxes``), in
Gluon (sm_90).

``na_dkdv`` (same scope as ``na_forward_boxes``: masked, undilated, 64 x 64 plans whose tiles
are grid boxes, 16-bit, D in {32, 64, 128}) with each key tile walking its own query boxes instead
of the plan's transposed lists: the queries that see some key of the tile form a grid box (per
axis from the first query whose window reaches the tile to the last), partitioned frame by frame
like the forward's key boxes into boxes of 64 queries (8 x 8, 4 x 16, 16 x 4) and 32 (4 x 8,
8 x 4). Per box of ``BLOCK_Q`` queries and query head, with lse and delta read at the box's
grid rows (rows past the grid read as lse = -inf, so that p = 0 there):

    P^T = exp2(S^T * scale * log2(e) + penalty - lse * log2(e))
    dV += P^T dO                 dS^T = P^T * (dP^T - delta)            dK += dS^T Q

(``penalty``: the key windows, ``na_key_windows``, against the box's query coordinates). The
key tile's k and v stay in shared memory; q and dO stream through two slots each, box u + 1's
copies issued at step u into the slots box u - 1's completed products read (96 KB at D = 128).
dk (times ``scale``) and dv leave through k's and v's buffers by bulk stores.

Compiled for sm_90 without a GPU by ``benchmarks/gluon_compile_check.py --kernel dkdv-boxes``;
its float64 check is ``tests/kernels/test_gluon_gpu.py::test_gluon_dkdv_on_query_boxes_against_float64``.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from ..triton.flash_fwd import LOG2E, grid_box
from ..triton.launcher import BoundLaunches, Launcher
from ..triton.na_mask import NA_GRID, na_key_windows, na_param
from ..triton.row_addressing import row_tile_origin
from . import key_boxes
from .layouts import wgmma_accumulator, wgmma_register_operand
from .na_dkdv import _store_dk_dv
from .na_forward import _box_origin, _descriptor, check_row_stats, plan_rows, static_switches
from .na_forward_boxes import (_FULL, _FULL_SHIFT, _HALF_1, _HALF_1_SHIFT, _HALF_2, _HALF_2_SHIFT,
                               _TALL_SHIFT, _WIDE, _WIDE_SHIFT, _entry_at, _half_view, _issue_box_copy,
                               _unpack, boxes_supported)


@gluon.jit
def _dkdv_box_step(k_tile, v_tile, q_view, do_view, q_bar, do_bar, phase, c0, c1, c2,
                   X_SHIFT: gl.constexpr, windows, LSE, DELTA, stats, grid1, grid2, dk, dv, qk_scale,
                   BLOCK_N: gl.constexpr, BLOCK_Q: gl.constexpr, AXIS0_UNIFORM: gl.constexpr,
                   WARPS: gl.constexpr, g_layout: gl.constexpr):
    """``(dk, dv)`` with the products of one box of ``BLOCK_Q`` queries (``q_view``, ``do_view``
    ``[BLOCK_Q, D]``) whose first token is ``(c0, c1, c2)`` and whose rows along grid axis 2 hold
    ``2 ** X_SHIFT`` queries; ``windows``: the key rows' ``na_key_windows`` (1-D, any layout);
    ``stats``: the query head's offset into lse and delta."""
    t_layout: gl.constexpr = wgmma_accumulator(WARPS, BLOCK_Q)
    a_layout: gl.constexpr = wgmma_register_operand(g_layout)
    keys: gl.constexpr = gl.SliceLayout(1, t_layout)
    queries: gl.constexpr = gl.SliceLayout(0, t_layout)
    offs_q = gl.arange(0, BLOCK_Q, layout=queries)
    code2 = c2 + (offs_q & ((1 << X_SHIFT) - 1))
    code1 = c1 + (offs_q >> X_SHIFT)
    inside = (code1 < grid1) & (code2 < grid2)
    rows = ((c0 * grid1 + code1) * grid2 + code2).to(gl.int64)
    lse = gl.load(LSE + stats + rows, mask=inside, other=float("-inf"))
    delta = gl.load(DELTA + stats + rows, mask=inside, other=0.0)
    # Fully masked rows (and rows past the grid) have lse = -inf: read as +inf so that p = 0.
    lse2 = gl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    lo2 = gl.convert_layout(windows[4], keys)[:, None]
    hi2 = gl.convert_layout(windows[5], keys)[:, None]
    lo1 = gl.convert_layout(windows[2], keys)[:, None]
    hi1 = gl.convert_layout(windows[3], keys)[:, None]
    penalty = (gl.where((code2[None, :] >= lo2) & (code2[None, :] < hi2), 0.0, float("-inf"))
               + gl.where((code1[None, :] >= lo1) & (code1[None, :] < hi1), 0.0, float("-inf")))
    if not AXIS0_UNIFORM:
        inside0 = (c0 >= gl.convert_layout(windows[0], keys)) & (c0 < gl.convert_layout(windows[1], keys))
        penalty = penalty + gl.where(inside0, 0.0, float("-inf"))[:, None]
    t_zero = gl.zeros([BLOCK_N, BLOCK_Q], gl.float32, t_layout)
    mbarrier.wait(q_bar, phase)
    s_t = warpgroup_mma(k_tile, q_view.permute((1, 0)), t_zero, use_acc=False, is_async=True)
    s_t = warpgroup_mma_wait(num_outstanding=0, deps=(s_t,))
    p_t = gl.exp2(s_t * qk_scale + penalty - lse2[None, :])
    mbarrier.wait(do_bar, phase)
    dv = warpgroup_mma(gl.convert_layout(p_t.to(k_tile.dtype), a_layout), do_view, dv, is_async=True)
    dp_t = warpgroup_mma(v_tile, do_view.permute((1, 0)), t_zero, use_acc=False, is_async=True)
    dp_t, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dp_t, dv))
    ds_t = p_t * (dp_t - delta[None, :])
    dk = warpgroup_mma(gl.convert_layout(ds_t.to(k_tile.dtype), a_layout), q_view, dk, is_async=True)
    dk = warpgroup_mma_wait(num_outstanding=0, deps=(dk,))
    return dk, dv


@gluon.jit
def _issue_query_box(u, total, ENTRIES, n, WIDTH, hk, GROUP, b, row0, Q_DESCS, DO_DESCS, q_bufs,
                     do_bufs, q_bars, do_bars, NA, NA_STATIC: gl.constexpr, HEAD_D: gl.constexpr):
    """Bulk copies of q and dO of step ``u``'s box (box ``u % total`` of query head ``hk * GROUP
    + u // total``) into slot ``u % 2``."""
    g = u // total
    kind, c0, c1, c2 = _unpack(_entry_at(ENTRIES, n, WIDTH, u - g * total))
    origin = _box_origin(row0 + c0, c1, c2, hk * GROUP + g, (b, 0, 0), NA, NA_STATIC, HEAD_D)
    _issue_box_copy(kind, Q_DESCS, q_bufs, q_bars, origin, u % 2)
    _issue_box_copy(kind, DO_DESCS, do_bufs, do_bars, origin, u % 2)


@gluon.jit
def _na_dkdv_boxes(Q_DESC, DO_DESC, Q_HALF1, DO_HALF1, Q_HALF2, DO_HALF2, Q_WIDE, DO_WIDE, Q_TALL,
                   DO_TALL, K_DESC, V_DESC, DK_DESC, DV_DESC, LSE, DELTA, COUNTS, ENTRIES, WIDTH, NA,
                   H_Q, GROUP, S_Q, scale, qk_scale, HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr,
                   NA_STATIC: gl.constexpr, AXIS0_UNIFORM: gl.constexpr, num_warps: gl.constexpr):
    n = gl.program_id(0)
    bhk = gl.program_id(1)
    h_kv = H_Q // GROUP
    b = bhk // h_kv
    hk = bhk - b * h_kv
    total = gl.load(COUNTS + n)
    steps = GROUP * total
    dtype: gl.constexpr = Q_DESC.dtype

    k_smem = gl.allocate_shared_memory(dtype, K_DESC.block_type.shape, K_DESC.layout)
    v_smem = gl.allocate_shared_memory(dtype, V_DESC.block_type.shape, V_DESC.layout)
    q_bufs = gl.allocate_shared_memory(dtype, [2] + Q_DESC.block_type.shape, Q_DESC.layout)
    do_bufs = gl.allocate_shared_memory(dtype, [2] + DO_DESC.block_type.shape, DO_DESC.layout)
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    do_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(2):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(do_bars.index(i), count=1)

    k_origin = row_tile_origin(n * BLOCK_N, (b, 0, 0), hk, NA, 1, NA_STATIC, True, HEAD_D)
    mbarrier.expect(kv_bar, K_DESC.block_type.nbytes + V_DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(K_DESC, k_origin, kv_bar, k_smem)
    tma.async_copy_global_to_shared(V_DESC, k_origin, kv_bar, v_smem)
    Q_DESCS = (Q_DESC, Q_HALF1, Q_HALF2, Q_WIDE, Q_TALL)
    DO_DESCS = (DO_DESC, DO_HALF1, DO_HALF2, DO_WIDE, DO_TALL)
    row0 = b * na_param(NA, NA_GRID, 0)
    grid1 = na_param(NA, NA_GRID, 1)
    grid2 = na_param(NA, NA_GRID, 2)
    if steps > 0:
        _issue_query_box(0, total, ENTRIES, n, WIDTH, hk, GROUP, b, row0, Q_DESCS, DO_DESCS, q_bufs,
                         do_bufs, q_bars, do_bars, NA, NA_STATIC, HEAD_D)

    g_layout: gl.constexpr = wgmma_accumulator(num_warps, HEAD_D)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, g_layout))
    windows = na_key_windows(offs_n, n * BLOCK_N, NA, NA_STATIC)
    dk = gl.zeros([BLOCK_N, HEAD_D], gl.float32, g_layout)
    dv = gl.zeros([BLOCK_N, HEAD_D], gl.float32, g_layout)
    k_tile = k_smem.reshape([BLOCK_N, HEAD_D])
    v_tile = v_smem.reshape([BLOCK_N, HEAD_D])
    mbarrier.wait(kv_bar, 0)
    for u in range(steps):
        if u + 1 < steps:
            # Into the slots step u - 1 read (its products completed).
            _issue_query_box(u + 1, total, ENTRIES, n, WIDTH, hk, GROUP, b, row0, Q_DESCS, DO_DESCS,
                             q_bufs, do_bufs, q_bars, do_bars, NA, NA_STATIC, HEAD_D)
        g = u // total
        kind, c0, c1, c2 = _unpack(_entry_at(ENTRIES, n, WIDTH, u - g * total))
        stats = (b * H_Q + hk * GROUP + g).to(gl.int64) * S_Q
        q_slot = q_bufs.index(u % 2)
        do_slot = do_bufs.index(u % 2)
        q_64 = q_slot.reshape([64, HEAD_D])
        do_64 = do_slot.reshape([64, HEAD_D])
        q_32 = _half_view(q_slot, Q_HALF1, HEAD_D)
        do_32 = _half_view(do_slot, DO_HALF1, HEAD_D)
        q_bar = q_bars.index(u % 2)
        do_bar = do_bars.index(u % 2)
        phase = (u // 2) & 1
        if kind == _FULL:
            dk, dv = _dkdv_box_step(k_tile, v_tile, q_64, do_64, q_bar, do_bar, phase, c0, c1, c2,
                                    _FULL_SHIFT, windows, LSE, DELTA, stats, grid1, grid2, dk, dv,
                                    qk_scale, BLOCK_N, 64, AXIS0_UNIFORM, num_warps, g_layout)
        elif kind == _WIDE:
            dk, dv = _dkdv_box_step(k_tile, v_tile, q_64, do_64, q_bar, do_bar, phase, c0, c1, c2,
                                    _WIDE_SHIFT, windows, LSE, DELTA, stats, grid1, grid2, dk, dv,
                                    qk_scale, BLOCK_N, 64, AXIS0_UNIFORM, num_warps, g_layout)
        elif kind == _HALF_1:
            dk, dv = _dkdv_box_step(k_tile, v_tile, q_32, do_32, q_bar, do_bar, phase, c0, c1, c2,
                                    _HALF_1_SHIFT, windows, LSE, DELTA, stats, grid1, grid2, dk, dv,
                                    qk_scale, BLOCK_N, 32, AXIS0_UNIFORM, num_warps, g_layout)
        elif kind == _HALF_2:
            dk, dv = _dkdv_box_step(k_tile, v_tile, q_32, do_32, q_bar, do_bar, phase, c0, c1, c2,
                                    _HALF_2_SHIFT, windows, LSE, DELTA, stats, grid1, grid2, dk, dv,
                                    qk_scale, BLOCK_N, 32, AXIS0_UNIFORM, num_warps, g_layout)
        else:
            dk, dv = _dkdv_box_step(k_tile, v_tile, q_64, do_64, q_bar, do_bar, phase, c0, c1, c2,
                                    _TALL_SHIFT, windows, LSE, DELTA, stats, grid1, grid2, dk, dv,
                                    qk_scale, BLOCK_N, 64, AXIS0_UNIFORM, num_warps, g_layout)

    _store_dk_dv(dk, dv, scale, k_smem, v_smem, DK_DESC, DV_DESC, k_origin, BLOCK_N, HEAD_D)


_LAUNCH = Launcher(_na_dkdv_boxes)
# Repeat calls launch with only the tensors filled in (``launcher.BoundLaunch``).
_BOUND = BoundLaunches()


def dkdv_boxes_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan) -> bool:
    """Whether ``na_dkdv_boxes`` runs this call: ``na_forward_boxes.boxes_supported`` on a 64 x 64
    plan with query boxes (``key_boxes.query_boxes``)."""
    return (plan.block_n == 64 and boxes_supported(q, k, v, plan)
            and key_boxes.query_boxes(plan) is not None)


def call_plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan):
    """The plan ``na_dkdv_boxes`` runs a call over ``plan`` on (``dkdv_boxes_supported`` for
    ``plan``): ``key_boxes.box_plan(plan, key_boxes.query_boxes)`` when it is ``plan`` or
    ``dkdv_boxes_supported`` holds for it, else ``plan``."""
    chosen = key_boxes.box_plan(plan, key_boxes.query_boxes)
    return chosen if chosen is plan or dkdv_boxes_supported(q, k, v, chosen) else plan


def na_dkdv_boxes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, lse: torch.Tensor,
                  delta: torch.Tensor, plan, *, scale: float, dk: torch.Tensor | None = None,
                  dv: torch.Tensor | None = None, max_registers: int | None = None,
                  scope_checked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dk, dv)``, like ``k`` and ``v`` ``[B, S, H_kv, D]``, of softmax attention over ``plan``
    for grid-order ``q``, ``do`` ``[B, S, H_q, D]``, ``k``, ``v``, with the forward's ``lse`` and
    ``delta = rowsum(o * do)`` (float32 ``[B, H_q, S]``, contiguous), each key tile over its
    query boxes (``key_boxes.query_boxes(plan)``); ``dkdv_boxes_supported(q, k, v, plan)`` must
    hold and do be laid out as q. ``dk``, ``dv``: where to write (contiguous, like ``k`` and
    ``v``), else new tensors; ``max_registers``: a register cap per thread; ``scope_checked``:
    the caller has checked that scope. Launched on the current stream."""
    if not scope_checked and not (dkdv_boxes_supported(q, k, v, plan) and do.shape == q.shape
                                  and do.stride() == q.stride() and do.dtype == q.dtype):
        raise ValueError("na_dkdv_boxes: this call is outside the query-box kernel's scope (see "
                         "dkdv_boxes_supported; do laid out as q)")
    batch, heads, dim = q.shape[0], q.shape[2], q.shape[3]
    seq = plan_rows(plan)
    check_row_stats("na_dkdv_boxes", lse, delta, (batch, heads, seq))
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if dk is None else dk
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if dv is None else dv
    key = (id(plan), q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), do.stride(),
           dk.stride(), dv.stride(), q.dtype, q.device, scale, max_registers)
    bound = _BOUND.get(key, (plan,))
    if bound is not None:
        bound(*(q, do) * len(key_boxes.EXTENTS), k, v, dk, dv, lse, delta)
        return dk, dv
    boxes = key_boxes.query_boxes(plan)
    k_box = grid_box(plan, plan.block_n)
    rows = [_descriptor(t, plan, extent) for extent in key_boxes.EXTENTS.values() for t in (q, do)]
    tiles = [_descriptor(t, plan, k_box) for t in (k, v, dk, dv)]
    grid = (plan.n_k_tiles, batch * k.shape[2])
    args = (*rows, *tiles, lse, delta, boxes.counts, boxes.entries, boxes.width, plan.na_params, heads,
            heads // k.shape[2], seq, scale, scale * LOG2E)
    options = dict(HEAD_D=dim, BLOCK_N=plan.block_n, NA_STATIC=static_switches(q, plan),
                   AXIS0_UNIFORM=k_box[0] == 1, num_warps=4,
                   **({"maxnreg": max_registers} if max_registers else {}))
    _LAUNCH[grid](*args, **options)
    _BOUND.remember(key, _LAUNCH, grid, args, options, live=tuple(range(len(rows) + len(tiles) + 2)),
                    owners=(plan,))
    return dk, dv
