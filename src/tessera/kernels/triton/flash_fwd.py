"""Block-sparse flash-attention forward (Triton).

One program per (query tile, batch x query head). It walks the key tiles its ``KernelPlan`` lists
for (head, query tile): first the partial tiles (masked: bounds plus band, per-tile bands,
N-D neighborhood or bitmask), then the full tiles (no masking at all), with an online softmax in
exp2 (``scale * log2(e)`` folded into the logits). Writes ``o [B, S_q, H_q, D_v]`` and ``lse`` float32 ``[B, H_q, S_q]`` (natural log).
Fully masked rows give ``o = 0``, ``lse = -inf`` (``lse = sink`` with sinks). With sigmoid scores
``o = sum_j sigmoid(z_j + sigmoid_bias) v_j`` and no lse.

Biases are compile-time switches: ALiBi, a tensor (loaded per tile), low-rank factors (the tile
``u_rows @ w_rows^T``, one small dot per tile) and a relative-position table (gathered per tile
from the grid coordinates of each pair); none is ever formed as ``S_q x S_k``.

Query head ``h`` reads kv head ``h // (H_q // H_kv)``; inputs may be any strided view whose head
dim is contiguous. Sequence lengths are runtime arguments (no recompilation per length). On
Hopper, k and v arrive by bulk copies (tensor descriptors) where their tiles allow, and in grid
order o leaves by a bulk store (``O_BULK_ENABLED``).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ...patterns.layout import rows_box
from .host_math import padded_width
from .launcher import Launcher
from .masks import NA_FIELD_NAMES
from .na_mask import na_codes, na_query_windows
from .program_ids import RUN_TIME_INTS, listed_tiles, program_ids
from .row_addressing import bulk_copy_batch, fold_group, load_row_tiles, memory_rows, store_rows
from .schedule import row_launch
from .scoring import (INTERPRETED, grid_flat, interpreter_range, load_factor_rows, low_rank_tile,
                      rel_pos_tile, score_tile)

if INTERPRETED:
    range = interpreter_range  # noqa: A001


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, s_kn, s_vn, k_desc, v_desc, copy_batch, hk,
               idx_ptr, bits_idx_ptr, count, BITS, TILE_BAND, NA, na_win,
               q_row, q_pos, offs_m, offs_n, offs_d, offs_dv, S_Q, S_K,
               scale, qk_scale, softcap, slope, band_lo, band_hi, sig_bias2,
               bias_base, s_bias_m, s_bias_n, u, w_base, s_wn, s_wr, offs_r, RANK,
               table_base, fq, G1, G2, center,
               HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
               MASK_MODE: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
               TENSOR_BIAS: tl.constexpr, LOW_RANK: tl.constexpr, REL_POS: tl.constexpr,
               SIGMOID: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
               NB: tl.constexpr, NA_STATIC: tl.constexpr, GRID_ORDER: tl.constexpr):
    NW: tl.constexpr = BLOCK_N // 32
    TILE_BIAS: tl.constexpr = LOW_RANK or REL_POS
    for t in range(count):
        n = tl.load(idx_ptr + t)
        k_pos = n * BLOCK_N + offs_n
        k_rows = memory_rows(offs_n, n * BLOCK_N, NA, 1, NA_STATIC, GRID_ORDER).to(tl.int64)
        k_ptrs = k_base + k_rows[None, :] * s_kn + offs_d[:, None]
        v_ptrs = v_base + k_rows[:, None] * s_vn + offs_dv[None, :]
        if USE_TMA:
            k, v = load_row_tiles(k_desc, v_desc, n * BLOCK_N, copy_batch, hk, NA, 1, NA_STATIC,
                                  GRID_ORDER, BLOCK_N, D_PAD, DV_PAD)
            k = tl.trans(k)
        elif MASKED:
            k = tl.load(k_ptrs, mask=(k_pos[None, :] < S_K) & (offs_d[:, None] < HEAD_D), other=0.0)
            v = tl.load(v_ptrs, mask=(k_pos[:, None] < S_K) & (offs_dv[None, :] < HEAD_DV), other=0.0)
        else:
            if D_PAD != HEAD_D:
                k = tl.load(k_ptrs, mask=offs_d[:, None] < HEAD_D, other=0.0)
            else:
                k = tl.load(k_ptrs)
            if DV_PAD != HEAD_DV:
                v = tl.load(v_ptrs, mask=offs_dv[None, :] < HEAD_DV, other=0.0)
            else:
                v = tl.load(v_ptrs)
        qk = tl.dot(q, k, input_precision=PRECISION)
        bits_base = BITS
        if MASKED:
            if MASK_MODE == 2:
                bits_base = BITS + tl.load(bits_idx_ptr + t).to(tl.int64) * (BLOCK_M * NW)
            if MASK_MODE == 3:
                bits_base = TILE_BAND + tl.load(bits_idx_ptr + t).to(tl.int64) * (2 * NB)
        na_code = (k_pos,)
        if MASKED and MASK_MODE == 4:
            na_code = na_codes(offs_n[None, :], n * BLOCK_N, NA, 1, NA_STATIC)
        tile_bias = qk
        if LOW_RANK:
            w = load_factor_rows(w_base, k_pos, offs_r, s_wn, s_wr, S_K, RANK, MASKED)
            tile_bias = low_rank_tile(u, w, PRECISION)
        if REL_POS:
            in_bounds = (q_row[:, None] < S_Q) & (k_pos[None, :] < S_K)
            tile_bias = rel_pos_tile(table_base, fq[:, None], grid_flat(k_pos, G1, G2)[None, :],
                                     center, in_bounds)
        z2, _t = score_tile(qk, q_row[:, None], q_pos[:, None], k_pos[None, :], offs_m[:, None],
                            offs_n[None, :], S_Q, S_K, scale, qk_scale, softcap, slope, band_lo,
                            band_hi, bias_base, s_bias_m, s_bias_n, bits_base, tile_bias, na_win,
                            na_code, MASKED, MASK_MODE, SOFTCAP, ALIBI, TENSOR_BIAS, TILE_BIAS,
                            NW, NB, NA_STATIC)
        if SIGMOID:
            p = 1.0 / (1.0 + tl.exp2(-(z2 + sig_bias2)))
            acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        elif not (MASKED or SOFTCAP or ALIBI or TENSOR_BIAS or TILE_BIAS):
            # Unmasked plain logits are finite: no -inf guard, and the scale folds into one FMA.
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(qk * qk_scale - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        else:
            m_new = tl.maximum(m_i, tl.max(z2, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(z2 - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=RUN_TIME_INTS)
def _attn_fwd(Q, K, V, K_DESC, V_DESC, O_DESC, O, LSE,
              FULL_CNT, FULL_IDX, PART_CNT, PART_IDX, PART_BITS, BITS, TILE_BAND, NA,
              ORDER, REPS, ORDER_HEADS, SINKS, SLOPES, BIAS, U, W, TABLE,
              s_qb, s_qs, s_qh, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_ob, s_os, s_oh,
              s_bias_b, s_bias_h, s_bias_m, s_bias_n,
              s_ub, s_uh, s_um, s_ur, s_wb, s_wh, s_wn, s_wr, RANK,
              s_th, G1, G2, CENTER,
              H_Q, GROUP, S_Q, S_K, MAP_HEADS, N_Q_TILES, FULL_W, PART_W,
              scale, qk_scale, softcap, band_lo, band_hi, sig_bias2,
              HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr,
              DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              MASK_MODE: tl.constexpr, SOFTCAP: tl.constexpr, SINK: tl.constexpr,
              ALIBI: tl.constexpr, TENSOR_BIAS: tl.constexpr, LOW_RANK: tl.constexpr,
              R_PAD: tl.constexpr, REL_POS: tl.constexpr, SIGMOID: tl.constexpr,
              PRECISION: tl.constexpr, USE_TMA: tl.constexpr, TILE_BANDS: tl.constexpr,
              NA_STATIC: tl.constexpr, GRID_ORDER: tl.constexpr, SCHEDULED,
              MAY_SCHEDULE: tl.constexpr, O_TMA: tl.constexpr):
    m, b, h = program_ids(ORDER, REPS, ORDER_HEADS, H_Q, N_Q_TILES, SCHEDULED, MAY_SCHEDULE, True)
    b, first_row, groups = fold_group(b, NA, NA_STATIC)
    copy_batch = bulk_copy_batch(b, first_row, NA, NA_STATIC)
    bh = b * H_Q + h
    hk = h // GROUP
    hm = h % MAP_HEADS

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    q_row = m * BLOCK_M + offs_m
    q_pos = q_row + (S_K - S_Q)

    q_base = Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh + first_row * s_qs
    k_base = K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh + first_row * s_ks
    v_base = V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh + first_row * s_vs
    q_mem = memory_rows(offs_m, m * BLOCK_M, NA, 0, NA_STATIC, GRID_ORDER).to(tl.int64)
    q = tl.load(q_base + q_mem[:, None] * s_qs + offs_d[None, :],
                mask=(q_row[:, None] < S_Q) & (offs_d[None, :] < HEAD_D), other=0.0)

    slope = 0.0
    if ALIBI:
        slope = tl.load(SLOPES + h).to(tl.float32)
    bias_base = BIAS
    if TENSOR_BIAS:
        bias_base = BIAS + b.to(tl.int64) * s_bias_b + h.to(tl.int64) * s_bias_h
    offs_r = tl.arange(0, R_PAD)
    u = q
    w_base = W
    if LOW_RANK:
        u = load_factor_rows(U + b.to(tl.int64) * s_ub + h.to(tl.int64) * s_uh, q_row, offs_r,
                             s_um, s_ur, S_Q, RANK, True)
        w_base = W + b.to(tl.int64) * s_wb + h.to(tl.int64) * s_wh
    table_base = TABLE + h.to(tl.int64) * s_th
    fq = q_row
    if REL_POS:
        fq = grid_flat(q_row, G1, G2)
    # Neighborhood windows of the query rows, once per program (MASK_MODE 4).
    na_win = (q_row,)
    if MASK_MODE == 4:
        na_win = na_query_windows(offs_m[:, None], m * BLOCK_M, NA, NA_STATIC)

    acc = tl.zeros([BLOCK_M, DV_PAD], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)

    row = hm * N_Q_TILES + m
    # The partial tiles (masked), then the full ones.
    for list_no in tl.static_range(2):
        tiles, words, count = listed_tiles(PART_IDX, PART_BITS, PART_CNT, PART_W, FULL_IDX, FULL_CNT,
                                           FULL_W, row, list_no == 0)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, s_ks, s_vs, K_DESC, V_DESC,
                                   copy_batch, hk, tiles, words, count, BITS, TILE_BAND,
                                   NA, na_win,
                                   q_row, q_pos, offs_m, offs_n, offs_d, offs_dv, S_Q, S_K,
                                   scale, qk_scale, softcap, slope, band_lo, band_hi, sig_bias2,
                                   bias_base, s_bias_m, s_bias_n, u, w_base, s_wn, s_wr, offs_r, RANK,
                                   table_base, fq, G1, G2, CENTER,
                                   HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_M, BLOCK_N, list_no == 0,
                                   MASK_MODE, SOFTCAP, ALIBI, TENSOR_BIAS, LOW_RANK, REL_POS, SIGMOID,
                                   PRECISION, USE_TMA, TILE_BANDS, NA_STATIC, GRID_ORDER)

    if not SIGMOID:
        if SINK:
            sink2 = tl.load(SINKS + h).to(tl.float32) * 1.4426950408889634
            m_f = tl.maximum(m_i, sink2)
            corr = tl.exp2(m_i - m_f)
            l_i = l_i * corr + tl.exp2(sink2 - m_f)
            acc = acc * corr[:, None]
            m_i = m_f
        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        acc = acc / l_safe[:, None]
        lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
        tl.store(LSE + bh.to(tl.int64) * (S_Q * groups) + first_row + q_mem, lse, mask=q_row < S_Q)
    o_base = O + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh + first_row * s_os
    store_rows(O_DESC, o_base + q_mem[:, None] * s_os + offs_dv[None, :],
               (q_row[:, None] < S_Q) & (offs_dv[None, :] < HEAD_DV), acc.to(O.dtype.element_ty),
               m * BLOCK_M, copy_batch, h, NA, 0, NA_STATIC, GRID_ORDER, DV_PAD, O_TMA)


LOG2E = 1.4426950408889634


# Set False to force pointer loads (kernel development, comparisons).
TMA_ENABLED = True
# Grid-order calls write o by a bulk store wherever k and v are read by bulk copies and o has a
# view for it (``row_operand``); False: by pointers (comparisons). (Reading q by a bulk copy was
# slower: the copied tile reached the QK^T product through registers, 180-190 of them, so two
# programs per SM instead of three; results/tuning/2026-11-30-h200-natten-config-sweep-fwd-qo-bulk*.json.)
O_BULK_ENABLED = True


@functools.lru_cache(maxsize=None)
def _major_capability(index: Optional[int]) -> int:
    return torch.cuda.get_device_capability(index)[0]


def tma_ok(k: torch.Tensor, v: torch.Tensor, block_n: int) -> bool:
    """Whether k and v can be read through tensor descriptors (Hopper bulk copies): a CUDA device
    of compute capability >= 9, 16-byte aligned bases and strides."""
    if not TMA_ENABLED or INTERPRETED or k.device.type != "cuda":
        return False
    if _major_capability(k.device.index) < 9:
        return False
    return bulk_aligned(k) and bulk_aligned(v)


def bulk_aligned(t: torch.Tensor) -> bool:
    """Whether bulk copies can address ``t``: a 16-byte aligned base and leading strides."""
    size = t.element_size()
    return t.data_ptr() % 16 == 0 and all((s * size) % 16 == 0 for s in t.stride()[:-1])


def grid_box(plan, block: int) -> Optional[tuple[int, int, int]]:
    """Extents ``(b0, b1, b2)`` of the grid box that each kernel tile of ``block`` consecutive
    positions covers in the tiled order of a plan with neighborhood values (``rows_box`` of its
    tiles ``(t0, t1, t2)``); None when a kernel tile is not one box."""
    return rows_box(plan.na_values[3:6], block) if plan.na_values else None


# Block shapes that passed Triton's check (powers of two, element count in range).
_VALID_BLOCKS: set = set()


def descriptor(base: torch.Tensor, shape: list, strides: list, block_shape: list) -> TensorDescriptor:
    """``TensorDescriptor(base, shape, strides, block_shape)`` without its constructor's per-call
    asserts, which cost several microseconds of host time per launch: the callers have checked
    alignment (``tma_ok``), the last dim is contiguous, the rank is at most 5, and each block shape
    is checked once here (by building one descriptor the usual way)."""
    key = tuple(block_shape)
    if key not in _VALID_BLOCKS:
        TensorDescriptor(base, shape, strides, block_shape)  # Triton's checks, once per block shape
        _VALID_BLOCKS.add(key)
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(base=base, shape=shape, strides=strides, block_shape=block_shape, padding="zero")
    return desc


def grid_view(t: torch.Tensor, grid, extent=None) -> Optional[tuple[list, list]]:
    """``(shape, strides)`` of ``t [B, S, H, D]`` in grid order viewed as ``[B * g0, g1, g2, H, D]``,
    or None when its strides allow no such view (batch and sequence dims not mergeable) or ``S``
    is not the grid's size. With ``extent`` (``(e0, e1, e2)``, a ``PaddedNeighborhood``'s, the
    grid's corner at the origin) ``t`` may instead hold just the extent's tokens (``S =
    e0 e1 e2``): the view is then ``[B * e0, e1, e2, H, D]``, addressed at the grid's
    coordinates, so bulk copies read zeros and write nothing past the extent. Batch entries of
    that view start where the grid's do only when ``e0 == g0`` or ``B == 1`` (None otherwise).
    The view's strides are multiples of ``t``'s, so ``bulk_aligned(t)`` covers their alignment."""
    batch, seq, heads, dim = t.shape
    if seq != math.prod(grid):
        if extent is None or seq != math.prod(extent) or (batch > 1 and extent[0] != grid[0]):
            return None
        grid = extent
    g0, g1, g2 = grid
    s_b, s_s, s_h, s_d = t.stride()
    if batch > 1 and s_b != seq * s_s:
        return None
    return [batch * g0, g1, g2, heads, dim], [s_s * g1 * g2, s_s * g2, s_s, s_h, s_d]


def batch_axis_view(t: torch.Tensor, extent) -> Optional[tuple[list, list]]:
    """``(shape, strides)`` of ``t [B, S, H, D]`` holding only a ``PaddedNeighborhood``'s extent
    ``(e0, e1, e2)`` viewed as ``[B, e0, e1, e2, H * D]``: batch its own axis, so batch entries
    line up with the padded grid's when axis 0 is padded too (``grid_view`` cannot); head ``h``'s
    box ``[1, b0, b1, b2, D]`` starts at column ``h * D``. None when ``S`` is not the extent's size
    or heads are not contiguous with D."""
    batch, seq, heads, dim = t.shape
    s_b, s_s, s_h, s_d = t.stride()
    e0, e1, e2 = extent
    if seq != e0 * e1 * e2 or s_d != 1 or (heads > 1 and s_h != dim):
        return None
    return [batch, e0, e1, e2, heads * dim], [s_b, s_s * e1 * e2, s_s * e2, s_s, 1]


def grid_extent(plan) -> Optional[tuple[int, int, int]]:
    """The extent ``(e0, e1, e2)`` of a plan over a ``PaddedNeighborhood`` (``grid_view``), None
    when the extent is the whole grid (or the plan has no neighborhood values)."""
    if not plan.na_values:
        return None
    extent = tuple(plan.na_values[_EXTENT_FIRST:_EXTENT_FIRST + 3])
    return None if extent == tuple(plan.na_values[0:3]) else extent


_EXTENT_FIRST = 3 * NA_FIELD_NAMES.index("extent")


def _grid_descriptor(t: torch.Tensor, grid, box, width: int) -> Optional[TensorDescriptor]:
    """``t`` as ``grid_view`` sees it, with box ``[*box, 1, width]``; None without that view."""
    view = grid_view(t, grid)
    return None if view is None else descriptor(t, *view, [*box, 1, width])


def row_descriptor(t: torch.Tensor, plan, block: int, grid_order: bool,
                   fold=None) -> Optional[TensorDescriptor]:
    """The tensor descriptor of ``t`` (``[B, S, H, D]``, alignment checked by ``tma_ok``) for bulk
    copies of ``block`` rows, or None: row blocks in the plan's token order, or in grid order
    boxes of the grid (``grid_box``), under a dilation ``fold`` boxes of one group
    (``fold_descriptor``)."""
    width = padded_width(t.shape[3])
    if not grid_order:
        return descriptor(t, list(t.shape), list(t.stride()), [1, block, 1, width])
    box = grid_box(plan, block)
    if box is None:
        return None
    if fold is None:
        return _grid_descriptor(t, plan.na_values[0:3], box, width)
    return fold_descriptor(t, fold, box, width)


def row_descriptors(a: torch.Tensor, b: torch.Tensor, plan, block: int, grid_order: bool, fold=None):
    """``row_descriptor`` of ``a`` and ``b`` (Hopper), or ``(None, None)`` unless both have one."""
    if not tma_ok(a, b, block):
        return None, None
    descs = [row_descriptor(t, plan, block, grid_order, fold) for t in (a, b)]
    return (None, None) if None in descs else tuple(descs)


def fold_view(t: torch.Tensor, fold) -> Optional[tuple[list, list]]:
    """``(shape, strides)`` of ``t [B, S, H, D]`` (the whole grid in row-major order) viewed as
    ``[B * G0 * G1 / d1, d1, G2 / d2, d2, H * D]`` under the dilation ``fold``: one dilation
    group's grid box ``(1, b1, b2)`` of its sub-grid is the box ``[b1, 1, b2, 1, D]`` at ``[(b
    * G0 + c0) * G1 / d1 + c1, r1, c2, r2, h * D]``. None when there is no such view: axis 0
    dilated, heads not contiguous with D, or batch and sequence dims not mergeable."""
    g0, g1, g2 = fold.grid
    d0, d1, d2 = fold.dilation
    batch, seq, heads, dim = t.shape
    s_b, s_s, s_h, s_d = t.stride()
    if d0 != 1 or s_d != 1 or (heads > 1 and s_h != dim) or (batch > 1 and s_b != seq * s_s):
        return None
    return ([batch * g0 * (g1 // d1), d1, g2 // d2, d2, heads * dim],
            [d1 * g2 * s_s, g2 * s_s, d2 * s_s, s_s, 1])


def fold_descriptor(t: torch.Tensor, fold, box, width: int) -> Optional[TensorDescriptor]:
    """``t`` as ``fold_view`` sees it, with box ``[b1, 1, b2, 1, D]`` (``row_addressing.
    load_row_tiles``). None when there is no such view, or the box is deeper than one along axis
    0 or the head dim is padded (the box would read the next head)."""
    view = fold_view(t, fold)
    if view is None or box[0] != 1 or width != t.shape[3]:
        return None
    return descriptor(t, *view, [box[1], 1, box[2], 1, width])


def row_operands(a: torch.Tensor, b: torch.Tensor, plan, block: int, grid_order: bool, fold=None):
    """``(a', b', use_tma)``: the kernel operands for ``a``, ``b`` (``row_descriptors``): their
    tensor descriptors and True, or ``a``, ``b`` themselves and False."""
    descs = row_descriptors(a, b, plan, block, grid_order, fold)
    return (*descs, True) if descs[0] is not None else (a, b, False)


def row_operand(t: torch.Tensor, plan, block: int, grid_order: bool, fold=None):
    """``(t', use_tma)``: ``row_operands`` of one tensor."""
    desc = row_descriptor(t, plan, block, grid_order, fold) if tma_ok(t, t, block) else None
    return (t, False) if desc is None else (desc, True)


def broadcast_strides(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of a 4-D tensor with 0 for its size-1 (broadcast) dims."""
    return tuple(0 if size == 1 else stride for size, stride in zip(t.shape, t.stride()))


def rank_pad(rank: int) -> int:
    """Rank columns a low-rank factor tile holds in-kernel: a power of two, at least 16 (dot)."""
    return padded_width(rank)


def low_rank_args(low_rank, dummy: torch.Tensor) -> tuple:
    """``(U, W, *u_strides, *w_strides, RANK)`` kernel arguments of a ``(u, w)`` pair or None."""
    if low_rank is None:
        return (dummy, dummy) + (0,) * 8 + (1,)
    u, w = low_rank
    return (u, w, *broadcast_strides(u), *broadcast_strides(w), u.shape[-1])


def rel_pos_args(rel_pos, dummy: torch.Tensor) -> tuple:
    """``(TABLE, s_th, G1, G2, CENTER)`` kernel arguments of a ``(table, grid)`` pair or None: the
    table flattened per head (``[H|1, prod(2g - 1)]``, contiguous), its head stride (0 when
    shared), the last two grid extents (1-D and 2-D grids padded with leading 1s) and the flat
    index of the last token (the table's center offset)."""
    if rel_pos is None:
        return (dummy, 0, 1, 1, 0)
    table, grid = rel_pos
    g0, g1, g2 = (1,) * (3 - len(grid)) + tuple(grid)
    flat = table.reshape(table.shape[0], -1)
    center = ((g0 - 1) * (2 * g1 - 1) + g1 - 1) * (2 * g2 - 1) + g2 - 1
    return (flat, 0 if table.shape[0] == 1 else flat.stride(0), g1, g2, center)


_FWD = Launcher(_attn_fwd)


def forward(q, k, v, plan, *, scale: float, config, softcap=None, sinks=None, slopes=None,
            bias=None, low_rank=None, rel_pos=None, sigmoid_bias=None, precision: str = "ieee",
            grid_order: bool = False, fold=None, grid_rows=None):
    """Launch the forward kernel.

    Args:
        q ``[B, S_q, H_q, D]``, k ``[B, S_k, H_kv, D]``, v ``[B, S_k, H_kv, D_v]`` (head dim
        contiguous); plan: ``KernelPlan`` with ``block_m/block_n == config.block_m/block_n``;
        config: ``KernelConfig`` (num_warps, num_stages); softcap: float or None; sinks: ``[H_q]``;
        slopes: ALiBi ``[H_q]``; bias: 4-D tensor broadcastable to ``[B, H_q, S_q, S_k]``;
        low_rank: ``(u [B|1, H_q|1, S_q, R], w [B|1, H_q|1, S_k, R])`` (one dtype, R <= 64), the
        bias ``u @ w^T`` computed per tile; rel_pos: ``(table [H_q|1, 2g0-1, ...], grid)`` with
        ``S_q == S_k == prod(grid)`` and at most 3 grid dims (a contiguous table), the bias
        gathered per tile; sigmoid_bias: float for sigmoid scores, None for softmax;
        grid_order: q, k, v, o and lse rows are in the grid's row-major order while the plan's
        positions follow its tiled token order (an N-D neighborhood plan with its parameters:
        ``plan.na_params``); the kernel addresses memory through that map.
        fold: a ``masks.DilationFold`` (with ``grid_order``): q, k, v hold the whole grid, the
        plan is one dilation group's, and the kernel runs every group (k and v by bulk copies
        where ``fold_descriptor`` has a view, else pointer loads).
        grid_rows: a ``masks.GridRoll`` or ``masks.GridRows`` (with ``grid_order``): the tensors'
        rows of the plan's positions, addressed by the roll or the row map; read and written by
        pointers.
    Returns:
        o ``[B, S_q, H_q, D_v]`` (q's dtype), lse float32 ``[B, H_q, S_q]`` (None for sigmoid).
    """
    batch, rows, heads, dim = q.shape
    q_len, k_len, kv_heads, dim_v = rows, k.shape[1], k.shape[2], v.shape[3]
    sigmoid = sigmoid_bias is not None
    o = torch.empty(batch, rows, heads, dim_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, heads, rows, dtype=torch.float32, device=q.device)
    na_params, na_static, groups = plan.na_params, plan.na_static, 1
    if fold is not None:
        q_len, k_len, groups = plan.q_len, plan.k_len, fold.groups
        na_params, na_static = fold.params(plan)
    if grid_rows is not None:
        na_params, na_static = grid_rows.params(plan)
    dummy = lse
    bias_strides = broadcast_strides(bias) if bias is not None else (0, 0, 0, 0)
    factors = low_rank_args(low_rank, dummy)
    table_args = rel_pos_args(rel_pos, dummy)
    rows = plan.rows
    launch = row_launch(plan, batch * groups, heads)
    k_desc, v_desc, use_tma = (k, v, False) if grid_rows is not None else row_operands(
        k, v, plan, plan.block_n, grid_order, fold)
    o_desc, o_tma = o, False
    if use_tma and grid_order and O_BULK_ENABLED:
        o_desc, o_tma = row_operand(o, plan, plan.block_m, grid_order, fold)
    _FWD[launch.grid](
        q, k, v, k_desc, v_desc, o_desc, o, lse,
        rows.full_count, rows.full_index, rows.part_count, rows.part_index, rows.part_bits, plan.bits,
        plan.tile_band, na_params, launch.order, launch.reps, launch.heads,
        sinks if sinks is not None else dummy,
        slopes if slopes is not None else dummy, bias if bias is not None else dummy,
        *factors[:2], table_args[0],
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        *bias_strides, *factors[2:], *table_args[1:],
        heads, heads // kv_heads, q_len, k_len, plan.map_heads, plan.n_q_tiles,
        rows.full_width, rows.part_width,
        scale, scale * LOG2E, softcap if softcap is not None else 1.0, plan.band_lo, plan.band_hi,
        (sigmoid_bias if sigmoid else 0.0) * LOG2E,
        HEAD_D=dim, HEAD_DV=dim_v, D_PAD=padded_width(dim),
        DV_PAD=padded_width(dim_v), BLOCK_M=plan.block_m, BLOCK_N=plan.block_n,
        MASK_MODE=plan.mask_mode, SOFTCAP=softcap is not None, SINK=sinks is not None,
        ALIBI=slopes is not None, TENSOR_BIAS=bias is not None, LOW_RANK=low_rank is not None,
        R_PAD=rank_pad(factors[-1]), REL_POS=rel_pos is not None, SIGMOID=sigmoid,
        PRECISION=precision, USE_TMA=use_tma, TILE_BANDS=plan.bands_per_tile,
        NA_STATIC=na_static, GRID_ORDER=grid_order, SCHEDULED=launch.scheduled,
        MAY_SCHEDULE=launch.may_schedule, O_TMA=o_tma, **config.launch_options(),
    )
    return o, (None if sigmoid else lse)
