"""Block-sparse flash-attention backward (Triton), FlashAttention-2 style, deterministic.

Three steps, no atomics:
  * ``delta = rowsum(o * do)`` (float32 ``[B, H_q, S_q]``): where dk/dv overlaps dq on a side
    CUDA stream (``streams``; backwards large enough for it, ``overlap_pays``) by the ``row_dot``
    launch before both; on one stream by the dq kernel for its own rows (``DELTA_IN_DQ``), which
    then runs before dk/dv;
  * dk/dv: one program per (key tile, batch x kv head); it loops over the query heads of its GQA
    group and, for each, over the query tiles that list this key tile (the plan's transposed
    lists), recomputing ``p = exp(z - lse)``; with low-rank factors it also writes
    ``dw = dS^T @ u`` for each query head of the group;
  * dq: one program per (query tile, batch x query head) over the listed key tiles; it also writes,
    when asked, the tensor-bias gradient tile ``dz``, the ALiBi slope gradient partial sums,
    ``du = dS @ w`` and the relative-position table gradient summed over its query tile (one
    buffer per program). Sums over broadcast dims, tiles and batches happen in torch.
Masking and score variants are the forward's (``scoring.score_tile``). In grid order, dq, dk and
dv leave by bulk stores where their tiles are boxes (``DQ_BULK_ENABLED``, ``DKDV_BULK_ENABLED``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from triton.runtime.errors import OutOfResources

from . import backward_route, streams
from .flash_fwd import (LOG2E, broadcast_strides, grid_extent, low_rank_args, rank_pad, rel_pos_args,
                        row_operand, row_operands)
from .host_math import cdiv, padded_width
from .launcher import Launcher
from .masks import MASK_NEIGHBORHOOD
from .na_mask import na_codes, na_key_windows, na_query_windows
from .program_ids import RUN_TIME_INTS, listed_tiles, program_ids
from .row_addressing import bulk_copy_batch, fold_group, load_row_tiles, memory_rows, store_rows
from .row_dot import row_dot
from .schedule import col_launch, row_launch
from .scoring import (INTERPRETED, grid_flat, interpreter_range, load_factor_rows, low_rank_tile,
                      rel_pos_table_grad, rel_pos_tile, score_tile)

if INTERPRETED:
    range = interpreter_range  # noqa: A001


@triton.jit
def _dkdv_tiles(dk, dv, dw, k, v, q_base, do_base, s_qs, s_dos, q_desc, do_desc, copy_batch, h,
                lse_base, delta_base, idx_ptr, bits_idx_ptr, count, BITS, TILE_BAND, NA, na_win,
                k_pos, offs_n, offs_m,
                offs_d, offs_dv, S_Q, S_K,
                scale, qk_scale, softcap, slope, band_lo, band_hi, sig_bias2,
                bias_base, s_bias_m, s_bias_n, w, u_base, s_um, s_ur, offs_r, RANK,
                table_base, fk, G1, G2, center,
                HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, MASKED: tl.constexpr, MASK_MODE: tl.constexpr,
                SOFTCAP: tl.constexpr, ALIBI: tl.constexpr, TENSOR_BIAS: tl.constexpr,
                LOW_RANK: tl.constexpr, LOW_RANK_GRAD: tl.constexpr, REL_POS: tl.constexpr,
                SIGMOID: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
                D_PAD: tl.constexpr, DV_PAD: tl.constexpr, NB: tl.constexpr,
                NA_STATIC: tl.constexpr, GRID_ORDER: tl.constexpr):
    NW: tl.constexpr = BLOCK_N // 32
    TILE_BIAS: tl.constexpr = LOW_RANK or REL_POS
    for t in range(count):
        m = tl.load(idx_ptr + t)
        q_row = m * BLOCK_M + offs_m
        q_pos = q_row + (S_K - S_Q)
        q_mem = memory_rows(offs_m, m * BLOCK_M, NA, 0, NA_STATIC, GRID_ORDER)
        q_ptrs = q_base + q_mem.to(tl.int64)[:, None] * s_qs + offs_d[None, :]
        do_ptrs = do_base + q_mem.to(tl.int64)[:, None] * s_dos + offs_dv[None, :]
        if USE_TMA:
            q, do = load_row_tiles(q_desc, do_desc, m * BLOCK_M, copy_batch, h, NA, 0, NA_STATIC,
                                   GRID_ORDER, BLOCK_M, D_PAD, DV_PAD)
        if MASKED:
            row_ok = q_row < S_Q
            if not USE_TMA:
                q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
                do = tl.load(do_ptrs, mask=row_ok[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
            if not SIGMOID:
                if MASK_MODE == 4:
                    # Rows past S_Q read the last row's statistics and are masked out below (a
                    # pipelined masked load would keep a row mask per stage live in registers).
                    last = memory_rows(tl.minimum(offs_m, S_Q - 1 - m * BLOCK_M), m * BLOCK_M, NA, 0,
                                       NA_STATIC, GRID_ORDER)
                    lse = tl.load(lse_base + last)
                    delta = tl.load(delta_base + last)
                else:
                    lse = tl.load(lse_base + q_mem, mask=row_ok, other=float("inf"))
                    delta = tl.load(delta_base + q_mem, mask=row_ok, other=0.0)
        else:
            if not USE_TMA:
                q = tl.load(q_ptrs, mask=offs_d[None, :] < HEAD_D, other=0.0)
                do = tl.load(do_ptrs, mask=offs_dv[None, :] < HEAD_DV, other=0.0)
            if not SIGMOID:
                lse = tl.load(lse_base + q_mem)
                delta = tl.load(delta_base + q_mem)
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)                    # [BN, BM]
        bits_base = BITS
        if MASKED:
            if MASK_MODE == 2:
                bits_base = BITS + tl.load(bits_idx_ptr + t).to(tl.int64) * (BLOCK_M * NW)
            if MASK_MODE == 3:
                bits_base = TILE_BAND + tl.load(bits_idx_ptr + t).to(tl.int64) * (2 * NB)
        na_code = (q_row,)
        if MASKED and MASK_MODE == 4:
            na_code = na_codes(offs_m[None, :], m * BLOCK_M, NA, 0, NA_STATIC)
            # Query rows past S_Q get a code below every window.
            na_code = (na_code[0], na_code[1],
                       tl.where(offs_m[None, :] < S_Q - m * BLOCK_M, na_code[2], -1))
        tile_bias_t = qk_t
        u = q
        if LOW_RANK:
            u = load_factor_rows(u_base, q_row, offs_r, s_um, s_ur, S_Q, RANK, MASKED)
            tile_bias_t = low_rank_tile(w, u, PRECISION)                             # [BN, BM]
        if REL_POS:
            in_bounds = (q_row[None, :] < S_Q) & (k_pos[:, None] < S_K)
            tile_bias_t = rel_pos_tile(table_base, grid_flat(q_row, G1, G2)[None, :], fk[:, None],
                                       center, in_bounds)
        z2, th = score_tile(qk_t, q_row[None, :], q_pos[None, :], k_pos[:, None], offs_m[None, :],
                            offs_n[:, None], S_Q, S_K, scale, qk_scale, softcap, slope, band_lo,
                            band_hi, bias_base, s_bias_m, s_bias_n, bits_base, tile_bias_t,
                            na_win, na_code, MASKED, MASK_MODE, SOFTCAP, ALIBI, TENSOR_BIAS,
                            TILE_BIAS, NW, NB, NA_STATIC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)                   # [BN, BM]
        if SIGMOID:
            p_t = 1.0 / (1.0 + tl.exp2(-(z2 + sig_bias2)))
            ds_t = p_t * (1.0 - p_t) * dp_t
        else:
            # Fully masked rows have lse = -inf: read as +inf so that p = 0 there.
            lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
            if MASKED or SOFTCAP or ALIBI or TENSOR_BIAS or TILE_BIAS:
                p_t = tl.exp2(z2 - lse2[None, :])
            else:
                p_t = tl.exp2(qk_t * qk_scale - lse2[None, :])
            ds_t = p_t * (dp_t - delta[None, :])
        if LOW_RANK_GRAD:
            dw += tl.dot(ds_t.to(u.dtype), u, input_precision=PRECISION)
        if SOFTCAP:
            ds_t = ds_t * (1.0 - th * th)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv, dw


@triton.jit(do_not_specialize=RUN_TIME_INTS)
def _attn_bwd_dkdv(Q, K, V, DO, Q_DESC, DO_DESC, LSE, DELTA, DK, DV, DK_DESC, DV_DESC, DW,
                   FULL_CNT, FULL_IDX, PART_CNT, PART_IDX, PART_BITS, BITS, TILE_BAND, NA,
                   ORDER, REPS, ORDER_HEADS, SLOPES, BIAS, U, W, TABLE,
                   s_qb, s_qs, s_qh, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_dob, s_dos, s_doh,
                   s_dkb, s_dks, s_dkh, s_dvb, s_dvs, s_dvh,
                   s_bias_b, s_bias_h, s_bias_m, s_bias_n,
                   s_ub, s_uh, s_um, s_ur, s_wb, s_wh, s_wn, s_wr, RANK,
                   s_th, G1, G2, CENTER,
                   H_Q, H_KV, GROUP, S_Q, S_K, MAP_HEADS, N_K_TILES, FULL_W, PART_W,
                   scale, qk_scale, softcap, band_lo, band_hi, sig_bias2,
                   HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr,
                   DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   MASK_MODE: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                   TENSOR_BIAS: tl.constexpr, LOW_RANK: tl.constexpr, LOW_RANK_GRAD: tl.constexpr,
                   R_PAD: tl.constexpr, REL_POS: tl.constexpr, SIGMOID: tl.constexpr,
                   PRECISION: tl.constexpr, USE_TMA: tl.constexpr, TILE_BANDS: tl.constexpr,
                   NA_STATIC: tl.constexpr, GRID_ORDER: tl.constexpr, SCHEDULED,
                   MAY_SCHEDULE: tl.constexpr, DKDV_TMA: tl.constexpr):
    n, b, hk = program_ids(ORDER, REPS, ORDER_HEADS, H_KV, N_K_TILES, SCHEDULED, MAY_SCHEDULE, False)
    b, first_row, groups = fold_group(b, NA, NA_STATIC)
    copy_batch = bulk_copy_batch(b, first_row, NA, NA_STATIC)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    k_pos = n * BLOCK_N + offs_n
    k_ok = k_pos < S_K
    k_mem = memory_rows(offs_n, n * BLOCK_N, NA, 1, NA_STATIC, GRID_ORDER).to(tl.int64)

    k = tl.load(K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh + first_row * s_ks
                + k_mem[:, None] * s_ks + offs_d[None, :],
                mask=k_ok[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    v = tl.load(V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh + first_row * s_vs
                + k_mem[:, None] * s_vs + offs_dv[None, :],
                mask=k_ok[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, DV_PAD], dtype=tl.float32)
    offs_r = tl.arange(0, R_PAD)
    fk = k_pos
    if REL_POS:
        fk = grid_flat(k_pos, G1, G2)
    # Neighborhood windows of the keys (the queries that see them), once per program.
    na_win = (k_pos,)
    if MASK_MODE == 4:
        na_win = na_key_windows(offs_n[:, None], n * BLOCK_N, NA, NA_STATIC)

    for g in range(GROUP):
        h = hk * GROUP + g
        hm = h % MAP_HEADS
        row = hm * N_K_TILES + n
        q_base = Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh + first_row * s_qs
        do_base = DO + b.to(tl.int64) * s_dob + h.to(tl.int64) * s_doh + first_row * s_dos
        lse_base = LSE + (b * H_Q + h).to(tl.int64) * (S_Q * groups) + first_row
        delta_base = DELTA + (b * H_Q + h).to(tl.int64) * (S_Q * groups) + first_row
        slope = 0.0
        if ALIBI:
            slope = tl.load(SLOPES + h).to(tl.float32)
        bias_base = BIAS
        if TENSOR_BIAS:
            bias_base = BIAS + b.to(tl.int64) * s_bias_b + h.to(tl.int64) * s_bias_h
        # Low-rank bias: this head's w rows of the key tile, and dw of (b, h) for this key tile
        # (each query head writes its own slice; broadcast dims are summed in torch).
        w = k
        u_base = U
        dw = tl.zeros([BLOCK_N, R_PAD], dtype=tl.float32)
        if LOW_RANK:
            w = load_factor_rows(W + b.to(tl.int64) * s_wb + h.to(tl.int64) * s_wh, k_pos, offs_r,
                                 s_wn, s_wr, S_K, RANK, True)
            u_base = U + b.to(tl.int64) * s_ub + h.to(tl.int64) * s_uh
        table_base = TABLE + h.to(tl.int64) * s_th
        for list_no in tl.static_range(2):
            tiles, words, count = listed_tiles(PART_IDX, PART_BITS, PART_CNT, PART_W, FULL_IDX,
                                               FULL_CNT, FULL_W, row, list_no == 0)
            dk, dv, dw = _dkdv_tiles(dk, dv, dw, k, v, q_base, do_base, s_qs, s_dos, Q_DESC, DO_DESC,
                                     copy_batch, h, lse_base, delta_base, tiles, words, count, BITS,
                                     TILE_BAND, NA, na_win, k_pos, offs_n, offs_m, offs_d, offs_dv,
                                     S_Q, S_K, scale, qk_scale, softcap, slope, band_lo, band_hi,
                                     sig_bias2, bias_base, s_bias_m, s_bias_n, w, u_base, s_um, s_ur,
                                     offs_r, RANK, table_base, fk, G1, G2, CENTER, HEAD_D, HEAD_DV,
                                     BLOCK_M, BLOCK_N, list_no == 0, MASK_MODE, SOFTCAP, ALIBI,
                                     TENSOR_BIAS, LOW_RANK, LOW_RANK_GRAD, REL_POS, SIGMOID,
                                     PRECISION, USE_TMA, D_PAD, DV_PAD, TILE_BANDS, NA_STATIC,
                                     GRID_ORDER)
        if LOW_RANK_GRAD:
            tl.store(DW + (b * H_Q + h).to(tl.int64) * S_K * R_PAD
                     + k_pos.to(tl.int64)[:, None] * R_PAD + offs_r[None, :], dw,
                     mask=k_ok[:, None])

    dk = dk * scale
    store_rows(DK_DESC, DK + b.to(tl.int64) * s_dkb + hk.to(tl.int64) * s_dkh + first_row * s_dks
               + k_mem[:, None] * s_dks + offs_d[None, :], k_ok[:, None] & (offs_d[None, :] < HEAD_D),
               dk.to(DK.dtype.element_ty), n * BLOCK_N, copy_batch, hk, NA, 1, NA_STATIC,
               GRID_ORDER, D_PAD, DKDV_TMA)
    store_rows(DV_DESC, DV + b.to(tl.int64) * s_dvb + hk.to(tl.int64) * s_dvh + first_row * s_dvs
               + k_mem[:, None] * s_dvs + offs_dv[None, :], k_ok[:, None] & (offs_dv[None, :] < HEAD_DV),
               dv.to(DV.dtype.element_ty), n * BLOCK_N, copy_batch, hk, NA, 1, NA_STATIC,
               GRID_ORDER, DV_PAD, DKDV_TMA)


@triton.jit
def _dq_tiles(dq, dslope, du, q, do, lse2, delta, k_base, v_base, s_kn, s_vn, k_desc, v_desc,
              copy_batch, hk,
              idx_ptr, bits_idx_ptr,
              count, BITS, TILE_BAND, NA, na_win, q_row, q_pos, offs_m, offs_n, offs_d, offs_dv,
              S_Q, S_K,
              scale, qk_scale, softcap, slope, band_lo, band_hi, sig_bias2,
              bias_base, s_bias_m, s_bias_n, dbias_base, S_K_DB,
              u, w_base, s_wn, s_wr, offs_r, RANK,
              table_base, dtab_base, fq, G0, G1, G2, center,
              HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr,
              DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, MASK_MODE: tl.constexpr, SOFTCAP: tl.constexpr,
              ALIBI: tl.constexpr, TENSOR_BIAS: tl.constexpr, LOW_RANK: tl.constexpr,
              LOW_RANK_GRAD: tl.constexpr, REL_POS: tl.constexpr, REL_POS_GRAD: tl.constexpr,
              SIGMOID: tl.constexpr, BIAS_GRAD: tl.constexpr, SLOPE_GRAD: tl.constexpr,
              PRECISION: tl.constexpr, USE_TMA: tl.constexpr, NB: tl.constexpr,
              NA_STATIC: tl.constexpr, GRID_ORDER: tl.constexpr):
    NW: tl.constexpr = BLOCK_N // 32
    TILE_BIAS: tl.constexpr = LOW_RANK or REL_POS
    for t in range(count):
        n = tl.load(idx_ptr + t)
        k_pos = n * BLOCK_N + offs_n
        k_rows = memory_rows(offs_n, n * BLOCK_N, NA, 1, NA_STATIC, GRID_ORDER).to(tl.int64)
        k_ptrs = k_base + k_rows[:, None] * s_kn + offs_d[None, :]
        v_ptrs = v_base + k_rows[:, None] * s_vn + offs_dv[None, :]
        if USE_TMA:
            k, v = load_row_tiles(k_desc, v_desc, n * BLOCK_N, copy_batch, hk, NA, 1, NA_STATIC,
                                  GRID_ORDER, BLOCK_N, D_PAD, DV_PAD)
        elif MASKED:
            k = tl.load(k_ptrs, mask=(k_pos[:, None] < S_K) & (offs_d[None, :] < HEAD_D), other=0.0)
            v = tl.load(v_ptrs, mask=(k_pos[:, None] < S_K) & (offs_dv[None, :] < HEAD_DV), other=0.0)
        else:
            k = tl.load(k_ptrs, mask=offs_d[None, :] < HEAD_D, other=0.0)
            v = tl.load(v_ptrs, mask=offs_dv[None, :] < HEAD_DV, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
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
        w = k
        if LOW_RANK:
            w = load_factor_rows(w_base, k_pos, offs_r, s_wn, s_wr, S_K, RANK, MASKED)
            tile_bias = low_rank_tile(u, w, PRECISION)
        if REL_POS:
            in_bounds = (q_row[:, None] < S_Q) & (k_pos[None, :] < S_K)
            tile_bias = rel_pos_tile(table_base, fq[:, None], grid_flat(k_pos, G1, G2)[None, :],
                                     center, in_bounds)
        z2, th = score_tile(qk, q_row[:, None], q_pos[:, None], k_pos[None, :], offs_m[:, None],
                            offs_n[None, :], S_Q, S_K, scale, qk_scale, softcap, slope, band_lo,
                            band_hi, bias_base, s_bias_m, s_bias_n, bits_base, tile_bias, na_win,
                            na_code, MASKED, MASK_MODE, SOFTCAP, ALIBI, TENSOR_BIAS, TILE_BIAS,
                            NW, NB, NA_STATIC)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if SIGMOID:
            p = 1.0 / (1.0 + tl.exp2(-(z2 + sig_bias2)))
            ds = p * (1.0 - p) * dp
        else:
            if MASKED or SOFTCAP or ALIBI or TENSOR_BIAS or TILE_BIAS:
                p = tl.exp2(z2 - lse2[:, None])
            else:
                p = tl.exp2(qk * qk_scale - lse2[:, None])
            ds = p * (dp - delta[:, None])
        if BIAS_GRAD:
            db_ptrs = dbias_base + q_row.to(tl.int64)[:, None] * S_K_DB + k_pos[None, :]
            if MASKED:
                tl.store(db_ptrs, ds, mask=(q_row[:, None] < S_Q) & (k_pos[None, :] < S_K))
            else:
                tl.store(db_ptrs, ds)
        if SLOPE_GRAD:
            dist = tl.abs(q_pos[:, None] - k_pos[None, :]).to(tl.float32)
            dslope += tl.sum(tl.sum(ds * dist, 1), 0)
        if LOW_RANK_GRAD:
            du += tl.dot(ds.to(w.dtype), w, input_precision=PRECISION)
        if REL_POS_GRAD:
            q_first = tl.min(q_row, 0)
            rel_pos_table_grad(dtab_base, ds, fq, q_first, tl.minimum(q_first + BLOCK_M, S_Q) - 1,
                               n * BLOCK_N, tl.minimum(n * BLOCK_N + BLOCK_N, S_K) - 1, n * BLOCK_N,
                               G0, G1, G2, center, S_K, BLOCK_N, BLOCK_N)
        if SOFTCAP:
            ds = ds * (1.0 - th * th)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq, dslope, du


@triton.jit(do_not_specialize=RUN_TIME_INTS)
def _attn_bwd_dq(Q, K, V, DO, O, K_DESC, V_DESC, LSE, DELTA, DQ, DQ_DESC, DBIAS, DSLOPE, DU, DTABLE,
                 FULL_CNT, FULL_IDX, PART_CNT, PART_IDX, PART_BITS, BITS, TILE_BAND, NA,
                 ORDER, REPS, ORDER_HEADS, SLOPES, BIAS, U, W, TABLE,
                 s_qb, s_qs, s_qh, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, s_dob, s_dos, s_doh,
                 s_ob, s_os, s_oh, s_dqb, s_dqs, s_dqh,
                 s_bias_b, s_bias_h, s_bias_m, s_bias_n,
                 s_ub, s_uh, s_um, s_ur, s_wb, s_wh, s_wn, s_wr, RANK,
                 s_th, G0, G1, G2, CENTER, TABLE_CHUNKED,
                 H_Q, GROUP, S_Q, S_K, MAP_HEADS, N_Q_TILES, FULL_W, PART_W,
                 scale, qk_scale, softcap, band_lo, band_hi, sig_bias2,
                 HEAD_D: tl.constexpr, HEAD_DV: tl.constexpr, D_PAD: tl.constexpr,
                 DV_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 MASK_MODE: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
                 TENSOR_BIAS: tl.constexpr, LOW_RANK: tl.constexpr, LOW_RANK_GRAD: tl.constexpr,
                 R_PAD: tl.constexpr, REL_POS: tl.constexpr, REL_POS_GRAD: tl.constexpr,
                 SIGMOID: tl.constexpr, BIAS_GRAD: tl.constexpr,
                 SLOPE_GRAD: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
                 TILE_BANDS: tl.constexpr, NA_STATIC: tl.constexpr, GRID_ORDER: tl.constexpr,
                 SCHEDULED, MAY_SCHEDULE: tl.constexpr, DELTA_IN_DQ: tl.constexpr,
                 DQ_TMA: tl.constexpr):
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
    row_ok = q_row < S_Q
    q_mem = memory_rows(offs_m, m * BLOCK_M, NA, 0, NA_STATIC, GRID_ORDER).to(tl.int64)

    q = tl.load(Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh + first_row * s_qs
                + q_mem[:, None] * s_qs + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < HEAD_D), other=0.0)
    do = tl.load(DO + b.to(tl.int64) * s_dob + h.to(tl.int64) * s_doh + first_row * s_dos
                 + q_mem[:, None] * s_dos + offs_dv[None, :],
                 mask=row_ok[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
    lse2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    delta = tl.zeros([BLOCK_M], dtype=tl.float32)
    if not SIGMOID:
        lse = tl.load(LSE + bh.to(tl.int64) * (S_Q * groups) + first_row + q_mem, mask=row_ok,
                      other=float("inf"))
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
        delta_ptrs = DELTA + bh.to(tl.int64) * (S_Q * groups) + first_row + q_mem
        if DELTA_IN_DQ:
            # rowsum(o * do) of this program's rows (what row_dot computes), written for the
            # dk/dv kernel that runs after this one on the same stream.
            o = tl.load(O + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh + first_row * s_os
                        + q_mem[:, None] * s_os + offs_dv[None, :],
                        mask=row_ok[:, None] & (offs_dv[None, :] < HEAD_DV), other=0.0)
            delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
            tl.store(delta_ptrs, delta, mask=row_ok)
        else:
            delta = tl.load(delta_ptrs, mask=row_ok, other=0.0)

    k_base = K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh + first_row * s_ks
    v_base = V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh + first_row * s_vs
    slope = 0.0
    if ALIBI:
        slope = tl.load(SLOPES + h).to(tl.float32)
    bias_base = BIAS
    if TENSOR_BIAS:
        bias_base = BIAS + b.to(tl.int64) * s_bias_b + h.to(tl.int64) * s_bias_h
    dbias_base = DBIAS
    if BIAS_GRAD:
        dbias_base = DBIAS + bh.to(tl.int64) * S_Q * S_K

    offs_r = tl.arange(0, R_PAD)
    u = q
    w_base = W
    if LOW_RANK:
        u = load_factor_rows(U + b.to(tl.int64) * s_ub + h.to(tl.int64) * s_uh, q_row, offs_r,
                             s_um, s_ur, S_Q, RANK, True)
        w_base = W + b.to(tl.int64) * s_wb + h.to(tl.int64) * s_wh
    table_base = TABLE + h.to(tl.int64) * s_th
    dtab_base = DTABLE + (bh.to(tl.int64) * N_Q_TILES + m) * TABLE_CHUNKED
    fq = q_row
    if REL_POS:
        fq = grid_flat(q_row, G1, G2)
    # Neighborhood windows of the query rows, once per program (MASK_MODE 4).
    na_win = (q_row,)
    if MASK_MODE == 4:
        na_win = na_query_windows(offs_m[:, None], m * BLOCK_M, NA, NA_STATIC)

    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    du = tl.zeros([BLOCK_M, R_PAD], dtype=tl.float32)
    dslope = 0.0
    row = hm * N_Q_TILES + m
    for list_no in tl.static_range(2):
        tiles, words, count = listed_tiles(PART_IDX, PART_BITS, PART_CNT, PART_W, FULL_IDX, FULL_CNT,
                                           FULL_W, row, list_no == 0)
        dq, dslope, du = _dq_tiles(dq, dslope, du, q, do, lse2, delta, k_base, v_base, s_ks, s_vs,
                                   K_DESC, V_DESC, copy_batch, hk, tiles, words, count, BITS,
                                   TILE_BAND, NA, na_win, q_row, q_pos, offs_m, offs_n,
                                   offs_d, offs_dv, S_Q, S_K,
                                   scale, qk_scale, softcap, slope, band_lo, band_hi, sig_bias2,
                                   bias_base, s_bias_m, s_bias_n, dbias_base, S_K,
                                   u, w_base, s_wn, s_wr, offs_r, RANK,
                                   table_base, dtab_base, fq, G0, G1, G2, CENTER,
                                   HEAD_D, HEAD_DV, D_PAD, DV_PAD, BLOCK_M, BLOCK_N, list_no == 0,
                                   MASK_MODE, SOFTCAP, ALIBI, TENSOR_BIAS, LOW_RANK, LOW_RANK_GRAD,
                                   REL_POS, REL_POS_GRAD, SIGMOID, BIAS_GRAD, SLOPE_GRAD, PRECISION,
                                   USE_TMA, TILE_BANDS, NA_STATIC, GRID_ORDER)
    dq = dq * scale
    store_rows(DQ_DESC, DQ + b.to(tl.int64) * s_dqb + h.to(tl.int64) * s_dqh + first_row * s_dqs
               + q_mem[:, None] * s_dqs + offs_d[None, :], row_ok[:, None] & (offs_d[None, :] < HEAD_D),
               dq.to(DQ.dtype.element_ty), m * BLOCK_M, copy_batch, h, NA, 0, NA_STATIC,
               GRID_ORDER, D_PAD, DQ_TMA)
    if SLOPE_GRAD:
        tl.store(DSLOPE + bh * N_Q_TILES + m, -dslope)
    if LOW_RANK_GRAD:
        tl.store(DU + bh.to(tl.int64) * S_Q * R_PAD + q_row.to(tl.int64)[:, None] * R_PAD
                 + offs_r[None, :], du, mask=row_ok[:, None])


_DKDV = Launcher(_attn_bwd_dkdv)
_DQ = Launcher(_attn_bwd_dq)


# Backward work (listed tile pairs x rows x columns x (D + D_v), over batch and heads) from which
# the dk/dv kernel runs on a side stream next to dq; below it the two streams' host cost outweighs
# the overlap. H200, bf16, fwd+bwd ms on one stream / two: the 2-D 128 x 128, 17 x 17 neighborhood
# in tiled order (0.4e11) 1.08-1.09 / 1.07-1.32, the 3-D blocked one (0.4e11) 1.44 / 1.43, the
# 3-D 16 x 48 x 48, 5 x 13 x 13 one (3.4e11) 7.97-8.41 / 7.85-7.91
# (results/tuning/2026-11-30-h200-step-jitter-s13-*.json); random 10% blocks at S = 16384
# (1.2e11) 2.25-2.29 / 2.13-2.21 (third session, NOTES.md).
OVERLAP_MIN_WORK = 1e11

# Set False to compute delta by the row_dot launch on one stream too (comparisons).
DELTA_IN_DQ_ENABLED = True
# Grid-order calls write dq (DQ_BULK_ENABLED) and dk, dv (DKDV_BULK_ENABLED) by bulk stores
# wherever the kernel reads its other side's tiles by bulk copies and the gradients have views
# for it (``row_operand``); False: by pointers (comparisons).
DQ_BULK_ENABLED = True
DKDV_BULK_ENABLED = True


def overlap_pays(plan, batch: int, heads: int, width: int) -> bool:
    """Whether the dq / dk-dv overlap (``streams.py``) is worth its host cost for a backward over
    ``plan``'s listed tiles (``batch`` and ``heads`` of the call, ``width`` = D + D_v)."""
    pairs = plan.listed_pairs() * heads // plan.map_heads
    return pairs * batch * plan.block_m * plan.block_n * width >= OVERLAP_MIN_WORK


def _named_launch(launch, name: str):
    """Wrap a kernel launch so that an ``OutOfResources`` error says which kernel (``.kernel``)."""
    def run(*args, **kwargs):
        try:
            return launch(*args, **kwargs)
        except OutOfResources as error:
            error.kernel = name
            raise
    return run


def _dkdv_launch(q, k, v, plan, fold=None) -> Callable:
    """The Gluon dk/dv launch ``backward_route`` chose for a backward over ``plan`` with tensors
    like these (every group of a dilation ``fold`` where given, never on boxes), as a function
    ``(q, k, v, do, lse, delta, scale, dk, dv) -> None`` writing dk and dv. The kernel function
    is looked up per call (spies in tests see it)."""
    if fold is None and backward_route.dkdv_on_boxes(plan):
        from ..gluon import na_dkdv_boxes
        box_plan = na_dkdv_boxes.call_plan(q, k, v, plan)
        return lambda q, k, v, do, lse, delta, scale, dk, dv: na_dkdv_boxes.na_dkdv_boxes(
            q, k, v, do, lse, delta, box_plan, scale=scale, dk=dk, dv=dv, scope_checked=True)
    from ..gluon import na_dkdv
    variant = backward_route.dkdv_variant(q.shape[3], plan.mask_mode == MASK_NEIGHBORHOOD)
    return lambda q, k, v, do, lse, delta, scale, dk, dv: na_dkdv.na_dkdv(
        q, k, v, do, lse, delta, plan, scale=scale, dk=dk, dv=dv, fold=fold, scope_checked=True, **variant)


def _dq_launch(q, k, v, plan, fold=None) -> Callable:
    """The Gluon dq launch ``backward_route`` chose, as a function ``(q, k, v, do, lse, delta,
    scale, dq) -> None``: over key boxes (on the query tiles of ``na_forward_boxes.call_plan``)
    where ``backward_route.dq_on_boxes`` and there is no dilation ``fold``, else over the plan's
    tiles (every group of ``fold``)."""
    if fold is None and backward_route.dq_on_boxes(plan):
        from ..gluon import na_dq_boxes
        from ..gluon.na_forward_boxes import call_plan
        box_plan = call_plan(q, k, v, plan)
        registers = backward_route.DQ_BOXES_REGISTERS.get(q.shape[3])
        return lambda q, k, v, do, lse, delta, scale, dq: na_dq_boxes.na_dq_boxes(
            q, k, v, do, lse, delta, box_plan, scale=scale, dq=dq, scope_checked=True,
            max_registers=registers)
    from ..gluon import na_dq
    variant = dict(backward_route.DQ_VARIANT)
    return lambda q, k, v, do, lse, delta, scale, dq: na_dq.na_dq(
        q, k, v, do, lse, delta, plan, scale=scale, dq=dq, fold=fold, scope_checked=True, **variant)


def _gluon_dkdv(q, k, v, do, lse, delta, plan, scale: float, dk, dv, stream=None, fold=None,
                launch: Optional[Callable] = None) -> None:
    """dk and dv into ``dk``, ``dv`` by the Gluon kernel (``backward_route`` chose it; ``launch``:
    its ``_dkdv_launch`` when already resolved), on ``stream`` when given; every group of a
    dilation ``fold`` where given."""
    launch = launch or _dkdv_launch(q, k, v, plan, fold)
    if stream is None:
        launch(q, k, v, do, lse, delta, scale, dk, dv)
        return
    with torch.cuda.stream(stream):
        launch(q, k, v, do, lse, delta, scale, dk, dv)


def _gluon_dq(q, k, v, do, lse, delta, plan, scale: float, dq, fold=None,
              launch: Optional[Callable] = None) -> None:
    """dq into ``dq`` by a Gluon kernel (``_dq_launch``; ``launch``: that when already
    resolved)."""
    (launch or _dq_launch(q, k, v, plan, fold))(q, k, v, do, lse, delta, scale, dq)


def extent_only(q: torch.Tensor, plan) -> bool:
    """Whether ``q`` holds fewer rows than ``plan``'s grid: only its ``PaddedNeighborhood``'s
    extent (``flash_fwd.grid_view``), as the Gluon kernels alone read it."""
    return grid_extent(plan) is not None and q.shape[1] != plan.q_len


def _row_delta(o, do, dlse, grid=None, extent=None) -> torch.Tensor:
    """The backward's per-row term ``rowsum(o * do) - dlse`` (float32 ``[B, H_q, S]``; ``dlse``,
    the gradient of lse, None for zero): ``dS = P * (dP - delta)`` then carries lse's gradient
    too, since ``d lse_i / d s_ij = P_ij``. ``grid``, ``extent`` as in ``row_dot``."""
    delta = row_dot(o, do, grid, extent)
    if dlse is not None:
        delta.sub_(dlse)
    return delta


def _gluon_gradients(do, q, k, v, o, lse, dq_plan, dkdv_plan, scale: float, overlap: bool, dlse=None,
                     fold=None, launches: tuple = (None, None)):
    """``(dq, dk, dv)`` of a plain grid-order backward that both Gluon kernels take
    (``backward_route.routes``), every group of a dilation ``fold`` where given: delta, then
    dk/dv (on a side stream with ``overlap``) and dq. None of the Triton kernels' arguments are
    built (host time). Tensors that hold only a ``PaddedNeighborhood``'s extent
    (``extent_only``) get delta over its whole grid. ``launches``: the dq and dk/dv launches
    (``_dq_launch``, ``_dkdv_launch``) where already resolved."""
    dq_launch, dkdv_launch = launches
    if fold is None and extent_only(q, dq_plan):
        delta = _row_delta(o, do, dlse, dq_plan.na_values[0:3], grid_extent(dq_plan))
    else:
        delta = _row_delta(o, do, dlse)
    dq = torch.empty_like(q)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    side = streams.fork(q.device) if overlap else None
    try:
        if side is None:
            _gluon_dq(q, k, v, do, lse, delta, dq_plan, scale, dq, fold, dq_launch)
            _gluon_dkdv(q, k, v, do, lse, delta, dkdv_plan, scale, dk, dv, None, fold, dkdv_launch)
        else:
            _gluon_dkdv(q, k, v, do, lse, delta, dkdv_plan, scale, dk, dv, side, fold, dkdv_launch)
            _gluon_dq(q, k, v, do, lse, delta, dq_plan, scale, dq, fold, dq_launch)
    finally:
        streams.join(side)
    return dq, dk, dv


def gluon_gradients_launch(q, k, v, do, dq_plan, dkdv_plan, *, scale: float, fold=None):
    """What ``backward`` launches for a plain grid-order call (no bias, softcap or sigmoid; q, k,
    v, do as ``backward`` takes them) that both Gluon kernels take (``backward_route.routes``),
    with every route settled: a function ``(do, q, k, v, o, lse, dlse) -> (dq, dk, dv)`` for
    tensors with these shapes, strides, dtypes, device and base alignment; None where a Triton
    kernel takes part."""
    if not all(backward_route.routes(q, k, v, do, dq_plan, dkdv_plan, fold)):
        return None
    groups = 1 if fold is None else fold.groups
    overlap = overlap_pays(dq_plan, q.shape[0] * groups, q.shape[2], q.shape[3] + v.shape[3])
    launches = (_dq_launch(q, k, v, dq_plan, fold), _dkdv_launch(q, k, v, dkdv_plan, fold))

    def launch(do, q, k, v, o, lse, dlse):
        return _gluon_gradients(do, q, k, v, o, lse, dq_plan, dkdv_plan, scale, overlap, dlse, fold,
                                launches)
    return launch


def backward(do, q, k, v, o, lse, dq_plan, dkdv_plan, *, scale: float, dq_config, dkdv_config,
             softcap=None, slopes=None, bias=None, low_rank=None, rel_pos=None, sigmoid_bias=None,
             bias_grad: bool = False, slope_grad: bool = False, low_rank_grad: bool = False,
             rel_pos_grad: bool = False, precision: str = "ieee", grid_order: bool = False, fold=None,
             grid_rows=None, dlse=None):
    """Launch the backward kernels.

    ``dq_plan`` is used by the dq kernel (its query-tile lists), ``dkdv_plan`` by the dk/dv kernel
    (its transposed lists); their block sizes match ``dq_config`` / ``dkdv_config``.
    Returns ``(dq, dk, dv, dbias, dslopes, du, dw, dtable)``: dq/dk/dv like q/k/v; dbias float32
    ``[B, H_q, S_q, S_k]`` (gradient of the logits, zero outside listed tiles) or None; dslopes
    float32 ``[H_q]`` or None; with ``low_rank = (u, w)`` and ``low_rank_grad``: du float32
    ``[B, H_q, S_q, R]`` (``dS @ w``, from the dq kernel) and dw float32 ``[B, H_q, S_k, R]``
    (``dS^T @ u``, from the dk/dv kernel), not yet summed over the dims u and w broadcast along;
    else None, None; with ``rel_pos = (table, grid)`` and ``rel_pos_grad``: dtable float32
    ``[H_q, prod(2g - 1)]`` (per-(batch, head, query tile) partial sums written by the dq kernel,
    summed here; their buffer holds ``B * H_q * n_q_tiles * prod(2g - 1)`` floats), else None.
    ``grid_order``: tensors in grid order, positions tiled, as in ``flash_fwd.forward`` (no
    bias, low-rank or relative-position terms with it); ``fold``: a ``masks.DilationFold``, and
    ``grid_rows``: a ``masks.GridRoll`` or ``GridRows`` (pointer loads and stores), as there.
    ``dlse``: the gradient of lse (like lse; None for zero), for softmax scores.
    """
    batch, q_len, heads, dim = q.shape
    k_len, kv_heads, dim_v = k.shape[1], k.shape[2], v.shape[3]
    groups = 1
    dq_na, dq_static = dq_plan.na_params, dq_plan.na_static
    dkdv_na, dkdv_static = dkdv_plan.na_params, dkdv_plan.na_static
    if fold is not None:
        q_len, k_len, groups = dq_plan.q_len, dq_plan.k_len, fold.groups
        dq_na, dq_static = fold.params(dq_plan)
        dkdv_na, dkdv_static = fold.params(dkdv_plan)
    if grid_rows is not None:
        dq_na, dq_static = grid_rows.params(dq_plan)
        dkdv_na, dkdv_static = grid_rows.params(dkdv_plan)
    bulk = grid_rows is None
    sigmoid = sigmoid_bias is not None
    device = q.device
    overlap = streams.possible(device) and overlap_pays(dq_plan, batch * groups, heads, dim + dim_v)
    plain = (grid_order and grid_rows is None and not sigmoid and softcap is None
             and slopes is None and bias is None and low_rank is None and rel_pos is None)
    gluon_dq, gluon_dkdv = (backward_route.routes(q, k, v, do, dq_plan, dkdv_plan, fold) if plain
                            else (False, False))
    if gluon_dq and gluon_dkdv:
        return (*_gluon_gradients(do, q, k, v, o, lse, dq_plan, dkdv_plan, scale, overlap, dlse, fold),
                None, None, None, None, None)
    if extent_only(q, dq_plan):
        raise RuntimeError("flash_bwd.backward: q, k, v hold only a padded grid's extent, which only "
                           "the Gluon dq and dk/dv kernels read (backward_route.routes declined them)")
    # On one stream the Triton dq runs first and writes delta itself (DELTA_IN_DQ) before dk/dv
    # reads it; the Gluon dq reads it.
    delta_in_dq = DELTA_IN_DQ_ENABLED and dlse is None and not (sigmoid or overlap or gluon_dq)
    if sigmoid:
        delta = torch.zeros(1, dtype=torch.float32, device=device)
        lse = delta
    elif delta_in_dq:
        delta = torch.empty(batch, heads, q.shape[1], dtype=torch.float32, device=device)
    else:
        delta = _row_delta(o, do, dlse)
    dq = torch.empty_like(q)
    dk = torch.empty(batch, k.shape[1], kv_heads, dim, dtype=k.dtype, device=device)
    dv = torch.empty(batch, k.shape[1], kv_heads, dim_v, dtype=v.dtype, device=device)
    dummy = delta
    bias_strides = broadcast_strides(bias) if bias is not None else (0, 0, 0, 0)
    dbias = torch.zeros(batch, heads, q_len, k_len, dtype=torch.float32, device=device) if bias_grad else None
    dslope = (torch.empty(batch * heads * dq_plan.n_q_tiles, dtype=torch.float32, device=device)
              if slope_grad else None)
    factors = low_rank_args(low_rank, dummy)
    r_pad = rank_pad(factors[-1])
    low_rank_grad = low_rank_grad and low_rank is not None
    table_args = rel_pos_args(rel_pos, dummy)
    rel_pos_grad = rel_pos_grad and rel_pos is not None
    g0 = 1
    table_chunked = 0
    dtable = None
    if rel_pos is not None:
        g0 = (1,) * (3 - len(rel_pos[1])) + tuple(rel_pos[1])
        g0 = g0[0]
        entries = table_args[0].shape[1]
        table_chunked = cdiv(entries, dq_plan.block_n) * dq_plan.block_n
    if rel_pos_grad:
        dtable = torch.zeros(batch * heads * dq_plan.n_q_tiles, table_chunked, dtype=torch.float32,
                             device=device)
    du = dw = None
    if low_rank_grad:
        du = torch.empty(batch, heads, q_len, r_pad, dtype=torch.float32, device=device)
        dw = torch.empty(batch, heads, k_len, r_pad, dtype=torch.float32, device=device)
    common = dict(
        HEAD_D=dim, HEAD_DV=dim_v, D_PAD=padded_width(dim),
        DV_PAD=padded_width(dim_v), SOFTCAP=softcap is not None,
        ALIBI=slopes is not None, TENSOR_BIAS=bias is not None, LOW_RANK=low_rank is not None,
        LOW_RANK_GRAD=low_rank_grad, R_PAD=r_pad, REL_POS=rel_pos is not None, SIGMOID=sigmoid,
        PRECISION=precision,
    )
    variant_args = (scale, scale * LOG2E, softcap if softcap is not None else 1.0)
    sig_bias2 = (sigmoid_bias if sigmoid else 0.0) * LOG2E

    # Arguments both Triton kernels take in the same place: the score terms' tensors and q, k,
    # v, do strides. Each kernel's descriptors and launch order are built only where that
    # Triton kernel runs (not for a gradient the Gluon kernels take: host time).
    score_terms = (slopes if slopes is not None else dummy, bias if bias is not None else dummy, *factors[:2],
                   table_args[0])
    input_strides = tuple(t.stride(i) for t in (q, k, v, do) for i in range(3))

    def run_dkdv(stream):
        if gluon_dkdv:
            _gluon_dkdv(q, k, v, do, lse, delta, dkdv_plan, scale, dk, dv, stream, fold)
            return
        cols = dkdv_plan.cols
        q_desc, do_desc, dkdv_tma = (row_operands(q, do, dkdv_plan, dkdv_plan.block_m, grid_order, fold)
                                     if bulk else (q, do, False))
        dk_desc, dv_desc, dkdv_stores = dk, dv, False
        if dkdv_tma and grid_order and DKDV_BULK_ENABLED:
            dk_desc, dv_desc, dkdv_stores = row_operands(dk, dv, dkdv_plan, dkdv_plan.block_n, grid_order, fold)
        col_order = col_launch(dkdv_plan, batch * groups, kv_heads)
        launch_dkdv = _named_launch(_DKDV[col_order.grid], "dkdv")
        launch_dkdv(
            q, k, v, do, q_desc, do_desc, lse, delta, dk, dv, dk_desc, dv_desc,
            dw if dw is not None else dummy,
            cols.full_count, cols.full_index, cols.part_count, cols.part_index, cols.part_bits,
            dkdv_plan.bits, dkdv_plan.tile_band, dkdv_na,
            col_order.order, col_order.reps, col_order.heads, *score_terms,
            *input_strides,
            dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
            *bias_strides, *factors[2:], *table_args[1:],
            heads, kv_heads, heads // kv_heads, q_len, k_len, dkdv_plan.map_heads, dkdv_plan.n_k_tiles,
            cols.full_width, cols.part_width,
            *variant_args, dkdv_plan.band_lo, dkdv_plan.band_hi, sig_bias2,
            BLOCK_M=dkdv_plan.block_m, BLOCK_N=dkdv_plan.block_n, MASK_MODE=dkdv_plan.mask_mode,
            USE_TMA=dkdv_tma, TILE_BANDS=dkdv_plan.bands_per_tile, NA_STATIC=dkdv_static,
            GRID_ORDER=grid_order, SCHEDULED=col_order.scheduled, MAY_SCHEDULE=col_order.may_schedule,
            DKDV_TMA=dkdv_stores, num_warps=dkdv_config.num_warps, num_stages=dkdv_config.num_stages,
            stream=stream, **common,
        )

    def run_dq():
        if gluon_dq:
            _gluon_dq(q, k, v, do, lse, delta, dq_plan, scale, dq, fold)
            return
        rows = dq_plan.rows
        k_desc, v_desc, dq_tma = (row_operands(k, v, dq_plan, dq_plan.block_n, grid_order, fold)
                                  if bulk else (k, v, False))
        dq_desc, dq_store = dq, False
        if dq_tma and grid_order and DQ_BULK_ENABLED:
            dq_desc, dq_store = row_operand(dq, dq_plan, dq_plan.block_m, grid_order, fold)
        row_order = row_launch(dq_plan, batch * groups, heads)
        launch_dq = _named_launch(_DQ[row_order.grid], "dq")
        launch_dq(
            q, k, v, do, o, k_desc, v_desc, lse, delta, dq, dq_desc,
            dbias if dbias is not None else dummy,
            dslope if dslope is not None else dummy, du if du is not None else dummy,
            dtable if dtable is not None else dummy,
            rows.full_count, rows.full_index, rows.part_count, rows.part_index, rows.part_bits,
            dq_plan.bits, dq_plan.tile_band, dq_na,
            row_order.order, row_order.reps, row_order.heads, *score_terms,
            *input_strides, *o.stride()[:3],
            dq.stride(0), dq.stride(1), dq.stride(2),
            *bias_strides, *factors[2:], table_args[1], g0, *table_args[2:], table_chunked,
            heads, heads // kv_heads, q_len, k_len, dq_plan.map_heads, dq_plan.n_q_tiles,
            rows.full_width, rows.part_width,
            *variant_args, dq_plan.band_lo, dq_plan.band_hi, sig_bias2,
            BLOCK_M=dq_plan.block_m, BLOCK_N=dq_plan.block_n, MASK_MODE=dq_plan.mask_mode,
            BIAS_GRAD=bias_grad, SLOPE_GRAD=slope_grad, REL_POS_GRAD=rel_pos_grad, USE_TMA=dq_tma,
            TILE_BANDS=dq_plan.bands_per_tile, NA_STATIC=dq_static,
            GRID_ORDER=grid_order, SCHEDULED=row_order.scheduled, MAY_SCHEDULE=row_order.may_schedule,
            DELTA_IN_DQ=delta_in_dq, DQ_TMA=dq_store, num_warps=dq_config.num_warps,
            num_stages=dq_config.num_stages,
            **common,
        )

    side = streams.fork(device) if overlap else None
    try:
        if side is None:
            run_dq()
            run_dkdv(None)
        else:
            run_dkdv(side)
            run_dq()
    finally:
        streams.join(side)
    dslopes = None
    if dslope is not None:
        dslopes = dslope.view(batch, heads, -1).sum((0, 2))
    if low_rank_grad:
        rank = factors[-1]
        du, dw = du[..., :rank], dw[..., :rank]
    if rel_pos_grad:
        entries = table_args[0].shape[1]
        dtable = dtable.view(batch, heads, -1, table_chunked).sum((0, 2))[:, :entries]
    return dq, dk, dv, dbias, dslopes, du, dw, dtable
