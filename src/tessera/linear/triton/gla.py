"""Chunked Triton kernels of gated linear attention (GLA: one log-decay per key channel), fwd and bwd.

The simple-GLA scheme of ``simple_gla.py`` with the scalar cumulative decay ``b`` replaced by one per
key channel (``b[t, c]``). Intra-chunk scores ``A_ij = scale * sum_c q_ic k_jc exp(b_ic - b_jc)``
(``i >= j``) are formed as ``(q * exp(b - r)) @ (k * exp(r - b))^T`` with ``r`` the cumulative decay
at the middle row of the chunk, so each factor's exponent spans at most half a chunk. This needs
``|b_i - r| < ~80`` (an average log-decay above about -2.5 per token): stronger gates overflow.
The gate gradient per channel is the local reverse cumulative sum of ``q . dq - k . dk`` plus
``<S_leaving[c, :], dS'[c, :]>``, as in ``simple_gla.py``. As there, the chunk-local cumulative
log-decay (float32 ``[TT, H, K]``) is computed once per call by a parallel kernel and the kernels'
``gc`` argument is that tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...kernels.triton.launcher import Launcher
from . import tuning
from .simple_gla import (_INTERPRETING, CHUNK, PackedChunks, _block, _chunk_rows, _dot, _dqk_partials, _initial_state,
                         _rows, _state, _state_dtype, gated_chunk_function, packed_chunks)


@triton.jit
def _wide(x, dtype: tl.constexpr, WIDE: tl.constexpr):
    """Operand of a gate-rescaled product: float32 when ``WIDE`` (float16 inputs, whose range the
    rescaling factors can exceed), else the input dtype."""
    if WIDE:
        return x
    else:
        return x.to(dtype)


@triton.jit
def _gla_cumsum_kernel(g, gc, cu_seqlens, chunk_indices, H, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """``gc[t, h, c]``: cumulative sum of the log-decay ``g[TT, H, K]`` over the tokens of ``t``'s chunk
    up to ``t`` (float32); one program per chunk, head and block of channels."""
    i_c = tl.program_id(0)
    i_h = tl.program_id(1)
    i_k = tl.program_id(2)
    bos, seq_len, i_t = _chunk_rows(cu_seqlens, chunk_indices, i_c)
    b_g = tl.load(_rows(g, bos, seq_len, i_h, H, K, i_t * BT, i_k * BK, BT, BK), boundary_check=(0, 1),
                  padding_option="zero").to(tl.float32)
    tl.store(_rows(gc, bos, seq_len, i_h, H, K, i_t * BT, i_k * BK, BT, BK), tl.cumsum(b_g, axis=0),
             boundary_check=(0, 1))


@triton.jit
def _gates(gc, bos, seq_len, i_h, H, K: tl.constexpr, row0, k0, BT: tl.constexpr, BK: tl.constexpr):
    """Cumulative log-decay ``b [BT, BK]`` of a chunk read from ``gc`` (padded rows repeat the last),
    its last row and its middle row (the reference ``r``)."""
    o_t = tl.arange(0, BT)
    o_k = k0 + tl.arange(0, BK)
    last = tl.minimum(row0 + BT, seq_len) - 1
    b_last = tl.load(gc + ((bos + last).to(tl.int64) * H + i_h) * K + o_k, mask=o_k < K, other=0.)
    b_b = tl.load(_rows(gc, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1),
                  padding_option="zero")
    b_b = tl.where((row0 + o_t < seq_len)[:, None], b_b, b_last[None, :])
    b_ref = tl.sum(tl.where(o_t[:, None] == BT // 2, b_b, 0.), axis=0)
    return b_b, b_last, b_ref


@triton.jit
def _gla_state_step(k, v, gc, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, k0, v0,
                    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    IEEE: tl.constexpr):
    tl.store(_state(h, first_chunk + i_t, i_h, H, K, V, k0, v0, BK, BV), b_h.to(h.dtype.element_ty),
             boundary_check=(0, 1))
    b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, i_t * BT, k0, BT, BK), boundary_check=(0, 1),
                  padding_option="zero")
    b_v = tl.load(_rows(v, bos, seq_len, i_h, H, V, i_t * BT, v0, BT, BV), boundary_check=(0, 1),
                  padding_option="zero")
    b_b, b_last, _ = _gates(gc, bos, seq_len, i_h, H, K, i_t * BT, k0, BT, BK)
    b_h *= tl.exp(b_last)[:, None]
    b_kt = tl.trans((b_k.to(tl.float32) * tl.exp(b_last[None, :] - b_b)).to(b_v.dtype))
    b_h += _dot(b_kt, b_v, IEEE)
    return b_h


@triton.jit
def _gla_states_kernel(k, v, gc, h, h0, ht, cu_seqlens, chunk_offsets, H,
                       K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       USE_H0: tl.constexpr, STORE_HT: tl.constexpr, IEEE: tl.constexpr,
                       WHILE_LOOP: tl.constexpr):
    """Store the state entering every chunk and optionally the final state."""
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_nh = tl.program_id(2)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(cu_seqlens + i_n)
    seq_len = tl.load(cu_seqlens + i_n + 1) - bos
    first_chunk = tl.load(chunk_offsets + i_n)
    n_chunks = tl.cdiv(seq_len, BT)
    k0 = i_k * BK
    v0 = i_v * BV
    b_h = _initial_state(h0, i_n, i_h, H, K, V, k0, v0, BK, BV, USE_H0)
    if WHILE_LOOP:
        i_t = 0
        while i_t < n_chunks:
            b_h = _gla_state_step(k, v, gc, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, k0, v0,
                                  K, V, BT, BK, BV, IEEE)
            i_t += 1
    else:
        for i_t in range(0, n_chunks):
            b_h = _gla_state_step(k, v, gc, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, k0, v0,
                                  K, V, BT, BK, BV, IEEE)
    if STORE_HT:
        tl.store(_state(ht, i_n, i_h, H, K, V, k0, v0, BK, BV), b_h, boundary_check=(0, 1))


@triton.jit
def _gla_output_kernel(q, k, v, gc, h, o, cu_seqlens, chunk_indices, scale, H,
                       K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       IEEE: tl.constexpr, WIDE: tl.constexpr):
    i_v = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    bos, seq_len, i_t = _chunk_rows(cu_seqlens, chunk_indices, i_c)
    v0 = i_v * BV
    row0 = i_t * BT

    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        b_q = tl.load(_rows(q, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK), boundary_check=(0, 1),
                      padding_option="zero")
        b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK), boundary_check=(0, 1),
                      padding_option="zero")
        b_h = tl.load(_state(h, i_c, i_h, H, K, V, i_k * BK, v0, BK, BV), boundary_check=(0, 1),
                      padding_option="zero")
        b_b, _, b_ref = _gates(gc, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK)
        b_qf = b_q.to(tl.float32)
        b_o += _dot((b_qf * tl.exp(b_b)).to(b_q.dtype), b_h.to(b_q.dtype), IEEE)
        b_qr = _wide(b_qf * tl.exp(b_b - b_ref[None, :]), b_q.dtype, WIDE)
        b_kr = _wide(b_k.to(tl.float32) * tl.exp(b_ref[None, :] - b_b), b_q.dtype, WIDE)
        b_A += _dot(b_qr, tl.trans(b_kr), IEEE)
    o_t = tl.arange(0, BT)
    b_A = tl.where(o_t[:, None] >= o_t[None, :], b_A, 0.)
    b_v = tl.load(_rows(v, bos, seq_len, i_h, H, V, row0, v0, BT, BV), boundary_check=(0, 1), padding_option="zero")
    b_o += _dot(b_A.to(b_v.dtype), b_v, IEEE)
    b_o *= scale
    tl.store(_rows(o, bos, seq_len, i_h, H, V, row0, v0, BT, BV), b_o.to(o.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def _gla_state_grad_step(q, do, gc, h, dh, hdh, b_dh, i_t, bos, seq_len, first_chunk, i_h, H, scale, k0, v0, i_v,
                         NV, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                         BV: tl.constexpr, IEEE: tl.constexpr):
    chunk = first_chunk + i_t
    tl.store(_state(dh, chunk, i_h, H, K, V, k0, v0, BK, BV), b_dh.to(dh.dtype.element_ty), boundary_check=(0, 1))
    b_h = tl.load(_state(h, chunk, i_h, H, K, V, k0, v0, BK, BV), boundary_check=(0, 1), padding_option="zero")
    o_k = k0 + tl.arange(0, BK)
    tl.store(hdh + ((chunk.to(tl.int64) * H + i_h) * NV + i_v) * K + o_k, tl.sum(b_h.to(tl.float32) * b_dh, axis=1),
             mask=o_k < K)
    b_q = tl.load(_rows(q, bos, seq_len, i_h, H, K, i_t * BT, k0, BT, BK), boundary_check=(0, 1),
                  padding_option="zero")
    b_do = tl.load(_rows(do, bos, seq_len, i_h, H, V, i_t * BT, v0, BT, BV), boundary_check=(0, 1),
                   padding_option="zero")
    b_b, b_last, _ = _gates(gc, bos, seq_len, i_h, H, K, i_t * BT, k0, BT, BK)
    b_dh *= tl.exp(b_last)[:, None]
    b_qt = tl.trans((b_q.to(tl.float32) * tl.exp(b_b) * scale).to(b_do.dtype))
    b_dh += _dot(b_qt, b_do, IEEE)
    return b_dh


@triton.jit
def _gla_state_grads_kernel(q, do, gc, h, dh, hdh, dht, dh0, cu_seqlens, chunk_offsets, scale, H,
                            K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                            BV: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                            IEEE: tl.constexpr, WHILE_LOOP: tl.constexpr):
    """Store the gradient of the state leaving every chunk and the rows of ``<S, dS'>``."""
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_nh = tl.program_id(2)
    NV = tl.num_programs(1)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(cu_seqlens + i_n)
    seq_len = tl.load(cu_seqlens + i_n + 1) - bos
    first_chunk = tl.load(chunk_offsets + i_n)
    n_chunks = tl.cdiv(seq_len, BT)
    k0 = i_k * BK
    v0 = i_v * BV
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(_state(dht, i_n, i_h, H, K, V, k0, v0, BK, BV), boundary_check=(0, 1),
                        padding_option="zero").to(tl.float32)
    if WHILE_LOOP:
        i_t = n_chunks - 1
        while i_t >= 0:
            b_dh = _gla_state_grad_step(q, do, gc, h, dh, hdh, b_dh, i_t, bos, seq_len, first_chunk, i_h, H, scale,
                                        k0, v0, i_v, NV, K, V, BT, BK, BV, IEEE)
            i_t -= 1
    else:
        for i_r in range(0, n_chunks):
            b_dh = _gla_state_grad_step(q, do, gc, h, dh, hdh, b_dh, n_chunks - 1 - i_r, bos, seq_len, first_chunk,
                                        i_h, H, scale, k0, v0, i_v, NV, K, V, BT, BK, BV, IEEE)
    if STORE_DH0:
        tl.store(_state(dh0, i_n, i_h, H, K, V, k0, v0, BK, BV), b_dh, boundary_check=(0, 1))


@triton.jit
def _gla_dv_kernel(q, k, gc, do, dh, dv, cu_seqlens, chunk_indices, scale, H,
                   K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   IEEE: tl.constexpr, WIDE: tl.constexpr):
    """``dv = A^T @ do + (exp(b_C - b) * k) @ dS'``."""
    i_v = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    bos, seq_len, i_t = _chunk_rows(cu_seqlens, chunk_indices, i_c)
    v0 = i_v * BV
    row0 = i_t * BT
    b_At = tl.zeros([BT, BT], dtype=tl.float32)
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK), boundary_check=(0, 1),
                      padding_option="zero")
        b_q = tl.load(_rows(q, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK), boundary_check=(0, 1),
                      padding_option="zero")
        b_dh = tl.load(_state(dh, i_c, i_h, H, K, V, i_k * BK, v0, BK, BV), boundary_check=(0, 1),
                       padding_option="zero").to(b_k.dtype)
        b_b, b_last, b_ref = _gates(gc, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK)
        b_kf = b_k.to(tl.float32)
        b_kr = _wide(b_kf * tl.exp(b_ref[None, :] - b_b), b_k.dtype, WIDE)
        b_qr = _wide(b_q.to(tl.float32) * tl.exp(b_b - b_ref[None, :]), b_k.dtype, WIDE)
        b_At += _dot(b_kr, tl.trans(b_qr), IEEE)
        b_dv += _dot((b_kf * tl.exp(b_last[None, :] - b_b)).to(b_k.dtype), b_dh, IEEE)
    o_t = tl.arange(0, BT)
    b_At = tl.where(o_t[:, None] <= o_t[None, :], b_At * scale, 0.)
    b_do = tl.load(_rows(do, bos, seq_len, i_h, H, V, row0, v0, BT, BV), boundary_check=(0, 1),
                   padding_option="zero")
    b_dv += _dot(b_At.to(b_do.dtype), b_do, IEEE)
    tl.store(_rows(dv, bos, seq_len, i_h, H, V, row0, v0, BT, BV), b_dv.to(dv.dtype.element_ty),
             boundary_check=(0, 1))


@triton.jit
def _gla_dqk_kernel(q, k, v, gc, h, do, dh, hdh, dq, dk, dg, cu_seqlens, chunk_indices, scale, H,
                    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    IEEE: tl.constexpr, WIDE: tl.constexpr):
    """``dq``, ``dk`` and ``dg`` of one chunk, head and block of key channels."""
    i_k = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    bos, seq_len, i_t = _chunk_rows(cu_seqlens, chunk_indices, i_c)
    k0 = i_k * BK
    row0 = i_t * BT

    b_dq, b_dk, b_dA, _, _ = _dqk_partials(v, do, h, dh, bos, seq_len, i_c, i_h, H, row0, k0, K, V, BT, BK, BV, IEEE)

    b_q = tl.load(_rows(q, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1), padding_option="zero")
    b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1), padding_option="zero")
    b_b, b_last, b_ref = _gates(gc, bos, seq_len, i_h, H, K, row0, k0, BT, BK)
    o_t = tl.arange(0, BT)
    b_dA = _wide(tl.where(o_t[:, None] >= o_t[None, :], b_dA * scale, 0.), b_q.dtype, WIDE)
    b_qf = b_q.to(tl.float32)
    b_kf = b_k.to(tl.float32)
    b_dq *= tl.exp(b_b) * scale
    b_dk *= tl.exp(b_last[None, :] - b_b)
    writers_before = tl.sum(b_kf * b_dk, axis=0)
    b_kr = _wide(b_kf * tl.exp(b_ref[None, :] - b_b), b_q.dtype, WIDE)
    b_qr = _wide(b_qf * tl.exp(b_b - b_ref[None, :]), b_q.dtype, WIDE)
    b_dq += _dot(b_dA, b_kr, IEEE) * tl.exp(b_b - b_ref[None, :])
    b_dk += _dot(tl.trans(b_dA), b_qr, IEEE) * tl.exp(b_ref[None, :] - b_b)
    b_db = b_qf * b_dq - b_kf * b_dk
    o_k = k0 + tl.arange(0, BK)
    leaving = writers_before + tl.exp(b_last) * tl.load(hdh + (i_c.to(tl.int64) * H + i_h) * K + o_k,
                                                        mask=o_k < K, other=0.)
    b_dg = tl.cumsum(b_db, axis=0, reverse=True) + leaving[None, :]
    tl.store(_rows(dg, bos, seq_len, i_h, H, K, row0, k0, BT, BK), b_dg, boundary_check=(0, 1))
    tl.store(_rows(dq, bos, seq_len, i_h, H, K, row0, k0, BT, BK), b_dq.to(dq.dtype.element_ty), boundary_check=(0, 1))
    tl.store(_rows(dk, bos, seq_len, i_h, H, K, row0, k0, BT, BK), b_dk.to(dk.dtype.element_ty), boundary_check=(0, 1))


def _key(q: torch.Tensor, v: torch.Tensor) -> tuple:
    """Tuning key of a launch on packed ``[TT, H, D]`` tensors: heads, head dims, dtype (never a length)."""
    return q.shape[1], q.shape[-1], v.shape[-1], str(q.dtype)


def gla_local_cumsum(g: torch.Tensor, packed: PackedChunks) -> torch.Tensor:
    """Float32 ``[TT, H, K]``: cumulative sums of the log-decay ``g[TT, H, K]`` within each chunk."""
    TT, H, K = g.shape
    gc = torch.empty(TT, H, K, dtype=torch.float32, device=g.device)
    BK = _block(K, 64)
    if packed.num_chunks:
        Launcher.of(_gla_cumsum_kernel)[(packed.num_chunks, H, triton.cdiv(K, BK))](
            g, gc, packed.cu_seqlens, packed.chunk_indices, H, K=K, BT=CHUNK, BK=BK, num_warps=4)
    return gc


def gla_states(k, v, gc, initial_state, output_final_state, packed: PackedChunks):
    """States entering every chunk ``h [NT, H, K, V]`` and the final state (float32, or None)."""
    TT, H, K = k.shape
    V = v.shape[-1]
    N = packed.num_sequences

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        h = torch.empty(packed.num_chunks, H, K, V, dtype=_state_dtype(k.dtype), device=k.device)
        ht = torch.empty(N, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
        Launcher.of(_gla_states_kernel)[(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)](
            k, v, gc, h, initial_state, ht, packed.cu_seqlens, packed.chunk_offsets, H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BV, USE_H0=initial_state is not None, STORE_HT=output_final_state,
            IEEE=k.dtype == torch.float32, WHILE_LOOP=_INTERPRETING, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
        return h, ht
    return tuning.run("gla.state", _key(k, v), launch)


def gla_output(q, k, v, gc, h, scale, packed: PackedChunks):
    """``o [TT, H, V]`` from the states entering every chunk."""
    TT, H, K = q.shape
    V = v.shape[-1]

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        o = torch.empty(TT, H, V, dtype=q.dtype, device=q.device)
        Launcher.of(_gla_output_kernel)[(triton.cdiv(V, BV), packed.num_chunks, H)](
            q, k, v, gc, h, o, packed.cu_seqlens, packed.chunk_indices, scale, H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BV, IEEE=q.dtype == torch.float32, WIDE=q.dtype == torch.float16,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return o
    return tuning.run("gla.output", _key(q, v), launch)


def gla_forward(q, k, v, g, scale, initial_state, output_final_state, packed: PackedChunks):
    """q, k, g: ``[TT, H, K]`` (g float32); v: ``[TT, H, V]``; contiguous. Returns ``(o, h, final_state,
    gc)`` with ``gc`` the chunk-local cumulative log-decay (float32 ``[TT, H, K]``)."""
    gc = gla_local_cumsum(g, packed)
    h, ht = gla_states(k, v, gc, initial_state, output_final_state, packed)
    return gla_output(q, k, v, gc, h, scale, packed), h, ht, gc


def gla_state_grads(q, do, gc, h, dht, scale, need_dh0: bool, packed: PackedChunks):
    """``dh [NT, H, K, V]`` (gradients of the states leaving every chunk), ``dh0`` (or None) and the rows
    of ``<S, dS'>`` per chunk and head (float32 ``[NT, H, K]``)."""
    TT, H, K = q.shape
    V = do.shape[-1]
    N = packed.num_sequences

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        NV = triton.cdiv(V, BV)
        dh = torch.empty(packed.num_chunks, H, K, V, dtype=_state_dtype(q.dtype), device=q.device)
        dh0 = torch.empty(N, H, K, V, dtype=torch.float32, device=q.device) if need_dh0 else None
        hdh = torch.empty(packed.num_chunks, H, NV, K, dtype=torch.float32, device=q.device)
        Launcher.of(_gla_state_grads_kernel)[(triton.cdiv(K, BK), NV, N * H)](
            q, do, gc, h, dh, hdh, dht, dh0, packed.cu_seqlens, packed.chunk_offsets, scale, H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BV, USE_DHT=dht is not None, STORE_DH0=need_dh0,
            IEEE=q.dtype == torch.float32, WHILE_LOOP=_INTERPRETING, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages)
        return dh, dh0, hdh
    dh, dh0, hdh = tuning.run("gla.state_grad", _key(q, do), launch)
    return dh, dh0, hdh.sum(2)


def gla_dv(q, k, gc, do, dh, scale, packed: PackedChunks):
    """``dv [TT, H, V]``."""
    TT, H, K = q.shape
    V = do.shape[-1]

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        dv = torch.empty(TT, H, V, dtype=do.dtype, device=q.device)
        Launcher.of(_gla_dv_kernel)[(triton.cdiv(V, BV), packed.num_chunks, H)](
            q, k, gc, do, dh, dv, packed.cu_seqlens, packed.chunk_indices, scale, H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BV, IEEE=q.dtype == torch.float32, WIDE=q.dtype == torch.float16,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return dv
    return tuning.run("gla.dv", _key(q, do), launch)


def gla_dqk(q, k, v, gc, h, do, dh, hdh, scale, packed: PackedChunks):
    """``dq``, ``dk`` and ``dg`` (float32 ``[TT, H, K]``)."""
    TT, H, K = q.shape
    V = v.shape[-1]

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        dq, dk = torch.empty_like(q), torch.empty_like(k)
        dg = torch.empty(TT, H, K, dtype=torch.float32, device=q.device)
        Launcher.of(_gla_dqk_kernel)[(triton.cdiv(K, BK), packed.num_chunks, H)](
            q, k, v, gc, h, do, dh, hdh, dq, dk, dg, packed.cu_seqlens, packed.chunk_indices, scale, H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BV, IEEE=q.dtype == torch.float32, WIDE=q.dtype == torch.float16,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return dq, dk, dg
    return tuning.run("gla.dqk", _key(q, v), launch)


def gla_backward(q, k, v, gc, h, do, dht, scale, need_dh0: bool, packed: PackedChunks):
    """Gradients ``(dq, dk, dv, dg float32 [TT, H, K], dh0 or None)``; ``gc`` as returned by ``gla_forward``."""
    dh, dh0, hdh = gla_state_grads(q, do, gc, h, dht, scale, need_dh0, packed)
    dv = gla_dv(q, k, gc, do, dh, scale, packed)
    dq, dk, dg = gla_dqk(q, k, v, gc, h, do, dh, hdh, scale, packed)
    return dq, dk, dv, dg, dh0


GLAFunction = gated_chunk_function("GLAFunction", gla_forward, gla_backward)


def chunk_gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens):
    """``[B, T, H, D]`` entry point; ``g``: ``[B, T, H, K]`` log-decay."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    packed = packed_chunks(B, T, CHUNK, q.device, cu_seqlens)
    flat = [x.reshape(B * T, H, -1).contiguous() for x in (q, k, v)]
    gf = g.float().reshape(B * T, H, K).contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    o, ht = GLAFunction.apply(*flat, gf, scale, h0, output_final_state, packed)
    return o.view(B, T, H, V), ht
