"""Forward of a tiled-order N-D neighborhood in grid order, in Gluon (Hopper, sm_90).

Scope: what ``tessera.natten`` runs for neighborhoods on Hopper: q, k, v ``[B, S, H, D]`` in
the grid's row-major order, a ``Permuted(Neighborhood, GridLayout)`` plan whose query and key
tiles are grid boxes (``flash_fwd.grid_box``), with the analytic mask (``MASK_NEIGHBORHOOD``) or
full tiles only (``MASK_NONE``: blocked attention, stride = kernel), 16-bit inputs, D in {32,
64, 128} (register tiles take powers of two; other head dims stay on the Triton kernels),
softmax without biases. A dilated neighborhood runs as one dilation group's plan under a
``masks.DilationFold``: every group at once on the whole grid's tensors, each tile a box of
``flash_fwd.fold_view`` (64-row tiles of depth one along grid axis 0). Over a
``PaddedNeighborhood`` (a grid padded up to whole tiles) q, k, v and o may hold only the extent's
tokens: their bulk copies then read zeros and write nothing past it (``flash_fwd.grid_view``),
and lse covers the padded grid (``plan_rows``); every kernel in this package does the same.

One program per (query tile, batch x query head): one warpgroup that computes per 64 query
rows (64- or 128-row tiles; 128 rows only in the sequential loop), and with
``specialized`` one more warp that only fills the K/V ring (warp specialization: under a cap of
128 registers per thread for the program, two programs per SM, the computing warpgroup gets 232
and the producer 24). q arrives by a bulk copy into shared memory and stays there as the A
operand of every QK^T wgmma (Triton routes a copied q through registers, which costs a program
per SM). K and V tiles stream through rings of shared-memory slots, each slot tracked by its
own mbarrier and loaded ahead of its use. Without ``overlap`` (the sequential loop, what
``forward_route`` runs: QK^T, softmax, P @ V per tile) K and V have separate rings
(``NUM_BUF`` and ``V_BUF`` slots); two K slots and one V slot keep a program at 64 KB of shared
memory (D = 128), three programs per SM. ``defer_pv`` (one K slot, two V slots, also 64 KB)
leaves each P @ V in flight under the next tile's penalty and QK^T. ``lazy_rescale`` keeps a
row's running max until a tile raises it past a threshold and jumps over the running output's
rescale in warps where no row moved (a warp vote in inline assembly). With ``overlap``, one
ring of ``NUM_BUF`` K/V pairs, and each tile's QK^T and P @ V run under a neighbouring tile's
softmax. Unmasked tiles with a nonnegative scale take their row max over the unscaled logits
(``_unmasked_softmax``). The tile loop walks the
plan's partial tiles, then its full tiles, as one list, with the neighborhood penalty
(``na_mask.na_penalty``) on every tile (zero on full tiles; none for full-tile plans). o leaves
through q's buffer by a bulk store, lse (natural log, float32 ``[B, H, S]``) by pointers.

Checked against float64 on an H200 (``tests/kernels/test_gluon_gpu.py``); compiled for sm_90
without a GPU by ``benchmarks/gluon_compile_check.py``; timed against the Triton forward by
``benchmarks/gpu_gluon_forward.py``.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                              warpgroup_mma, warpgroup_mma_init,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from ..triton import masks
from ..triton.flash_fwd import (LOG2E, batch_axis_view, bulk_aligned, fold_view, grid_box, grid_extent,
                                grid_view)
from ..triton.launcher import BoundLaunches, Launcher
from ..triton.na_mask import (NA_BATCH_AXIS, NA_FOLDED, NA_GRID, NA_GROUPS, na_codes, na_codes_at,
                              na_coords, na_param, na_penalty, na_query_windows)
from ..triton.row_addressing import bulk_copy_batch, memory_rows, row_tile_origin
from .layouts import wgmma_accumulator, wgmma_register_operand

# Registers per thread of the producer warp (the consumer warpgroup gets what the kernel's cap
# leaves: ``na_forward`` launches specialized kernels with ``maxnreg=128``, two programs per SM).
PRODUCER_REGISTERS = gl.constexpr(24)
# The largest ``lazy_rescale`` threshold: weights stay below 2 ** 15, inside fp16's range with
# the headroom a 16-bit P @ V needs.
MAX_LAZY_RESCALE = 15.0
# ``PARTS_OFF`` bits of the deferred loop (timing only: ``benchmarks/gpu_forward_ablation.py``).
NO_SOFTMAX = gl.constexpr(1)
NO_COPIES = gl.constexpr(2)


@gluon.jit
def _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, t):
    """Index of the ``t``-th listed key tile of entry ``row``: its partial tiles, then its full ones."""
    part = PART_IDX + row.to(gl.int64) * PART_W + t
    full = FULL_IDX + row.to(gl.int64) * FULL_W + (t - n_part)
    return gl.load(gl.where(t < n_part, part, full))


@gluon.jit
def _issue_kv(K_DESC, V_DESC, k_bufs, v_bufs, bars, tile, slot, batch, hk, NA,
              NA_STATIC: gl.constexpr, HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr):
    """Bulk copies of key tile ``tile`` (k and v) into ring slot ``slot``, on that slot's
    mbarrier; ``batch``: the program's ``(b, r1, r2)`` (``row_addressing.bulk_copy_batch``)."""
    origin = row_tile_origin(tile * BLOCK_N, batch, hk, NA, 1, NA_STATIC, True, HEAD_D)
    bar = bars.index(slot)
    mbarrier.expect(bar, K_DESC.block_type.nbytes + V_DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(K_DESC, origin, bar, k_bufs.index(slot))
    tma.async_copy_global_to_shared(V_DESC, origin, bar, v_bufs.index(slot))


@gluon.jit
def _issue_one(DESC, bufs, bars, tile, slot, batch, hk, NA, NA_STATIC: gl.constexpr,
               HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr):
    """Bulk copy of key tile ``tile`` of one tensor (k or v) into ``bufs`` slot ``slot``, on that
    slot's mbarrier (the sequential loop keeps separate K and V rings); ``batch`` as in
    ``_issue_kv``."""
    origin = row_tile_origin(tile * BLOCK_N, batch, hk, NA, 1, NA_STATIC, True, HEAD_D)
    bar = bars.index(slot)
    mbarrier.expect(bar, DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(DESC, origin, bar, bufs.index(slot))


@gluon.jit
def _key_tile_at(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, t, NA, NA_STATIC: gl.constexpr,
                 BLOCK_N: gl.constexpr):
    """``(tile, c0, c1, c2)``: the ``t``-th listed key tile of entry ``row`` (``_tile_of``) and the
    grid coordinates of its first token, which its bulk copies (``_issue_box``) and its penalty
    (``_penalty_at``) share."""
    tile = _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, t)
    c0, c1, c2 = na_coords(tile * 0, tile * BLOCK_N, NA, 1, NA_STATIC)
    return tile, c0, c1, c2


@gluon.jit
def _box_origin(row, c1, c2, h, batch, NA, NA_STATIC: gl.constexpr, HEAD_D: gl.constexpr):
    """Descriptor coordinates of the grid box starting at ``(c0, c1, c2)`` (``row = b * G0 +
    c0``; ``_key_tile_at``'s coordinates) of batch ``batch = (b, r1, r2)``, head ``h``: ``(row,
    c1, c2, h, 0)`` in the ``[B * G0, G1, G2, H, D]`` view, under a dilation fold (``NA_FOLDED``,
    sub-grid coordinates) ``(row * G1 + c1, r1, c2, r2, h * D)`` in ``flash_fwd.fold_view``'s,
    with ``NA_BATCH_AXIS`` ``(b, c0, c1, c2, h * D)`` in ``flash_fwd.batch_axis_view``'s (as
    ``row_addressing.row_tile_origin``)."""
    if NA_FOLDED & NA_STATIC:
        origin = (row * na_param(NA, NA_GRID, 1) + c1, batch[1], c2, batch[2], h * HEAD_D)
    elif NA_BATCH_AXIS & NA_STATIC:
        origin = (batch[0], row - batch[0] * na_param(NA, NA_GRID, 0), c1, c2, h * HEAD_D)
    else:
        origin = (row, c1, c2, h, 0)
    return origin


@gluon.jit
def _issue_box(DESC, bufs, bars, origin, slot):
    """Bulk copy of the box at descriptor coordinates ``origin`` (``_box_origin``) into ``bufs``
    slot ``slot`` on that slot's mbarrier."""
    bar = bars.index(slot)
    mbarrier.expect(bar, DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(DESC, origin, bar, bufs.index(slot))


@gluon.jit
def _fold_entry(entry, NA, NA_STATIC: gl.constexpr):
    """``(b, first_row, groups)`` of batch entry ``entry``: under a dilation fold
    (``NA_FOLDED``: entries are ``batch * groups + group``) the batch, the group's first grid row
    and the number of groups (``row_addressing.fold_group``); ``(entry, 0, 1)`` otherwise."""
    if NA_FOLDED & NA_STATIC:
        groups = gl.load(NA + NA_GROUPS)
        b = entry // groups
        first_row = gl.load(NA + NA_GROUPS + 1 + (entry - b * groups)).to(gl.int64)
    else:
        groups = 1
        b = entry
        first_row = (entry * 0).to(gl.int64)
    return b, first_row, groups


@gluon.jit
def _penalty_at(origin, tile, windows, offs_n, NA, BLOCK_N: gl.constexpr, NA_STATIC: gl.constexpr):
    """``_penalty`` of key tile ``tile`` whose first token has grid coordinates ``origin``
    (``_key_tile_at``): the tile index is not divided again."""
    return na_penalty(windows, na_codes_at(origin, offs_n[None, :], tile * BLOCK_N, NA, 1, NA_STATIC),
                      NA_STATIC, True)


@gluon.jit
def _penalty(tile, windows, offs_n, NA, BLOCK_N: gl.constexpr, NA_STATIC: gl.constexpr):
    """The neighborhood penalty (``na_mask.na_penalty``: 0 or -inf, log2 domain) of key tile
    ``tile`` for the query tile whose windows are ``windows``, ``[BLOCK_M, BLOCK_N]``."""
    return na_penalty(windows, na_codes(offs_n[None, :], tile * BLOCK_N, NA, 1, NA_STATIC), NA_STATIC,
                      True)


@gluon.jit
def _online_softmax(z, m_i, l_i):
    """Online softmax of one key tile's scaled, masked logits ``z [BLOCK_M, BLOCK_N]`` (log2
    domain): ``(p, alpha, m_i, l_i)``, the tile's exp2 weights, the factor that rescales the
    running output, and the new running max and sum."""
    m_new = gl.maximum(m_i, gl.max(z, 1))
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_safe)
    p = gl.exp2(z - m_safe[:, None])
    return p, alpha, m_new, l_i * alpha + gl.sum(p, 1)


@gluon.jit
def _unmasked_softmax(s, qk_scale, m_i, l_i):
    """``_online_softmax(s * qk_scale, m_i, l_i)`` for unmasked logits ``s`` (float32, finite)
    and ``qk_scale >= 0``: the max is taken over ``s`` and scaled once per row, and each weight
    is one fused multiply-add and an exponential (the scaled logits are not formed)."""
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s * qk_scale - m_new[:, None])
    return p, alpha, m_new, l_i * alpha + gl.sum(p, 1)


# Rescale of P = _PACK running-output elements (operands 0 .. P-1, tied to inputs P .. 2P-1) by
# their row factors (3P .. 4P-1), jumped over when the thread's warp-uniform flag (2P; 2P .. 3P-1
# all equal) is 0.
_PACK = 8
_RESCALE_PACK = gl.constexpr(_PACK)
_RESCALE_ASM = gl.constexpr(
    f"{{\n.reg .pred moved;\nsetp.ne.s32 moved, ${2 * _PACK}, 0;\n@!moved bra.uni SKIP;\n"
    + "".join(f"mul.f32 ${i}, ${i}, ${3 * _PACK + i};\n" for i in range(_PACK)) + "SKIP:\n}")
_RESCALE_CONSTRAINTS = gl.constexpr(",".join(["=r"] * _PACK + [str(i) for i in range(_PACK)]
                                             + ["r"] * (2 * _PACK)))
# 1 on every lane of a warp when any of its rows (the thread's two: operands 2, 3) moved its
# max, else 0 (operands 0, 1).
_WARP_ANY_ASM = gl.constexpr("""{
.reg .pred any;
setp.ne.s32 any, $2, 0;
setp.ne.or.s32 any, $3, 0, any;
vote.sync.any.pred any, any, 0xffffffff;
selp.s32 $0, 1, 0, any;
mov.b32 $1, $0;
}""")


@gluon.jit
def _lazy_softmax(z, m_i, l_i, acc, rows_o: gl.constexpr, THRESHOLD: gl.constexpr):
    """``_online_softmax`` with a row's running max moved only when the tile raises it by more
    than ``THRESHOLD`` (log2 domain), and the running output ``acc`` rescaled only in warps
    where some row moved: ``(p, acc, m_i, l_i)``. A row that keeps its max takes the tile's
    weights against it (each at most ``2 ** THRESHOLD``, exact in fp32 sums and 16-bit P).
    After the first tiles rows rarely move, and the rescale (one multiply per output element)
    is jumped over; the decision is a warp vote, with no exchange between warps."""
    m_new = gl.maximum(m_i, gl.max(z, 1))
    m_ref = gl.where(m_new > m_i + THRESHOLD, m_new, m_i)
    m_safe = gl.where(m_ref == float("-inf"), 0.0, m_ref)
    p = gl.exp2(z - m_safe[:, None])
    alpha = gl.exp2(m_i - m_safe)
    moved = gl.inline_asm_elementwise(_WARP_ANY_ASM, "=r,=r,r,r", [(m_ref != m_i).to(gl.int32)],
                                      dtype=gl.int32, is_pure=True, pack=2)
    acc = gl.inline_asm_elementwise(_RESCALE_ASM, _RESCALE_CONSTRAINTS,
                                    [acc, gl.convert_layout(moved, rows_o)[:, None],
                                     gl.convert_layout(alpha, rows_o)[:, None]],
                                    dtype=gl.float32, is_pure=True, pack=_RESCALE_PACK)
    return p, acc, m_ref, l_i * alpha + gl.sum(p, 1)


@gluon.jit
def _tile_softmax(s, penalty, m_i, l_i, acc, qk_scale, rows_o: gl.constexpr, MASKED: gl.constexpr,
                  SCALE_NONNEGATIVE: gl.constexpr, LAZY_RESCALE: gl.constexpr):
    """The sequential loops' softmax of one key tile's logits ``s`` (float32, unscaled; under
    ``penalty`` when ``MASKED``): ``(p, acc, m_i, l_i)`` with the running output ``acc``
    rescaled (``_lazy_softmax`` with a ``LAZY_RESCALE`` threshold, else ``_online_softmax`` or,
    unmasked with a nonnegative scale, ``_unmasked_softmax``)."""
    if LAZY_RESCALE > 0:
        if MASKED:
            p, acc, m_i, l_i = _lazy_softmax(s * qk_scale + penalty, m_i, l_i, acc, rows_o,
                                             LAZY_RESCALE)
        else:
            p, acc, m_i, l_i = _lazy_softmax(s * qk_scale, m_i, l_i, acc, rows_o, LAZY_RESCALE)
    else:
        if MASKED:
            p, alpha, m_i, l_i = _online_softmax(s * qk_scale + penalty, m_i, l_i)
        elif SCALE_NONNEGATIVE:
            p, alpha, m_i, l_i = _unmasked_softmax(s, qk_scale, m_i, l_i)
        else:
            p, alpha, m_i, l_i = _online_softmax(s * qk_scale, m_i, l_i)
        acc = acc * gl.convert_layout(alpha, rows_o)[:, None]
    return p, acc, m_i, l_i


@gluon.jit
def _softmax_step(s, m_i, l_i, tile, windows, offs_n, NA, qk_scale, BLOCK_N: gl.constexpr,
                  NA_STATIC: gl.constexpr, MASKED: gl.constexpr):
    """``_online_softmax`` of one key tile's logits ``s [BLOCK_M, BLOCK_N]`` (float32, unscaled),
    under the neighborhood penalty when ``MASKED``."""
    z = s * qk_scale
    if MASKED:
        z = z + _penalty(tile, windows, offs_n, NA, BLOCK_N, NA_STATIC)
    return _online_softmax(z, m_i, l_i)


@gluon.jit
def _overlapped_step(t, s_cur, acc, m_i, l_i, q_tile, k_bufs, v_bufs, kv_bars, free_bars, K_DESC, V_DESC,
                     PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, total, batch, hk, NA, windows,
                     offs_n, qk_scale, s_zero, HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr,
                     NA_STATIC: gl.constexpr, NUM_BUF: gl.constexpr, rows_o: gl.constexpr,
                     p_layout: gl.constexpr, MASKED: gl.constexpr, SPECIALIZED: gl.constexpr):
    """Tile ``t`` (not the last) of the overlapped loop, its logits ``s_cur`` ready: issue tile
    t + 1's QK^T, take tile t's softmax, then (tile t - 1's P @ V retired) refill the ring slot
    freed by tile t - 1 (or, ``SPECIALIZED``, hand it to the producer warp) and issue tile t's
    P @ V. Returns tile t + 1's logits, waited for with
    tile t's P @ V left in flight, and the running acc, max and sum."""
    following = (t + 1) % NUM_BUF
    mbarrier.wait(kv_bars.index(following), ((t + 1) // NUM_BUF) & 1)
    s_next = warpgroup_mma(q_tile, k_bufs.index(following).reshape([BLOCK_N, HEAD_D]).permute((1, 0)),
                           s_zero, use_acc=False, is_async=True)
    tile = _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, t)
    p, alpha, m_i, l_i = _softmax_step(s_cur, m_i, l_i, tile, windows, offs_n, NA, qk_scale,
                                       BLOCK_N, NA_STATIC, MASKED)
    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
    if SPECIALIZED:
        # Hand tile t - 1's ring slot back to the producer warp.
        mbarrier.arrive(free_bars.index((t + NUM_BUF - 1) % NUM_BUF), count=1, pred=t > 0)
    else:
        ahead = t + NUM_BUF - 1
        if ahead < total:
            _issue_kv(K_DESC, V_DESC, k_bufs, v_bufs, kv_bars,
                      _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, ahead),
                      ahead % NUM_BUF, batch, hk, NA, NA_STATIC, HEAD_D, BLOCK_N)
    acc = acc * gl.convert_layout(alpha, rows_o)[:, None]
    acc = warpgroup_mma(gl.convert_layout(p.to(k_bufs.dtype), p_layout),
                        v_bufs.index(t % NUM_BUF).reshape([BLOCK_N, HEAD_D]), acc, is_async=True)
    s_next = warpgroup_mma_wait(num_outstanding=1, deps=(s_next,))
    return s_next, acc, m_i, l_i


@gluon.jit
def _last_step(t, s_cur, acc, m_i, l_i, v_bufs, PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part,
               NA, windows, offs_n, qk_scale, HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr,
               NA_STATIC: gl.constexpr, NUM_BUF: gl.constexpr, rows_o: gl.constexpr,
               p_layout: gl.constexpr, MASKED: gl.constexpr):
    """The last tile ``t`` of the overlapped loop: softmax, then P @ V, left in flight."""
    tile = _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, t)
    p, alpha, m_i, l_i = _softmax_step(s_cur, m_i, l_i, tile, windows, offs_n, NA, qk_scale,
                                       BLOCK_N, NA_STATIC, MASKED)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    acc = acc * gl.convert_layout(alpha, rows_o)[:, None]
    acc = warpgroup_mma(gl.convert_layout(p.to(v_bufs.dtype), p_layout),
                        v_bufs.index(t % NUM_BUF).reshape([BLOCK_N, HEAD_D]), acc, is_async=True)
    return acc, m_i, l_i


@gluon.jit
def _kv_producer(K_DESC, V_DESC, k_bufs, v_bufs, kv_bars, free_bars, PART_IDX, FULL_IDX, row,
                 PART_W, FULL_W, n_part, total, batch, hk, NA, NA_STATIC: gl.constexpr,
                 HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr, NUM_BUF: gl.constexpr):
    """One warp that fills the K/V ring: tile t goes into slot t % NUM_BUF once the consumer has
    handed that slot back (``free_bars``; a fresh barrier counts as handed back)."""
    for t in range(total):
        slot = t % NUM_BUF
        mbarrier.wait(free_bars.index(slot), ((t // NUM_BUF) & 1) ^ 1)
        _issue_kv(K_DESC, V_DESC, k_bufs, v_bufs, kv_bars,
                  _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, t), slot, batch, hk, NA,
                  NA_STATIC, HEAD_D, BLOCK_N)


@gluon.jit
def _deferred_pv_loop(q_tile, k_bufs, v_bufs, kv_bars, v_bars, K_DESC, V_DESC, PART_IDX, FULL_IDX,
                      NA, row, n_part, total, batch, hk, PART_W, FULL_W, windows, offs_n, acc, m_i, l_i,
                      s_zero, qk_scale, HEAD_D: gl.constexpr, BLOCK_N: gl.constexpr,
                      NA_STATIC: gl.constexpr, rows_o: gl.constexpr, p_layout: gl.constexpr,
                      MASKED: gl.constexpr, SCALE_NONNEGATIVE: gl.constexpr,
                      LAZY_RESCALE: gl.constexpr, PARTS_OFF: gl.constexpr):
    """The sequential loop with one K slot and two V slots, each tile's P @ V left in flight
    until the next tile's QK^T is waited for: ``(acc, m_i, l_i)``, acc complete.

    ``PARTS_OFF`` (timing only, outputs wrong; 0 as routed): ``NO_SOFTMAX`` takes the logits as
    the weights (no mask, max, exponential or rescale), ``NO_COPIES`` copies the first tile only
    and reuses it for every step.

    Step t: the penalty of tile t (the wait on tile t - 1's P @ V would otherwise leave the
    warps idle), QK^T of tile t, one wait for both products, then the copies of tile t + 1
    (K into the slot QK^T of tile t has read, V into the slot P @ V of tile t - 1 has read),
    the softmax of tile t and its P @ V. The index of tile t + 1 is loaded at the start of step
    t, so its load is not waited for at once."""
    dtype: gl.constexpr = k_bufs.dtype
    row0 = batch[0] * na_param(NA, NA_GRID, 0)
    tile, c0, c1, c2 = _key_tile_at(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, 0, NA,
                                    NA_STATIC, BLOCK_N)
    box = _box_origin(row0 + c0, c1, c2, hk, batch, NA, NA_STATIC, HEAD_D)
    _issue_box(K_DESC, k_bufs, kv_bars, box, 0)
    _issue_box(V_DESC, v_bufs, v_bars, box, 0)
    acc = warpgroup_mma_init(acc)
    no_softmax: gl.constexpr = (PARTS_OFF & NO_SOFTMAX) != 0
    no_copies: gl.constexpr = (PARTS_OFF & NO_COPIES) != 0
    for t in range(total):
        nxt = _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, gl.minimum(t + 1, total - 1))
        if MASKED and not no_softmax:
            penalty = _penalty_at((c0, c1, c2), tile, windows, offs_n, NA, BLOCK_N, NA_STATIC)
        else:
            penalty = 0.0
        if not no_copies or t == 0:
            mbarrier.wait(kv_bars.index(0), t & 1)
        s = warpgroup_mma(q_tile, k_bufs.index(0).reshape([BLOCK_N, HEAD_D]).permute((1, 0)),
                          s_zero, use_acc=False, is_async=True)
        s, acc = warpgroup_mma_wait(num_outstanding=0, deps=(s, acc))
        n0, n1, n2 = na_coords(nxt * 0, nxt * BLOCK_N, NA, 1, NA_STATIC)
        if t + 1 < total and not no_copies:
            box = _box_origin(row0 + n0, n1, n2, hk, batch, NA, NA_STATIC, HEAD_D)
            _issue_box(K_DESC, k_bufs, kv_bars, box, 0)
            _issue_box(V_DESC, v_bufs, v_bars, box, (t + 1) % 2)
        if no_softmax:
            p = s
        else:
            p, acc, m_i, l_i = _tile_softmax(s, penalty, m_i, l_i, acc, qk_scale, rows_o, MASKED,
                                             SCALE_NONNEGATIVE, LAZY_RESCALE)
        v_slot = 0 if no_copies else t % 2
        if not no_copies or t == 0:
            mbarrier.wait(v_bars.index(v_slot), (t // 2) & 1)
        acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout),
                            v_bufs.index(v_slot).reshape([BLOCK_N, HEAD_D]), acc, is_async=True)
        tile, c0, c1, c2 = nxt, n0, n1, n2
    if no_softmax:
        l_i = l_i + 1.0
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    return acc, m_i, l_i


@gluon.jit
def _query_tile_start(m, NA, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      NA_STATIC: gl.constexpr, s_layout: gl.constexpr, o_layout: gl.constexpr):
    """What a consumer holds before the tile loop of query tile ``m``: ``(offs_m, offs_n,
    windows, acc, m_i, l_i, s_zero)``, the row and column offsets (in the logits' layout
    ``s_layout``), the query windows (``na_query_windows``), the zero running output (in
    ``o_layout``), the running max (-inf) and sum, and the zero accumulator of QK^T."""
    rows_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    offs_m = gl.arange(0, BLOCK_M, layout=rows_s)
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    windows = na_query_windows(offs_m[:, None], m * BLOCK_M, NA, NA_STATIC)
    acc = gl.zeros([BLOCK_M, HEAD_D], gl.float32, o_layout)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, rows_s)
    l_i = gl.zeros([BLOCK_M], gl.float32, rows_s)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    return offs_m, offs_n, windows, acc, m_i, l_i, s_zero


@gluon.jit
def _consumer(q_smem, k_bufs, v_bufs, q_bar, kv_bars, v_bars, free_bars, K_DESC, V_DESC, O_DESC, LSE,
              PART_IDX, FULL_IDX, NA, row, n_part, total, m, batch, lse_base, hk, q_origin, PART_W,
              FULL_W, qk_scale, HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr,
              BLOCK_N: gl.constexpr, NA_STATIC: gl.constexpr, NUM_BUF: gl.constexpr,
              V_BUF: gl.constexpr, OVERLAP: gl.constexpr, MASKED: gl.constexpr,
              SPECIALIZED: gl.constexpr, LAZY_RESCALE: gl.constexpr, DEFER_PV: gl.constexpr,
              SCALE_NONNEGATIVE: gl.constexpr, PARTS_OFF: gl.constexpr, WARPS: gl.constexpr):
    """The warpgroup that computes: QK^T, softmax and P @ V over the listed key tiles, then o
    (through q's buffer, by a bulk store) and lse."""
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = wgmma_accumulator(WARPS, BLOCK_N)
    o_layout: gl.constexpr = wgmma_accumulator(WARPS, HEAD_D)
    p_layout: gl.constexpr = wgmma_register_operand(o_layout)
    rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)

    offs_m, offs_n, windows, acc, m_i, l_i, s_zero = _query_tile_start(
        m, NA, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, s_layout, o_layout)

    mbarrier.wait(q_bar, 0)
    q_tile = q_smem.reshape([BLOCK_M, HEAD_D])
    if OVERLAP:
        # wgmma groups complete in issue order. Tile t + 1's QK^T is issued before tile t's
        # softmax and waited for after tile t's P @ V is issued, so each product runs under a
        # softmax. The logits of consecutive tiles alternate between two accumulators (s_a,
        # s_b: the loop is unrolled by two) and the last tile is peeled off, so no register copy
        # reads an accumulator in flight and every wait count is static; either would make
        # ptxas serialize all wgmmas. Tile t + 1 is in flight before step t: NUM_BUF >= 3. A
        # neighborhood lists at least one key tile per query tile.
        acc = warpgroup_mma_init(acc)
        mbarrier.wait(kv_bars.index(0), 0)
        s_a = warpgroup_mma(q_tile, k_bufs.index(0).reshape([BLOCK_N, HEAD_D]).permute((1, 0)),
                            s_zero, use_acc=False, is_async=True)
        s_a = warpgroup_mma_wait(num_outstanding=0, deps=(s_a,))
        steps = total - 1
        for pair in range(steps // 2):
            s_b, acc, m_i, l_i = _overlapped_step(
                2 * pair, s_a, acc, m_i, l_i, q_tile, k_bufs, v_bufs, kv_bars, free_bars, K_DESC, V_DESC, PART_IDX,
                FULL_IDX, row, PART_W, FULL_W, n_part, total, batch, hk, NA, windows, offs_n, qk_scale,
                s_zero, HEAD_D, BLOCK_N, NA_STATIC, NUM_BUF, rows_o, p_layout, MASKED,
                SPECIALIZED)
            s_a, acc, m_i, l_i = _overlapped_step(
                2 * pair + 1, s_b, acc, m_i, l_i, q_tile, k_bufs, v_bufs, kv_bars, free_bars, K_DESC, V_DESC, PART_IDX,
                FULL_IDX, row, PART_W, FULL_W, n_part, total, batch, hk, NA, windows, offs_n, qk_scale,
                s_zero, HEAD_D, BLOCK_N, NA_STATIC, NUM_BUF, rows_o, p_layout, MASKED,
                SPECIALIZED)
        if steps % 2 == 1:
            s_b, acc, m_i, l_i = _overlapped_step(
                steps - 1, s_a, acc, m_i, l_i, q_tile, k_bufs, v_bufs, kv_bars, free_bars, K_DESC, V_DESC,
                PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, total, batch, hk, NA, windows, offs_n,
                qk_scale, s_zero, HEAD_D, BLOCK_N, NA_STATIC, NUM_BUF, rows_o, p_layout, MASKED,
                SPECIALIZED)
            acc, m_i, l_i = _last_step(steps, s_b, acc, m_i, l_i, v_bufs, PART_IDX, FULL_IDX, row,
                                       PART_W, FULL_W, n_part, NA, windows, offs_n, qk_scale,
                                       HEAD_D, BLOCK_N, NA_STATIC, NUM_BUF, rows_o, p_layout, MASKED)
        else:
            acc, m_i, l_i = _last_step(steps, s_a, acc, m_i, l_i, v_bufs, PART_IDX, FULL_IDX, row,
                                       PART_W, FULL_W, n_part, NA, windows, offs_n, qk_scale,
                                       HEAD_D, BLOCK_N, NA_STATIC, NUM_BUF, rows_o, p_layout, MASKED)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    elif DEFER_PV:
        acc, m_i, l_i = _deferred_pv_loop(q_tile, k_bufs, v_bufs, kv_bars, v_bars, K_DESC, V_DESC,
                                          PART_IDX, FULL_IDX, NA, row, n_part, total, batch, hk, PART_W,
                                          FULL_W, windows, offs_n, acc, m_i, l_i, s_zero, qk_scale,
                                          HEAD_D, BLOCK_N, NA_STATIC, rows_o, p_layout, MASKED,
                                          SCALE_NONNEGATIVE, LAZY_RESCALE, PARTS_OFF)
    else:
        # K tiles in a ring of NUM_BUF slots under kv_bars, V tiles in one of V_BUF under v_bars:
        # tile t + NUM_BUF - 1 of k and t + V_BUF - 1 of v are copied at step t, into the slots
        # tile t - 1's (completed) products read. The grid coordinates of tile t (its V copy with
        # one V slot, its penalty) are computed once; with two K slots tile t + 1's are computed
        # at step t for its copies and carried into step t + 1.
        row0 = batch[0] * na_param(NA, NA_GRID, 0)
        tile, c0, c1, c2 = _key_tile_at(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, 0, NA,
                                        NA_STATIC, BLOCK_N)
        for t in range(total):
            box = _box_origin(row0 + c0, c1, c2, hk, batch, NA, NA_STATIC, HEAD_D)
            if NUM_BUF == 2:
                # Tile t + 1 (at the last step the last tile again, not copied).
                nxt, n0, n1, n2 = _key_tile_at(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part,
                                               gl.minimum(t + 1, total - 1), NA, NA_STATIC, BLOCK_N)
                if t + 1 < total:
                    next_box = _box_origin(row0 + n0, n1, n2, hk, batch, NA, NA_STATIC, HEAD_D)
                    _issue_box(K_DESC, k_bufs, kv_bars, next_box, (t + 1) % 2)
                    if V_BUF == 2:
                        _issue_box(V_DESC, v_bufs, v_bars, next_box, (t + 1) % 2)
            elif NUM_BUF == 1:
                _issue_box(K_DESC, k_bufs, kv_bars, box, 0)
            else:
                k_ahead = t + NUM_BUF - 1
                if k_ahead < total:
                    _issue_one(K_DESC, k_bufs, kv_bars,
                               _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, k_ahead),
                               k_ahead % NUM_BUF, batch, hk, NA, NA_STATIC, HEAD_D, BLOCK_N)
            if V_BUF == 1:
                _issue_box(V_DESC, v_bufs, v_bars, box, 0)
            elif V_BUF != 2 or NUM_BUF != 2:
                v_ahead = t + V_BUF - 1
                if v_ahead < total:
                    _issue_one(V_DESC, v_bufs, v_bars,
                               _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, v_ahead),
                               v_ahead % V_BUF, batch, hk, NA, NA_STATIC, HEAD_D, BLOCK_N)
            if MASKED:
                # Needs only the tile's coordinates: computed before the product is waited for.
                penalty = _penalty_at((c0, c1, c2), tile, windows, offs_n, NA, BLOCK_N, NA_STATIC)
            else:
                penalty = 0.0
            mbarrier.wait(kv_bars.index(t % NUM_BUF), (t // NUM_BUF) & 1)
            s = warpgroup_mma(q_tile,
                              k_bufs.index(t % NUM_BUF).reshape([BLOCK_N, HEAD_D]).permute((1, 0)),
                              s_zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            p, acc, m_i, l_i = _tile_softmax(s, penalty, m_i, l_i, acc, qk_scale, rows_o, MASKED,
                                             SCALE_NONNEGATIVE, LAZY_RESCALE)
            mbarrier.wait(v_bars.index(t % V_BUF), (t // V_BUF) & 1)
            acc = warpgroup_mma(gl.convert_layout(p.to(dtype), p_layout),
                                v_bufs.index(t % V_BUF).reshape([BLOCK_N, HEAD_D]), acc, is_async=True)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            if NUM_BUF == 2:
                tile, c0, c1, c2 = nxt, n0, n1, n2
            else:
                tile, c0, c1, c2 = _key_tile_at(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part,
                                                gl.minimum(t + 1, total - 1), NA, NA_STATIC, BLOCK_N)

    _store_output(acc, m_i, l_i, offs_m, m, q_smem, O_DESC, q_origin, LSE, lse_base, NA, BLOCK_M, HEAD_D,
                  NA_STATIC, rows_o)


@gluon.jit
def _store_output(acc, m_i, l_i, offs_m, m, q_smem, O_DESC, q_origin, LSE, lse_base, NA,
                  BLOCK_M: gl.constexpr, HEAD_D: gl.constexpr, NA_STATIC: gl.constexpr,
                  rows_o: gl.constexpr):
    """o = acc / l (bulk store through q's buffer: every QK^T product that read q has completed)
    and lse = (m + log2 l) ln 2 (-inf for rows that saw no key) of query tile ``m``; ``m_i``,
    ``l_i`` and ``offs_m`` in one row layout."""
    empty = l_i == 0.0
    l_safe = gl.where(empty, 1.0, l_i)
    o = acc / gl.convert_layout(l_safe, rows_o)[:, None]
    lse = gl.where(empty, float("-inf"), (m_i + gl.log2(l_safe)) * 0.6931471805599453)
    q_mem = memory_rows(offs_m, m * BLOCK_M, NA, 0, NA_STATIC, True).to(gl.int64)
    gl.store(LSE + lse_base + q_mem, lse)
    q_smem.reshape([BLOCK_M, HEAD_D]).store(o.to(q_smem.dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(O_DESC, q_origin, q_smem)
    tma.store_wait(pendings=0)




@gluon.jit
def _na_fwd(Q_DESC, K_DESC, V_DESC, O_DESC, LSE, PART_CNT, PART_IDX, FULL_CNT, FULL_IDX, NA,
            H_Q, GROUP, S_Q, MAP_HEADS, N_Q_TILES, PART_W, FULL_W, qk_scale,
            HEAD_D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
            NA_STATIC: gl.constexpr, NUM_BUF: gl.constexpr, V_BUF: gl.constexpr,
            OVERLAP: gl.constexpr, MASKED: gl.constexpr, SPECIALIZED: gl.constexpr,
            LAZY_RESCALE: gl.constexpr, DEFER_PV: gl.constexpr, SCALE_NONNEGATIVE: gl.constexpr,
            PARTS_OFF: gl.constexpr, num_warps: gl.constexpr):
    m = gl.program_id(0)
    entry_head = gl.program_id(1)
    entry = entry_head // H_Q
    h = entry_head - entry * H_Q
    b, first_row, groups = _fold_entry(entry, NA, NA_STATIC)
    batch = bulk_copy_batch(b, first_row, NA, NA_STATIC)
    # lse [B, H, S] holds the whole grid's rows (S = S_Q * groups under a fold).
    lse_base = (b * H_Q + h).to(gl.int64) * (S_Q * groups) + first_row
    hk = h // GROUP
    row = (h % MAP_HEADS) * N_Q_TILES + m
    n_part = gl.load(PART_CNT + row)
    total = n_part + gl.load(FULL_CNT + row)
    dtype: gl.constexpr = Q_DESC.dtype

    q_smem = gl.allocate_shared_memory(dtype, Q_DESC.block_type.shape, Q_DESC.layout)
    k_bufs = gl.allocate_shared_memory(dtype, [NUM_BUF] + K_DESC.block_type.shape, K_DESC.layout)
    v_bufs = gl.allocate_shared_memory(dtype, [V_BUF] + V_DESC.block_type.shape, V_DESC.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    kv_bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [V_BUF, 1], mbarrier.MBarrierLayout())
    free_bars = gl.allocate_shared_memory(gl.int64, [NUM_BUF, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(NUM_BUF):
        mbarrier.init(kv_bars.index(i), count=1)
        mbarrier.init(free_bars.index(i), count=1)
    for i in gl.static_range(V_BUF):
        mbarrier.init(v_bars.index(i), count=1)

    q_origin = row_tile_origin(m * BLOCK_M, batch, h, NA, 0, NA_STATIC, True, HEAD_D)
    mbarrier.expect(q_bar, Q_DESC.block_type.nbytes)
    tma.async_copy_global_to_shared(Q_DESC, q_origin, q_bar, q_smem)
    if SPECIALIZED:
        gl.warp_specialize([
            (_consumer, (q_smem, k_bufs, v_bufs, q_bar, kv_bars, v_bars, free_bars, K_DESC, V_DESC,
                         O_DESC, LSE, PART_IDX, FULL_IDX, NA, row, n_part, total, m, batch, lse_base, hk,
                         q_origin, PART_W, FULL_W, qk_scale, HEAD_D, BLOCK_M, BLOCK_N,
                         NA_STATIC, NUM_BUF, V_BUF, OVERLAP, MASKED, SPECIALIZED, LAZY_RESCALE,
                         DEFER_PV, SCALE_NONNEGATIVE, PARTS_OFF, num_warps)),
            (_kv_producer, (K_DESC, V_DESC, k_bufs, v_bufs, kv_bars, free_bars, PART_IDX, FULL_IDX,
                            row, PART_W, FULL_W, n_part, total, batch, hk, NA, NA_STATIC, HEAD_D,
                            BLOCK_N, NUM_BUF)),
        ], [1], [PRODUCER_REGISTERS])
    else:
        for t in gl.static_range(NUM_BUF - 1):
            if t < total:
                tile = _tile_of(PART_IDX, FULL_IDX, row, PART_W, FULL_W, n_part, t)
                if OVERLAP:
                    _issue_kv(K_DESC, V_DESC, k_bufs, v_bufs, kv_bars, tile, t, batch, hk, NA,
                              NA_STATIC, HEAD_D, BLOCK_N)
                else:
                    _issue_one(K_DESC, k_bufs, kv_bars, tile, t, batch, hk, NA, NA_STATIC, HEAD_D,
                               BLOCK_N)
                    if t < V_BUF - 1:
                        _issue_one(V_DESC, v_bufs, v_bars, tile, t, batch, hk, NA, NA_STATIC, HEAD_D,
                                   BLOCK_N)
        _consumer(q_smem, k_bufs, v_bufs, q_bar, kv_bars, v_bars, free_bars, K_DESC, V_DESC, O_DESC,
                  LSE, PART_IDX, FULL_IDX, NA, row, n_part, total, m, batch, lse_base, hk, q_origin,
                  PART_W, FULL_W, qk_scale, HEAD_D, BLOCK_M, BLOCK_N, NA_STATIC, NUM_BUF, V_BUF,
                  OVERLAP, MASKED, SPECIALIZED, LAZY_RESCALE, DEFER_PV, SCALE_NONNEGATIVE,
                  PARTS_OFF, num_warps)


_LAUNCH = Launcher(_na_fwd)
# Repeat calls (same plan, fold, shapes, strides, dtype, device, scale and variant) launch with
# only q, k, v, o and lse filled in (``launcher.BoundLaunch``).
_BOUND = BoundLaunches()
# (block shape, dtype) -> the default NVMMA shared layout, checked by one descriptor built the
# usual way (the constructor's asserts cost several microseconds per launch).
_LAYOUTS: dict = {}


def _view(t: torch.Tensor, plan, fold):
    """``(shape, strides)`` of ``t [B, S, H, D]``'s bulk-copy view: ``flash_fwd.grid_view`` of
    the plan's grid (``t`` holding that grid or, for a ``PaddedNeighborhood``'s plan, only its
    extent: ``plan_rows``; ``flash_fwd.batch_axis_view`` where ``batch_axis``), or under a
    dilation ``fold`` ``flash_fwd.fold_view``; None without one."""
    if fold is not None:
        return fold_view(t, fold)
    if batch_axis(t, plan):
        return batch_axis_view(t, grid_extent(plan))
    return grid_view(t, plan.na_values[0:3], grid_extent(plan))


def batch_axis(t: torch.Tensor, plan) -> bool:
    """Whether ``t [B, S, H, D]`` is bulk-copied through ``flash_fwd.batch_axis_view`` (boxes
    ``[1, b0, b1, b2, D]``, the kernels' ``NA_BATCH_AXIS``): it holds only the extent of a
    ``PaddedNeighborhood``'s plan padded along axis 0, at ``B > 1``."""
    extent = grid_extent(plan)
    return (extent is not None and t.shape[0] > 1 and extent[0] != plan.na_values[0]
            and t.shape[1] == extent[0] * extent[1] * extent[2])


def static_switches(q: torch.Tensor, plan) -> int:
    """The kernels' ``NA_STATIC`` for a call over ``plan`` (no fold) with query ``q``: the plan's,
    with ``NA_BATCH_AXIS`` where ``batch_axis``."""
    return plan.na_static | (masks.NA_BATCH_AXIS_BIT if batch_axis(q, plan) else 0)


def launch_params(q: torch.Tensor, plan, fold=None) -> tuple:
    """``(NA, NA_STATIC, groups)`` of a launch over ``plan`` with query ``q``: the plan's
    parameters and ``static_switches``, one group; under a dilation ``fold`` its parameters
    (``DilationFold.params``) and its number of groups."""
    if fold is None:
        return plan.na_params, static_switches(q, plan), 1
    na_params, na_static = fold.params(plan)
    return na_params, na_static, fold.groups


def plan_rows(plan, fold=None) -> int:
    """Rows of the per-row statistics (lse, delta ``[B, H, rows]``) of a call over ``plan``: the
    plan's grid, every dilation group's under a ``fold``. A ``PaddedNeighborhood``'s q, k, v
    (and o, the gradients) may hold only the extent's tokens (``_view``); its statistics always
    cover the padded grid."""
    return plan.q_len * (1 if fold is None else fold.groups)


def check_row_stats(kernel: str, lse: torch.Tensor, delta: torch.Tensor, shape: tuple) -> None:
    """Raise ``ValueError`` naming ``kernel`` and the argument unless ``lse`` and ``delta`` (the
    backward kernels' per-row statistics) are contiguous float32 tensors of ``shape``
    ``(B, H_q, S)``."""
    for name, t in (("lse", lse), ("delta", delta)):
        if t.shape != shape or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"{kernel}: {name} must be contiguous float32 {list(shape)}, "
                             f"got {t.dtype} {list(t.shape)}")


def _descriptor(t: torch.Tensor, plan, box, fold=None) -> TensorDescriptor:
    """``t [B, S, H, D]`` (grid order, batch and sequence mergeable, 16-byte aligned: ``supports``)
    as ``_view`` sees it, with block ``[*box, 1, D]`` (under a fold ``[b1, 1, b2, 1, D]``, the
    same ``b1 x b2`` tokens) and the default NVMMA shared layout."""
    shape, strides = _view(t, plan, fold)
    if fold is not None:
        block = [box[1], 1, box[2], 1, t.shape[3]]
    elif batch_axis(t, plan):
        block = [1, *box, t.shape[3]]
    else:
        block = [*box, 1, t.shape[3]]
    key = (tuple(block), t.dtype)
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = gl.NVMMASharedLayout.get_default_for(
            block, gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16)
        TensorDescriptor(t, shape, strides, block, layout)
        _LAYOUTS[key] = layout
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(base=t, shape=shape, strides=strides, block_shape=block, layout=layout,
                         padding="zero")
    return desc


# (plan and fold ids, per tensor dtype, shape, strides, 16-byte aligned base) -> (plan, fold,
# answer) of ``supports``: its checks cost about 20 us of host per call, the key a few.
_SUPPORTED: dict = {}
MAX_SUPPORTED_KEYS = 4096


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan, fold=None) -> bool:
    """Whether ``na_forward`` handles this call (see the module docstring); ``fold``: a
    ``masks.DilationFold`` (the plan is one dilation group's; its tiles must be boxes of depth
    one along grid axis 0, on 64-row tiles). Answers are kept per plan, fold and the tensors'
    dtypes, shapes, strides and base alignment, everything the checks read."""
    key = (id(plan), id(fold), *((t.dtype, t.shape, t.stride(), t.data_ptr() % 16 == 0) for t in (q, k, v)))
    hit = _SUPPORTED.get(key)
    if hit is not None and hit[0] is plan and hit[1] is fold:
        return hit[2]
    answer = _supports(q, k, v, plan, fold)
    if len(_SUPPORTED) >= MAX_SUPPORTED_KEYS:
        _SUPPORTED.clear()
    _SUPPORTED[key] = (plan, fold, answer)
    return answer


def _supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan, fold) -> bool:
    if plan.mask_mode not in (masks.MASK_NEIGHBORHOOD, masks.MASK_NONE) or not plan.na_values:
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or not (q.dtype == k.dtype == v.dtype):
        return False
    dim = q.shape[3]
    if dim not in (32, 64, 128) or k.shape[3] != dim or v.shape[3] != dim:
        return False
    if plan.block_m not in (64, 128) or plan.block_n not in (32, 64):
        return False
    boxes = (grid_box(plan, plan.block_m), grid_box(plan, plan.block_n))
    if None in boxes:
        return False
    if fold is not None and (plan.block_m != 64 or any(box[0] != 1 for box in boxes)):
        return False
    return all(t.stride(3) == 1 and _view(t, plan, fold) is not None and bulk_aligned(t)
               for t in (q, k, v))


def na_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan, *, scale: float,
               num_buffers: int = 3, overlap: bool = True, specialized: bool = False,
               v_buffers: int | None = None, max_registers: int | None = None,
               lazy_rescale: float = 0.0, defer_pv: bool = False, fold=None,
               scope_checked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o [B, S, H_q, D], lse float32 [B, H_q, plan_rows])`` of softmax attention over ``plan`` (a
    tiled neighborhood's plan at 64 x 64, 64 x 32 or 128 x 64 tiles) for grid-order ``q [B, S, H_q, D]``,
    ``k``, ``v`` ``[B, S, H_kv, D]`` (``S``: the plan's grid, or a ``PaddedNeighborhood``'s
    extent: ``_view``); ``supports`` must hold. ``num_buffers``: K/V ring slots (3 or more with
    ``overlap``; without it, the K ring's, at least 1); ``v_buffers``: without ``overlap``, the
    V ring's slots (1 to ``num_buffers``; default ``num_buffers``); ``overlap``: each tile's
    QK^T and P @ V run under a neighbouring tile's softmax; ``specialized``: a producer warp
    fills the ring (warp specialization, with ``overlap``; launched at 128 registers);
    ``max_registers``: a register cap per thread for the other variants (fewer registers, more
    programs per SM); ``lazy_rescale``: in the sequential loop, a threshold (log2 units, in
    (0, ``MAX_LAZY_RESCALE``]) below which a grown row max does not rescale the running output
    (``_lazy_softmax``; 0: every tile rescales); ``defer_pv``: the sequential loop with one K
    slot and two V slots that leaves each P @ V in flight under the next tile's penalty and
    QK^T (``_deferred_pv_loop``; ``num_buffers=1, v_buffers=2``); ``fold``: a
    ``masks.DilationFold``: q, k, v hold the whole grid, the plan is one dilation group's, and
    every group runs (``supports(..., fold)``; the programs' batch entries are ``batch *
    groups + group``); ``scope_checked``: the caller has found ``supports`` true for these
    tensors and plan (the routes do), so it is not evaluated again."""
    if specialized and not overlap:
        raise ValueError("na_forward: specialized=True needs overlap=True")
    if num_buffers < (3 if overlap else 1):
        raise ValueError(f"na_forward: num_buffers must be at least {3 if overlap else 1} "
                         f"(overlap={overlap}), got {num_buffers}")
    if v_buffers is None:
        v_buffers = num_buffers
    if not 1 <= v_buffers <= max(num_buffers, 2 if defer_pv else 1) or (overlap and v_buffers != num_buffers):
        raise ValueError(f"na_forward: v_buffers must be in [1, num_buffers] (equal to it with "
                         f"overlap, 2 with defer_pv), got {v_buffers} with num_buffers={num_buffers}")
    if plan.block_m == 128 and overlap:
        raise ValueError("na_forward: 128-row query tiles (two warpgroups) run the sequential loop "
                         "only: pass overlap=False")
    if not 0.0 <= lazy_rescale <= MAX_LAZY_RESCALE or (lazy_rescale and overlap):
        raise ValueError(f"na_forward: lazy_rescale must be in [0, {MAX_LAZY_RESCALE}] and needs "
                         f"overlap=False, got {lazy_rescale} with overlap={overlap}")
    if defer_pv and (overlap or num_buffers != 1 or v_buffers != 2):
        raise ValueError(f"na_forward: defer_pv needs overlap=False, num_buffers=1 and v_buffers=2, "
                         f"got overlap={overlap}, num_buffers={num_buffers}, v_buffers={v_buffers}")
    if max_registers is not None and specialized:
        raise ValueError("na_forward: max_registers is for variants without specialized (which "
                         "runs at 128)")
    if not scope_checked and not supports(q, k, v, plan, fold):
        raise ValueError("na_forward: this call is outside the Gluon forward's scope (see supports)")
    batch, heads, dim = q.shape[0], q.shape[2], q.shape[3]
    seq = plan_rows(plan, fold)
    o = torch.empty_like(q)
    lse = torch.empty(batch, heads, seq, dtype=torch.float32, device=q.device)
    key = (id(plan), id(fold), q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype,
           q.device, scale, num_buffers, v_buffers, overlap, specialized, max_registers, lazy_rescale,
           defer_pv)
    bound = _BOUND.get(key, (plan, fold))
    if bound is not None:
        bound(q, k, v, o, lse)
        return o, lse
    q_box, k_box = grid_box(plan, plan.block_m), grid_box(plan, plan.block_n)
    q_desc, o_desc = (_descriptor(t, plan, q_box, fold) for t in (q, o))
    k_desc, v_desc = (_descriptor(t, plan, k_box, fold) for t in (k, v))
    na_params, na_static, groups = launch_params(q, plan, fold)
    rows = plan.rows
    cap = 128 if specialized else max_registers
    grid = (plan.n_q_tiles, batch * groups * heads)
    args = (q_desc, k_desc, v_desc, o_desc, lse, rows.part_count, rows.part_index, rows.full_count,
            rows.full_index, na_params, heads, heads // k.shape[2], seq // groups, plan.map_heads,
            plan.n_q_tiles, rows.part_width, rows.full_width, scale * LOG2E)
    options = dict(
        HEAD_D=dim, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, NA_STATIC=na_static,
        NUM_BUF=num_buffers, V_BUF=v_buffers, OVERLAP=overlap,
        MASKED=plan.mask_mode == masks.MASK_NEIGHBORHOOD, SPECIALIZED=specialized,
        LAZY_RESCALE=float(lazy_rescale), DEFER_PV=defer_pv, SCALE_NONNEGATIVE=scale >= 0,
        PARTS_OFF=0, num_warps=plan.block_m // 16, **({"maxnreg": cap} if cap else {}))
    _LAUNCH[grid](*args, **options)
    _BOUND.remember(key, _LAUNCH, grid, args, options, live=(0, 1, 2, 3, 4), owners=(plan, fold))
    return o, lse
