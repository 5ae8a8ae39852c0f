"""Chunked Triton kernels of the (gated) delta rule, forward and backward (WY / UT-transform form).

Per chunk of ``BT`` tokens, with local cumulative log-decay ``b`` (zero without a gate), ``D_ij =
exp(b_i - b_j)`` and incoming state ``S`` (``[K, V]``):
    M = tril_strict(beta_i D_ij k_i . k_j),  T = (I + M)^-1          (block forward substitution, float32)
    U = T (beta v),  W = T (beta exp(b) k),  u = U - W S              (the values actually written)
    o = scale exp(b) q S + A u,  A = scale tril(D_ij q_i . k_j)       (``simple_gla``'s output kernel)
    S' = exp(b_C) S + (exp(b_C - b) k)^T u
Backward, with ``dS'`` the gradient of the outgoing state:
    du = A^T do + (exp(b_C - b) k) dS'    (``A^T do`` for all chunks at once, the rest in the state pass)
    dS = exp(b_C) dS' + scale (exp(b) q)^T do - W^T du
    dW = -du S^T,  dT = du (beta v)^T + dW (beta exp(b) k)^T,  dM = -T^T dT T^T (strict lower part)
and the chain rule through ``U``, ``W``, ``M`` to ``v``, ``k``, ``beta``, ``b``. ``dq`` and the parts of
``dk``/``dg`` that come through ``o`` and ``S'`` are those of simple GLA with ``v := u``; the dqk kernel
computes them together with ``dW`` (it reads ``S`` for ``dq`` anyway), and the WY kernel adds the parts
through ``U``, ``W``, ``M``. As in fla, the tensors passed between backward kernels (``A^T do``, ``du``,
``dW``, partial ``dk``) are stored in the input dtype (each is only an operand of 16-bit products next);
every kernel accumulates in float32. Every use of the gate inside a chunk
goes through the local ``b``, so ``dg`` is the reverse cumulative sum, within the chunk, of ``db``. Keys are used as given (the caller L2-normalises them, as in fla).
The local ``b`` is computed once per call (``simple_gla.chunk_local_cumsum``); the kernels' ``gc``
argument is that float32 ``[TT, H]`` tensor.
Limits: ``K <= 128`` (the whole key dimension is one block); ``V`` any.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...kernels.triton.launcher import Launcher
from . import tuning
from .simple_gla import (_INTERPRETING, CHUNK, _block, _chunk_coords, _chunk_dqk_kernel, _chunk_rows, _dot,
                         _gate_local, _initial_state, _key, _pair_decay, _rows, _rows_t, _seq_coords, _state,
                         _state_dtype, chunk_dv, chunk_local_cumsum, chunk_output, packed_chunks)


@triton.jit
def _per_token(x, bos, seq_len, i_h, H, row0, BT: tl.constexpr):
    """A chunk of a ``[TT, H]`` per-token scalar (zeros past the sequence), float32."""
    o_t = row0 + tl.arange(0, BT)
    return tl.load(x + (bos + o_t).to(tl.int64) * H + i_h, mask=o_t < seq_len, other=0.).to(tl.float32)


@triton.jit
def _sub_rows(x, bos, seq_len, i_h, H, D: tl.constexpr, row0, BR: tl.constexpr, BD: tl.constexpr):
    """Rows ``row0 : row0 + BR`` of one sequence of ``x[TT, H, D]``, ``[BR, BD]`` (zeros past the sequence or ``D``)."""
    return tl.load(_rows(x, bos, seq_len, i_h, H, D, row0, 0, BR, BD), boundary_check=(0, 1), padding_option="zero")


@triton.jit
def _decay(b_b, o_t, INCLUSIVE: tl.constexpr):
    """``exp(b_i - b_j)`` on ``j <= i`` (``j < i`` unless ``INCLUSIVE``), 0 elsewhere."""
    if INCLUSIVE:
        keep = o_t[:, None] >= o_t[None, :]
    else:
        keep = o_t[:, None] > o_t[None, :]
    return tl.where(keep, _pair_decay(b_b), 0.)


@triton.jit
def _dot_fp32(a, b, IEEE: tl.constexpr):
    """Float32 product at float32 accuracy: exact FMA when ``IEEE``, else three TF32 tensor-core passes."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision="tf32x3")


@triton.jit
def _stack4(a, b, c, d):
    """Four ``[R, C]`` blocks as one ``[4, R, C]`` batch, in order."""
    R: tl.constexpr = a.shape[0]
    C: tl.constexpr = a.shape[1]
    # join(join(a, b), join(c, d))[r, s, t, u] is block 2u + t.
    return tl.reshape(tl.permute(tl.join(tl.join(a, b), tl.join(c, d)), (3, 2, 0, 1)), (4, R, C))


@triton.jit
def _unstack4(x):
    """The four ``[R, C]`` blocks of a ``[4, R, C]`` batch (inverse of ``_stack4``)."""
    R: tl.constexpr = x.shape[1]
    C: tl.constexpr = x.shape[2]
    ab, cd = tl.split(tl.permute(tl.reshape(x, (2, 2, R, C)), (2, 3, 1, 0)))
    a, b = tl.split(ab)
    c, d = tl.split(cd)
    return a, b, c, d


@triton.jit
def _m_block(Tinv, bos, seq_len, i_h, H, BT: tl.constexpr, row0, a: tl.constexpr, b: tl.constexpr,
             BC: tl.constexpr):
    """Block ``M_ab`` (``[BC, BC]``: rows of block ``a``, columns of block ``b``) of a chunk's ``M`` held in
    its rows of ``Tinv[TT, H, BT]`` (zeros past the sequence)."""
    return tl.load(_rows(Tinv, bos, seq_len, i_h, H, BT, row0 + a * BC, b * BC, BC, BC), boundary_check=(0, 1),
                   padding_option="zero")


@triton.jit
def _m_diag_t(Tinv, bos, seq_len, i_h, H, BT: tl.constexpr, row0, a: tl.constexpr, BC: tl.constexpr):
    """``M_aa^T`` (``[BC, BC]``), the transposed diagonal block ``a`` of ``M`` held as in ``_m_block``."""
    return tl.load(_rows_t(Tinv, bos, seq_len, i_h, H, BT, row0 + a * BC, a * BC, BC, BC), boundary_check=(0, 1),
                   padding_option="zero")


@triton.jit
def _diag_inverses(b_Lt):
    """``(I + L)^-1`` for a ``[NB, BC, BC]`` batch of strictly lower ``L``, given as ``L^T``, by forward
    substitution: row ``i`` of the inverse is ``e_i - sum_{j < i} L_ij T_j``, all blocks at once. Only
    final rows of the inverse enter each step, so nothing grows beyond the inverse itself (float32 FMAs)."""
    o_c = tl.arange(0, b_Lt.shape[1])
    rows = o_c[None, :, None]
    cols = o_c[None, None, :]
    b_T = tl.zeros(b_Lt.shape, dtype=tl.float32) + (rows == cols).to(tl.float32)
    for i in tl.static_range(1, b_Lt.shape[1]):
        b_l = tl.sum(tl.where(cols == i, b_Lt, 0.), 2)  # [NB, BC]: row i of each L
        b_T = tl.where(rows == i, b_T - tl.sum(b_l[:, :, None] * b_T, 1)[:, None, :], b_T)
    return b_T


@triton.jit
def _unit_lower_inverse(T0, T1, T2, T3, M10, M20, M21, M30, M31, M32, IEEE: tl.constexpr):
    """The blocks below the diagonal ``(T10, T20, T21, T30, T31, T32)``, each ``[BC, BC]`` float32, of
    ``(I + M)^-1`` for a strictly lower ``[4 BC, 4 BC]`` ``M`` given by its blocks ``M_ab`` (``a > b``) and the
    inverses ``T_a`` of its diagonal blocks ``I + M_aa`` (the diagonal blocks of the result).

    Pairs of blocks merge into 2-block inverses, then those into the whole:
    ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``. Every intermediate is a block of the inverse
    (or ``C A^-1``), so nothing grows when keys are correlated; 16 ``BC^3`` float32 products (``_dot_fp32``)."""
    T10 = -_dot_fp32(T1, _dot_fp32(M10, T0, IEEE), IEEE)
    T32 = -_dot_fp32(T3, _dot_fp32(M32, T2, IEEE), IEEE)
    # C A^-1 for the lower left 2 x 2 blocks, C = [[M20, M21], [M30, M31]], A^-1 = [[T0, 0], [T10, T1]].
    X20 = _dot_fp32(M20, T0, IEEE) + _dot_fp32(M21, T10, IEEE)
    X21 = _dot_fp32(M21, T1, IEEE)
    X30 = _dot_fp32(M30, T0, IEEE) + _dot_fp32(M31, T10, IEEE)
    X31 = _dot_fp32(M31, T1, IEEE)
    # -D^-1 (C A^-1), D^-1 = [[T2, 0], [T32, T3]].
    T20 = -_dot_fp32(T2, X20, IEEE)
    T21 = -_dot_fp32(T2, X21, IEEE)
    T30 = -(_dot_fp32(T32, X20, IEEE) + _dot_fp32(T3, X30, IEEE))
    T31 = -(_dot_fp32(T32, X21, IEEE) + _dot_fp32(T3, X31, IEEE))
    return T10, T20, T21, T30, T31, T32


@triton.jit
def _store_row_block(Tinv, bos, seq_len, i_h, H, BT: tl.constexpr, row0, B0, B1, B2, B3):
    """Rows ``row0 : row0 + BC`` of ``T`` (``Tinv[TT, H, BT]``) from its four ``[BC, BC]`` column blocks."""
    BC: tl.constexpr = B0.shape[0]
    tl.store(_rows(Tinv, bos, seq_len, i_h, H, BT, row0, 0, BC, BC), B0, boundary_check=(0, 1))
    tl.store(_rows(Tinv, bos, seq_len, i_h, H, BT, row0, BC, BC, BC), B1, boundary_check=(0, 1))
    tl.store(_rows(Tinv, bos, seq_len, i_h, H, BT, row0, 2 * BC, BC, BC), B2, boundary_check=(0, 1))
    tl.store(_rows(Tinv, bos, seq_len, i_h, H, BT, row0, 3 * BC, BC, BC), B3, boundary_check=(0, 1))


@triton.jit(do_not_specialize=["T"])
def _delta_prepare_kernel(k, v, beta, gc, Tinv, w, u0, cu_seqlens, chunk_indices, T, H,
                          K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                          BV: tl.constexpr, USE_G: tl.constexpr, IEEE: tl.constexpr, WU: tl.constexpr,
                          VARLEN: tl.constexpr):
    """``T = (I + M)^-1`` (stored float32, one row per token) and, if ``WU``, ``W = T (beta exp(b) k)``,
    ``U = T (beta v)`` (else ``_delta_wu_kernel`` computes them).

    ``M`` comes from one ``BT x BT`` product and is inverted in ``BC = BT / 4`` blocks: the four diagonal
    blocks by forward substitution (``_diag_inverses``), then two merge levels of ``BC x BC`` products
    (``_unit_lower_inverse``; float32 accuracy: IEEE for float32 inputs, three TF32 passes otherwise). The
    blocks of ``M`` are read back from the chunk's own rows of ``Tinv``, which ``T`` then overwrites."""
    BC: tl.constexpr = BT // 4
    o_t = tl.arange(0, BT)
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    bos, seq_len, i_t = _chunk_coords(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    row0 = i_t * BT

    b_k = _sub_rows(k, bos, seq_len, i_h, H, K, row0, BT, BK)
    b_beta = _per_token(beta, bos, seq_len, i_h, H, row0, BT)
    b_M = _dot(b_k, tl.trans(b_k), IEEE) * b_beta[:, None]
    if USE_G:
        b_b, _ = _gate_local(gc, bos, seq_len, i_h, H, row0, BT)
        b_M *= _decay(b_b, o_t, False)
    else:
        b_M = tl.where(o_t[:, None] > o_t[None, :], b_M, 0.)
    # M goes through this chunk's rows of Tinv (overwritten by T below) to be read back in BC x BC blocks;
    # block barriers order this program's stores and loads of it.
    p_T = _rows(Tinv, bos, seq_len, i_h, H, BT, row0, 0, BT, BT)
    tl.store(p_T, b_M, boundary_check=(0, 1))
    tl.debug_barrier()
    T0, T1, T2, T3 = _unstack4(_diag_inverses(_stack4(
        _m_diag_t(Tinv, bos, seq_len, i_h, H, BT, row0, 0, BC), _m_diag_t(Tinv, bos, seq_len, i_h, H, BT, row0, 1, BC),
        _m_diag_t(Tinv, bos, seq_len, i_h, H, BT, row0, 2, BC),
        _m_diag_t(Tinv, bos, seq_len, i_h, H, BT, row0, 3, BC))))
    T10, T20, T21, T30, T31, T32 = _unit_lower_inverse(
        T0, T1, T2, T3, _m_block(Tinv, bos, seq_len, i_h, H, BT, row0, 1, 0, BC),
        _m_block(Tinv, bos, seq_len, i_h, H, BT, row0, 2, 0, BC), _m_block(Tinv, bos, seq_len, i_h, H, BT, row0, 2, 1, BC),
        _m_block(Tinv, bos, seq_len, i_h, H, BT, row0, 3, 0, BC), _m_block(Tinv, bos, seq_len, i_h, H, BT, row0, 3, 1, BC),
        _m_block(Tinv, bos, seq_len, i_h, H, BT, row0, 3, 2, BC), IEEE)
    tl.debug_barrier()
    Z = tl.zeros([BC, BC], dtype=tl.float32)
    _store_row_block(Tinv, bos, seq_len, i_h, H, BT, row0, T0, Z, Z, Z)
    _store_row_block(Tinv, bos, seq_len, i_h, H, BT, row0 + BC, T10, T1, Z, Z)
    _store_row_block(Tinv, bos, seq_len, i_h, H, BT, row0 + 2 * BC, T20, T21, T2, Z)
    _store_row_block(Tinv, bos, seq_len, i_h, H, BT, row0 + 3 * BC, T30, T31, T32, T3)
    if WU:
        # T back as one [BT, BT] tile for the W and U products (rows past the sequence read as zeros; their W
        # and U rows are not stored).
        tl.debug_barrier()
        b_Tc = tl.load(p_T, boundary_check=(0, 1), padding_option="zero").to(b_k.dtype)
        if USE_G:
            b_kw = (b_k.to(tl.float32) * (b_beta * tl.exp(b_b))[:, None]).to(b_k.dtype)
        else:
            b_kw = (b_k.to(tl.float32) * b_beta[:, None]).to(b_k.dtype)
        tl.store(_rows(w, bos, seq_len, i_h, H, K, row0, 0, BT, BK), _dot(b_Tc, b_kw, IEEE).to(w.dtype.element_ty),
                 boundary_check=(0, 1))
        _store_scaled_products(b_Tc, v, u0, b_beta, bos, seq_len, i_h, H, row0, V, BT, BV, IEEE)


@triton.jit
def _store_scaled_products(b_Tc, x, y, b_s, bos, seq_len, i_h, H, row0, D: tl.constexpr, BT: tl.constexpr,
                           BD: tl.constexpr, IEEE: tl.constexpr):
    """``y = T (s x)`` for one chunk of ``x[TT, H, D]`` (``y`` likewise), by blocks of ``BD`` channels; ``b_Tc``:
    ``T`` ``[BT, BT]`` in the operand dtype, ``b_s`` the float32 per-token scale ``[BT]``."""
    for i_d in range(0, tl.cdiv(D, BD)):
        b_x = tl.load(_rows(x, bos, seq_len, i_h, H, D, row0, i_d * BD, BT, BD), boundary_check=(0, 1),
                      padding_option="zero")
        b_xs = (b_x.to(tl.float32) * b_s[:, None]).to(b_x.dtype)
        tl.store(_rows(y, bos, seq_len, i_h, H, D, row0, i_d * BD, BT, BD),
                 _dot(b_Tc, b_xs, IEEE).to(y.dtype.element_ty), boundary_check=(0, 1))


@triton.jit(do_not_specialize=["T"])
def _delta_wu_kernel(k, v, beta, gc, Tinv, w, u0, cu_seqlens, chunk_indices, T, H,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     USE_G: tl.constexpr, IEEE: tl.constexpr, VARLEN: tl.constexpr):
    """``W = T (beta exp(b) k)`` and ``U = T (beta v)`` of one chunk and head from the stored ``T`` (the second
    half of a split prepare: ``_delta_prepare_kernel`` with ``WU=False`` stores ``T``)."""
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    bos, seq_len, i_t = _chunk_coords(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    row0 = i_t * BT
    b_beta = _per_token(beta, bos, seq_len, i_h, H, row0, BT)
    b_Tc = tl.load(_rows(Tinv, bos, seq_len, i_h, H, BT, row0, 0, BT, BT), boundary_check=(0, 1),
                   padding_option="zero").to(w.dtype.element_ty)
    if USE_G:
        b_b, _ = _gate_local(gc, bos, seq_len, i_h, H, row0, BT)
        b_kscale = b_beta * tl.exp(b_b)
    else:
        b_kscale = b_beta
    _store_scaled_products(b_Tc, k, w, b_kscale, bos, seq_len, i_h, H, row0, K, BT, BK, IEEE)
    _store_scaled_products(b_Tc, v, u0, b_beta, bos, seq_len, i_h, H, row0, V, BT, BV, IEEE)


@triton.jit
def _delta_state_step(k, w, u0, u, gc, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, v0,
                      K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      USE_G: tl.constexpr, IEEE: tl.constexpr):
    """Store the state entering chunk ``i_t`` and the written values ``u``; return the state leaving it."""
    row0 = i_t * BT
    tl.store(_state(h, first_chunk + i_t, i_h, H, K, V, 0, v0, BK, BV), b_h.to(h.dtype.element_ty),
             boundary_check=(0, 1))
    b_w = tl.load(_rows(w, bos, seq_len, i_h, H, K, row0, 0, BT, BK), boundary_check=(0, 1), padding_option="zero")
    b_u = tl.load(_rows(u0, bos, seq_len, i_h, H, V, row0, v0, BT, BV), boundary_check=(0, 1),
                  padding_option="zero").to(tl.float32)
    b_u -= _dot(b_w, b_h.to(b_w.dtype), IEEE)
    tl.store(_rows(u, bos, seq_len, i_h, H, V, row0, v0, BT, BV), b_u.to(u.dtype.element_ty), boundary_check=(0, 1))
    b_kt = tl.load(_rows_t(k, bos, seq_len, i_h, H, K, row0, 0, BT, BK), boundary_check=(0, 1),
                   padding_option="zero")
    if USE_G:
        b_b, b_last = _gate_local(gc, bos, seq_len, i_h, H, row0, BT)
        b_h *= tl.exp(b_last)
        b_u *= tl.exp(b_last - b_b)[:, None]
    b_h += _dot(b_kt, b_u.to(b_kt.dtype), IEEE)
    return b_h


@triton.jit(do_not_specialize=["T"])
def _delta_states_kernel(k, w, u0, u, gc, h, h0, ht, cu_seqlens, chunk_offsets, T, H,
                         K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                         USE_G: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, IEEE: tl.constexpr,
                         WHILE_LOOP: tl.constexpr, VARLEN: tl.constexpr):
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    i_h = i_nh % H
    bos, seq_len, first_chunk = _seq_coords(cu_seqlens, chunk_offsets, i_n, T, BT, VARLEN)
    n_chunks = tl.cdiv(seq_len, BT)
    v0 = i_v * BV
    b_h = _initial_state(h0, i_n, i_h, H, K, V, 0, v0, BK, BV, USE_H0)
    if WHILE_LOOP:
        i_t = 0
        while i_t < n_chunks:
            b_h = _delta_state_step(k, w, u0, u, gc, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, v0,
                                    K, V, BT, BK, BV, USE_G, IEEE)
            i_t += 1
    else:
        for i_t in range(0, n_chunks):
            b_h = _delta_state_step(k, w, u0, u, gc, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, v0,
                                    K, V, BT, BK, BV, USE_G, IEEE)
    if STORE_HT:
        tl.store(_state(ht, i_n, i_h, H, K, V, 0, v0, BK, BV), b_h, boundary_check=(0, 1))


@triton.jit
def _delta_state_grad_step(q, k, w, gc, do, h, du_attn, du, dh, hdh, b_dh, i_t, bos, seq_len, first_chunk, i_h,
                           H, scale, v0, i_v, NV, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                           BK: tl.constexpr, BV: tl.constexpr, USE_G: tl.constexpr, IEEE: tl.constexpr):
    """Store ``dS'`` of chunk ``i_t``, ``du = A^T do + (exp(b_C - b) k) dS'`` (``A^T do`` read from ``du_attn``)
    and, gated, this block's ``<S, dS'>``; return ``dS``. Queries and ``W`` are read transposed (``[BK, BT]``),
    as the products want them."""
    row0 = i_t * BT
    chunk = first_chunk + i_t
    tl.store(_state(dh, chunk, i_h, H, K, V, 0, v0, BK, BV), b_dh.to(dh.dtype.element_ty), boundary_check=(0, 1))
    b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, row0, 0, BT, BK), boundary_check=(0, 1), padding_option="zero")
    b_du = tl.load(_rows(du_attn, bos, seq_len, i_h, H, V, row0, v0, BT, BV), boundary_check=(0, 1),
                   padding_option="zero").to(tl.float32)
    b_do = tl.load(_rows(do, bos, seq_len, i_h, H, V, row0, v0, BT, BV), boundary_check=(0, 1),
                   padding_option="zero")
    b_qt = tl.load(_rows_t(q, bos, seq_len, i_h, H, K, row0, 0, BT, BK), boundary_check=(0, 1),
                   padding_option="zero")
    b_wt = tl.load(_rows_t(w, bos, seq_len, i_h, H, K, row0, 0, BT, BK), boundary_check=(0, 1),
                   padding_option="zero")
    if USE_G:
        b_b, b_last = _gate_local(gc, bos, seq_len, i_h, H, row0, BT)
        b_k = (b_k.to(tl.float32) * tl.exp(b_last - b_b)[:, None]).to(b_do.dtype)
        b_qt = (b_qt.to(tl.float32) * (tl.exp(b_b) * scale)[None, :]).to(b_do.dtype)
        b_h = tl.load(_state(h, chunk, i_h, H, K, V, 0, v0, BK, BV), boundary_check=(0, 1), padding_option="zero")
        tl.store(hdh + (chunk.to(tl.int64) * H + i_h) * NV + i_v, tl.sum(tl.sum(b_h.to(tl.float32) * b_dh, 1), 0))
    b_du += _dot(b_k, b_dh.to(b_k.dtype), IEEE)
    b_duc = b_du.to(du.dtype.element_ty)
    tl.store(_rows(du, bos, seq_len, i_h, H, V, row0, v0, BT, BV), b_duc, boundary_check=(0, 1))
    if USE_G:
        b_dh *= tl.exp(b_last)
        b_dh += _dot(b_qt, b_do, IEEE)
    else:
        b_dh += _dot(b_qt, b_do, IEEE) * scale
    return b_dh - _dot(b_wt, b_duc.to(b_wt.dtype), IEEE)


@triton.jit
def _delta_state_grads_kernel(q, k, w, gc, do, h, du_attn, du, dh, hdh, dht, dh0, cu_seqlens, chunk_offsets, scale,
                              H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                              BV: tl.constexpr, USE_G: tl.constexpr, USE_DHT: tl.constexpr,
                              STORE_DH0: tl.constexpr, IEEE: tl.constexpr, WHILE_LOOP: tl.constexpr):
    """Walk one sequence's chunks backwards for one head and one block of ``BV`` value channels (``dS`` stays in
    registers, float32, ``[BK, BV]``)."""
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    NV = tl.num_programs(0)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(cu_seqlens + i_n)
    seq_len = tl.load(cu_seqlens + i_n + 1) - bos
    first_chunk = tl.load(chunk_offsets + i_n)
    n_chunks = tl.cdiv(seq_len, BT)
    v0 = i_v * BV
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(_state(dht, i_n, i_h, H, K, V, 0, v0, BK, BV), boundary_check=(0, 1),
                        padding_option="zero").to(tl.float32)
    if WHILE_LOOP:
        i_t = n_chunks - 1
        while i_t >= 0:
            b_dh = _delta_state_grad_step(q, k, w, gc, do, h, du_attn, du, dh, hdh, b_dh, i_t, bos, seq_len,
                                          first_chunk, i_h, H, scale, v0, i_v, NV, K, V, BT, BK, BV, USE_G, IEEE)
            i_t -= 1
    else:
        for i_r in range(0, n_chunks):
            b_dh = _delta_state_grad_step(q, k, w, gc, do, h, du_attn, du, dh, hdh, b_dh, n_chunks - 1 - i_r, bos,
                                          seq_len, first_chunk, i_h, H, scale, v0, i_v, NV, K, V, BT, BK, BV, USE_G,
                                          IEEE)
    if STORE_DH0:
        tl.store(_state(dh0, i_n, i_h, H, K, V, 0, v0, BK, BV), b_dh, boundary_check=(0, 1))


@triton.jit
def _delta_wy_grads_kernel(k, v, beta, gc, Tinv, du, dw, dk_partial, dg_partial, dk, dv, dbeta, dg,
                           cu_seqlens, chunk_indices, H,
                           K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                           USE_G: tl.constexpr, IEEE: tl.constexpr):
    """Gradients through ``U = T (beta v)``, ``W = T (beta exp(b) k)`` and ``T = (I + M)^-1`` from ``du`` and
    ``dW``: ``dv``, ``dbeta``, and ``dk``/``dg`` completed from the partial ones of the output and state terms.

    Three passes over the chunk's rows: value blocks (``dv``, and ``dT`` from ``U``), key blocks (``dT`` from
    ``W``), then ``dM`` and key blocks again (``dk``, recomputing ``T^T dW``), so that only ``[BT, BK]`` /
    ``[BT, BV]`` tiles are live besides the ``[BT, BT]`` ones."""
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    bos, seq_len, i_t = _chunk_rows(cu_seqlens, chunk_indices, i_c)
    row0 = i_t * BT
    o_t = tl.arange(0, BT)

    b_beta = _per_token(beta, bos, seq_len, i_h, H, row0, BT)
    if USE_G:
        b_b, _ = _gate_local(gc, bos, seq_len, i_h, H, row0, BT)
        b_ekb = tl.exp(b_b)
    else:
        b_ekb = tl.full([BT], 1., dtype=tl.float32)
    b_Tt = tl.load(_rows_t(Tinv, bos, seq_len, i_h, H, BT, row0, 0, BT, BT), boundary_check=(0, 1),
                   padding_option="zero")
    b_Ttc = b_Tt.to(dw.dtype.element_ty)
    # Through U: d(beta v) = T^T du, dT = du (beta v)^T.
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)
    b_dbeta = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        v0 = i_v * BV
        b_v = tl.load(_rows(v, bos, seq_len, i_h, H, V, row0, v0, BT, BV), boundary_check=(0, 1),
                      padding_option="zero")
        b_du = tl.load(_rows(du, bos, seq_len, i_h, H, V, row0, v0, BT, BV), boundary_check=(0, 1),
                       padding_option="zero").to(b_v.dtype)
        b_dT += _dot(b_du, tl.trans((b_v.to(tl.float32) * b_beta[:, None]).to(b_v.dtype)), IEEE)
        b_dvb = _dot(b_Ttc.to(b_v.dtype), b_du, IEEE)
        b_dbeta += tl.sum(b_dvb * b_v.to(tl.float32), axis=1)
        tl.store(_rows(dv, bos, seq_len, i_h, H, V, row0, v0, BT, BV),
                 (b_dvb * b_beta[:, None]).to(dv.dtype.element_ty), boundary_check=(0, 1))
    # Through W: dT += dW (beta exp(b) k)^T.
    for i_k in range(0, tl.cdiv(K, BK)):
        b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK), boundary_check=(0, 1),
                      padding_option="zero")
        b_dw = tl.load(_rows(dw, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK), boundary_check=(0, 1),
                       padding_option="zero")
        b_dT += _dot(b_dw, tl.trans((b_k.to(tl.float32) * (b_beta * b_ekb)[:, None]).to(b_k.dtype)), IEEE)
    # Through M = tril_strict(beta_i D_ij k_i . k_j): dM = -T^T dT T^T, DM = dM * D.
    b_DM = -_dot_fp32(_dot_fp32(b_Tt, b_dT, IEEE), b_Tt, IEEE)
    if USE_G:
        b_DM *= _decay(b_b, o_t, False)
    else:
        b_DM = tl.where(o_t[:, None] > o_t[None, :], b_DM, 0.)
    b_DMc = b_DM.to(dw.dtype.element_ty)
    b_db = tl.zeros([BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        k0 = i_k * BK
        b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1),
                      padding_option="zero")
        b_dw = tl.load(_rows(dw, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1),
                       padding_option="zero")
        b_kf = b_k.to(tl.float32)
        # d(beta exp(b) k) = T^T dW.
        b_dkw = _dot(b_Ttc, b_dw, IEEE)
        b_dkw_k = tl.sum(b_dkw * b_kf, axis=1) * b_ekb
        b_dk = b_dkw * (b_beta * b_ekb)[:, None]
        # Rows i of M give beta_i (DM k)_i to dk_i, columns j give (DM^T (beta k))_j to dk_j; their dot
        # products with the keys are the dbeta and db terms.
        b_dka = _dot(b_DMc, b_k, IEEE)
        b_dkb = _dot(tl.trans(b_DMc), (b_kf * b_beta[:, None]).to(b_k.dtype), IEEE)
        b_dka_k = tl.sum(b_dka * b_kf, axis=1)
        b_dbeta += b_dkw_k + b_dka_k
        b_db += (b_dkw_k + b_dka_k) * b_beta - tl.sum(b_dkb * b_kf, axis=1)
        b_dk += b_dka * b_beta[:, None] + b_dkb
        b_dk += tl.load(_rows(dk_partial, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1),
                        padding_option="zero").to(tl.float32)
        tl.store(_rows(dk, bos, seq_len, i_h, H, K, row0, k0, BT, BK), b_dk.to(dk.dtype.element_ty),
                 boundary_check=(0, 1))
    o_row = row0 + o_t
    m_row = o_row < seq_len
    tok = (bos + o_row).to(tl.int64) * H + i_h
    tl.store(dbeta + tok, b_dbeta, mask=m_row)
    if USE_G:
        b_dg = tl.cumsum(b_db, axis=0, reverse=True) + tl.load(dg_partial + tok, mask=m_row, other=0.)
        tl.store(dg + tok, b_dg, mask=m_row)


def delta_prepare(k, v, beta, gc, packed):
    """``(Tinv float32 [TT, H, BT], w [TT, H, K], u0 [TT, H, V])``: the per-chunk inverse ``T`` (one row per
    token), ``W = T (beta exp(b) k)`` and ``U = T (beta v)``. One kernel, or (candidates with ``block_v = 0``)
    one for ``T`` and one for ``W`` and ``U`` (``delta_wu``), as fla splits it."""
    TT, H, K = k.shape
    V = v.shape[-1]

    def launch(cfg):
        Tinv = torch.empty(TT, H, CHUNK, dtype=torch.float32, device=k.device)
        w = torch.empty_like(k)
        u0 = torch.empty_like(v)
        fused = cfg.block_v > 0
        Launcher.of(_delta_prepare_kernel)[(packed.num_chunks, H)](
            k, v, beta, gc, Tinv, w, u0, packed.cu_seqlens, packed.chunk_indices, packed.T, H,
            K=K, V=V, BT=CHUNK, BK=_block(K, 256), BV=_block(V, cfg.block_v), USE_G=gc is not None,
            IEEE=k.dtype == torch.float32, WU=fused, VARLEN=packed.varlen, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
        if not fused:
            w, u0 = delta_wu(k, v, beta, gc, Tinv, packed)
        return Tinv, w, u0
    return tuning.run("delta.prepare", _key(k, v, gc is not None), launch)


def delta_wu(k, v, beta, gc, Tinv, packed):
    """``(w [TT, H, K], u0 [TT, H, V])``: ``W = T (beta exp(b) k)`` and ``U = T (beta v)`` from the stored ``T``."""
    TT, H, K = k.shape
    V = v.shape[-1]

    def launch(cfg):
        w, u0 = torch.empty_like(k), torch.empty_like(v)
        Launcher.of(_delta_wu_kernel)[(packed.num_chunks, H)](
            k, v, beta, gc, Tinv, w, u0, packed.cu_seqlens, packed.chunk_indices, packed.T, H,
            K=K, V=V, BT=CHUNK, BK=_block(K, cfg.block_k), BV=_block(V, cfg.block_v), USE_G=gc is not None,
            IEEE=k.dtype == torch.float32, VARLEN=packed.varlen, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return w, u0
    return tuning.run("delta.wu", _key(k, v, gc is not None), launch)


def delta_states(k, w, u0, gc, initial_state, output_final_state, packed):
    """``(h [NT, H, K, V], u [TT, H, V], final_state float32 or None)``: the states entering every chunk,
    the values actually written ``u = U - W S`` and the final state."""
    TT, H, K = k.shape
    V = u0.shape[-1]
    N = packed.num_sequences

    def launch(cfg):
        BV = _block(V, cfg.block_v)
        h = torch.empty(packed.num_chunks, H, K, V, dtype=_state_dtype(k.dtype), device=k.device)
        u = torch.empty_like(u0)
        ht = torch.empty(N, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
        Launcher.of(_delta_states_kernel)[(triton.cdiv(V, BV), N * H)](
            k, w, u0, u, gc, h, initial_state, ht, packed.cu_seqlens, packed.chunk_offsets, packed.T, H,
            K=K, V=V, BT=CHUNK, BK=_block(K, 256), BV=BV, USE_G=gc is not None, USE_H0=initial_state is not None,
            STORE_HT=output_final_state, IEEE=k.dtype == torch.float32, WHILE_LOOP=_INTERPRETING,
            VARLEN=packed.varlen, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return h, u, ht
    return tuning.run("delta.state", _key(k, u0, gc is not None), launch)


def delta_rule_forward(q, k, v, beta, g, scale, initial_state, output_final_state, packed):
    """Packed ``[TT, H, D]`` inputs, ``beta``/``g`` float32 ``[TT, H]`` (``g`` may be None).
    Returns ``(o, final_state, saved)`` with ``saved`` the tensors the backward reuses
    ``(Tinv, w, u, h, gc)``, ``gc`` the chunk-local cumulative log-decay (None without a gate)."""
    gc = None if g is None else chunk_local_cumsum(g, packed)
    Tinv, w, u0 = delta_prepare(k, v, beta, gc, packed)
    h, u, ht = delta_states(k, w, u0, gc, initial_state, output_final_state, packed)
    o = chunk_output(q, k, u, gc, h, scale, packed, kernel="delta.output")
    return o, ht, (Tinv, w, u, h, gc)


def delta_state_grads(q, k, w, gc, do, h, du_attn, dht, scale, need_dh0, packed):
    """Walk the chunks backwards: ``(dh [NT, H, K, V], dh0 or None, <S, dS'> per chunk and head (gated; else
    None), du [TT, H, V])`` with ``du = A^T do + (exp(b_C - b) k) dS'`` in ``do``'s dtype (``du_attn`` holds
    ``A^T do``; it is only read, so the launch configuration can be timed)."""
    TT, H, K = q.shape
    V = do.shape[-1]
    N = packed.num_sequences

    def launch(cfg):
        BV = _block(V, cfg.block_v)
        NV = triton.cdiv(V, BV)
        dh = torch.empty(packed.num_chunks, H, K, V, dtype=_state_dtype(q.dtype), device=q.device)
        du = torch.empty_like(do)
        hdh = torch.empty(packed.num_chunks, H, NV, dtype=torch.float32, device=q.device) if gc is not None else None
        dh0 = torch.empty(N, H, K, V, dtype=torch.float32, device=q.device) if need_dh0 else None
        Launcher.of(_delta_state_grads_kernel)[(NV, N * H)](
            q, k, w, gc, do, h, du_attn, du, dh, hdh, dht, dh0, packed.cu_seqlens, packed.chunk_offsets, scale, H,
            K=K, V=V, BT=CHUNK, BK=_block(K, 256), BV=BV, USE_G=gc is not None, USE_DHT=dht is not None,
            STORE_DH0=need_dh0, IEEE=q.dtype == torch.float32, WHILE_LOOP=_INTERPRETING,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return dh, dh0, hdh, du
    dh, dh0, hdh, du = tuning.run("delta.state_grad", _key(q, do, gc is not None), launch)
    return dh, dh0, None if hdh is None else hdh.sum(-1), du


def delta_dqk(q, k, u, gc, h, do, du, dh, hdh, scale, packed):
    """``(dq, dk_partial, dW, dg_partial float32 or None)``: ``dq``, the output and state terms of ``dk`` and
    ``dg`` (simple GLA's with ``v := u``; ``hdh``: ``<S, dS'>`` per chunk and head) and ``dW = -du S^T``, all
    ``[TT, H, K]`` in ``k``'s dtype."""
    TT, H, K = q.shape
    V = u.shape[-1]

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        NK = triton.cdiv(K, BK)
        dq, dk, dw = torch.empty_like(q), torch.empty_like(k), torch.empty_like(k)
        dg_parts = torch.empty(NK, TT, H, dtype=torch.float32, device=q.device) if gc is not None else None
        Launcher.of(_chunk_dqk_kernel)[(NK, packed.num_chunks, H)](
            q, k, u, gc, h, do, dh, hdh, dq, dk, dg_parts, packed.cu_seqlens, packed.chunk_indices, scale, TT,
            packed.T, H, K=K, V=V, BT=CHUNK, BK=BK, BV=BV, USE_G=gc is not None, IEEE=q.dtype == torch.float32,
            VARLEN=packed.varlen, du=du, dw=dw, DW=True, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return dq, dk, dw, dg_parts
    dq, dk, dw, dg_parts = tuning.run("delta.dqk", _key(q, u, gc is not None), launch)
    return dq, dk, dw, None if dg_parts is None else dg_parts.sum(0)


def delta_wy_grads(k, v, beta, gc, Tinv, du, dw, dk_partial, dg_partial, packed):
    """``(dk, dv, dbeta float32, dg float32 or None)`` through ``U``, ``W`` and ``T``, completing the
    partial ``dk``/``dg`` of the output and state terms."""
    TT, H, K = k.shape
    V = v.shape[-1]

    def launch(cfg):
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        dbeta = torch.empty(TT, H, dtype=torch.float32, device=k.device)
        dg = torch.empty(TT, H, dtype=torch.float32, device=k.device) if gc is not None else None
        Launcher.of(_delta_wy_grads_kernel)[(packed.num_chunks, H)](
            k, v, beta, gc, Tinv, du, dw, dk_partial, dg_partial, dk, dv, dbeta, dg,
            packed.cu_seqlens, packed.chunk_indices, H,
            K=K, V=V, BT=CHUNK, BK=_block(K, cfg.block_k), BV=_block(V, cfg.block_v), USE_G=gc is not None,
            IEEE=k.dtype == torch.float32, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return dk, dv, dbeta, dg
    return tuning.run("delta.wy_grad", _key(k, v, gc is not None), launch)


def delta_rule_backward(q, k, v, beta, saved, do, dht, scale, need_dh0, packed):
    """Gradients ``(dq, dk, dv, dbeta, dg or None, dh0 or None)``; ``saved`` from ``delta_rule_forward``.
    Intermediates between the kernels (``A^T do``, ``du``, ``dW``, partial ``dk``) are kept in the input
    dtype, as fla does; every product accumulates in float32."""
    Tinv, w, u, h, gc = saved
    du_attn = chunk_dv(q, k, gc, do, None, scale, packed, kernel="delta.attn_dv")
    dh, dh0, hdh, du = delta_state_grads(q, k, w, gc, do, h, du_attn, dht, scale, need_dh0, packed)
    dq, dk_partial, dw, dg_partial = delta_dqk(q, k, u, gc, h, do, du, dh, hdh, scale, packed)
    dk, dv, dbeta, dg = delta_wy_grads(k, v, beta, gc, Tinv, du, dw, dk_partial, dg_partial, packed)
    return dq, dk, dv, dbeta, dg, dh0


class DeltaRuleFunction(torch.autograd.Function):
    """Autograd wrapper over the delta-rule kernels; inputs packed ``[TT, H, D]``, contiguous."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, scale, initial_state, output_final_state, packed):
        o, ht, saved = delta_rule_forward(q, k, v, beta, g, scale, initial_state, output_final_state, packed)
        ctx.save_for_backward(q, k, v, beta, *saved)
        ctx.scale = scale
        ctx.packed = packed
        ctx.has_initial_state = initial_state is not None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, *saved = ctx.saved_tensors
        dq, dk, dv, dbeta, dg, dh0 = delta_rule_backward(
            q, k, v, beta, saved, do.contiguous(), None if dht is None else dht.contiguous(), ctx.scale,
            ctx.has_initial_state, ctx.packed)
        return dq, dk, dv, dbeta, dg, None, dh0, None, None


def chunk_gated_delta_rule_triton(q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens):
    """``[B, T, H, D]`` entry point; ``g`` ``[B, T, H]`` or None (plain delta rule); ``beta`` ``[B, T, H]``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    packed = packed_chunks(B, T, CHUNK, q.device, cu_seqlens)
    flat = [x.reshape(B * T, H, -1).contiguous() for x in (q, k, v)]
    bf = beta.float().reshape(B * T, H).contiguous()
    gf = None if g is None else g.float().reshape(B * T, H).contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    o, ht = DeltaRuleFunction.apply(*flat, bf, gf, scale, h0, output_final_state, packed)
    return o.view(B, T, H, V), ht
