"""Chunked Triton kernels of gated linear attention (GLA: one log-decay per key channel), fwd and bwd.

The simple-GLA scheme of ``simple_gla.py`` with the scalar cumulative decay ``b`` replaced by one per
key channel (``b[t, c]``). Intra-chunk scores ``A_ij = scale * sum_c q_ic k_jc exp(b_ic - b_jc)``
(``i >= j``) are formed as ``(q * exp(b - r)) @ (k * exp(r - b))^T`` with ``r`` the cumulative decay
at the middle row of the chunk, so each factor's exponent spans at most half a chunk. This needs
``|b_i - r| < ~80`` (an average log-decay above about -2.5 per token): stronger gates overflow.
The gate gradient per channel is the local reverse cumulative sum of ``q . dq - k . dk`` plus
``<S_leaving[c, :], dS'[c, :]>``, as in ``simple_gla.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .simple_gla import (_INTERPRETING, PackedChunks, _block, _dot, _dqk_partials, _rows, _state,
                         _state_dtype, gated_chunk_function, packed_chunks)

KERNEL_CONFIG = {
    "chunk": 64,
    "state_block_k": 64,
    "state_block_v": 32,
    "state_warps": 4,
    "state_stages": 3,
    "out_block_k": 64,
    "out_block_v": 64,
    "out_warps": 8,
    "out_stages": 2,
    "dv_block_k": 64,
    "dv_block_v": 64,
    "dv_warps": 8,
    "dqk_block_k": 64,
    "dqk_block_v": 64,
    "dqk_warps": 8,
    "grad_stages": 2,
}


@triton.jit
def _wide(x, dtype: tl.constexpr, WIDE: tl.constexpr):
    """Operand of a gate-rescaled product: float32 when ``WIDE`` (float16 inputs, whose range the
    rescaling factors can exceed), else the input dtype."""
    if WIDE:
        return x
    else:
        return x.to(dtype)


@triton.jit
def _gates(g, bos, seq_len, i_h, H, K: tl.constexpr, row0, k0, BT: tl.constexpr, BK: tl.constexpr):
    """Cumulative log-decay ``b [BT, BK]`` of a chunk (padded rows repeat the last), its last row and
    its middle row (the reference ``r``)."""
    b_g = tl.load(_rows(g, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1),
                  padding_option="zero").to(tl.float32)
    b_b = tl.cumsum(b_g, axis=0)
    o_t = tl.arange(0, BT)
    b_ref = tl.sum(tl.where(o_t[:, None] == BT // 2, b_b, 0.), axis=0)
    return b_b, tl.sum(b_g, axis=0), b_ref


@triton.jit
def _gla_state_step(k, v, g, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, k0, v0,
                    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    IEEE: tl.constexpr):
    tl.store(_state(h, first_chunk + i_t, i_h, H, K, V, k0, v0, BK, BV), b_h.to(h.dtype.element_ty),
             boundary_check=(0, 1))
    b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, i_t * BT, k0, BT, BK), boundary_check=(0, 1),
                  padding_option="zero")
    b_v = tl.load(_rows(v, bos, seq_len, i_h, H, V, i_t * BT, v0, BT, BV), boundary_check=(0, 1),
                  padding_option="zero")
    b_b, b_last, _ = _gates(g, bos, seq_len, i_h, H, K, i_t * BT, k0, BT, BK)
    b_h *= tl.exp(b_last)[:, None]
    b_kt = tl.trans((b_k.to(tl.float32) * tl.exp(b_last[None, :] - b_b)).to(b_v.dtype))
    b_h += _dot(b_kt, b_v, IEEE)
    return b_h


@triton.jit
def _gla_states_kernel(k, v, g, h, h0, ht, cu_seqlens, chunk_offsets, H,
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
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(_state(h0, i_n, i_h, H, K, V, k0, v0, BK, BV), boundary_check=(0, 1),
                       padding_option="zero").to(tl.float32)
    if WHILE_LOOP:
        i_t = 0
        while i_t < n_chunks:
            b_h = _gla_state_step(k, v, g, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, k0, v0,
                                  K, V, BT, BK, BV, IEEE)
            i_t += 1
    else:
        for i_t in range(0, n_chunks):
            b_h = _gla_state_step(k, v, g, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, k0, v0,
                                  K, V, BT, BK, BV, IEEE)
    if STORE_HT:
        tl.store(_state(ht, i_n, i_h, H, K, V, k0, v0, BK, BV), b_h, boundary_check=(0, 1))


@triton.jit
def _gla_output_kernel(q, k, v, g, h, o, cu_seqlens, chunk_indices, scale, H,
                       K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       IEEE: tl.constexpr, WIDE: tl.constexpr):
    i_v = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    i_n = tl.load(chunk_indices + i_c * 2)
    i_t = tl.load(chunk_indices + i_c * 2 + 1)
    bos = tl.load(cu_seqlens + i_n)
    seq_len = tl.load(cu_seqlens + i_n + 1) - bos
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
        b_b, _, b_ref = _gates(g, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK)
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
def _gla_state_grad_step(q, do, g, h, dh, hdh, b_dh, i_t, bos, seq_len, first_chunk, i_h, H, scale, k0, v0, i_v,
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
    b_b, b_last, _ = _gates(g, bos, seq_len, i_h, H, K, i_t * BT, k0, BT, BK)
    b_dh *= tl.exp(b_last)[:, None]
    b_qt = tl.trans((b_q.to(tl.float32) * tl.exp(b_b) * scale).to(b_do.dtype))
    b_dh += _dot(b_qt, b_do, IEEE)
    return b_dh


@triton.jit
def _gla_state_grads_kernel(q, do, g, h, dh, hdh, dht, dh0, cu_seqlens, chunk_offsets, scale, H,
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
            b_dh = _gla_state_grad_step(q, do, g, h, dh, hdh, b_dh, i_t, bos, seq_len, first_chunk, i_h, H, scale,
                                        k0, v0, i_v, NV, K, V, BT, BK, BV, IEEE)
            i_t -= 1
    else:
        for i_r in range(0, n_chunks):
            b_dh = _gla_state_grad_step(q, do, g, h, dh, hdh, b_dh, n_chunks - 1 - i_r, bos, seq_len, first_chunk,
                                        i_h, H, scale, k0, v0, i_v, NV, K, V, BT, BK, BV, IEEE)
    if STORE_DH0:
        tl.store(_state(dh0, i_n, i_h, H, K, V, k0, v0, BK, BV), b_dh, boundary_check=(0, 1))


@triton.jit
def _gla_dv_kernel(q, k, g, do, dh, dv, cu_seqlens, chunk_indices, scale, H,
                   K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   IEEE: tl.constexpr, WIDE: tl.constexpr):
    """``dv = A^T @ do + (exp(b_C - b) * k) @ dS'``."""
    i_v = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    i_n = tl.load(chunk_indices + i_c * 2)
    i_t = tl.load(chunk_indices + i_c * 2 + 1)
    bos = tl.load(cu_seqlens + i_n)
    seq_len = tl.load(cu_seqlens + i_n + 1) - bos
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
        b_b, b_last, b_ref = _gates(g, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK)
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
def _gla_dqk_kernel(q, k, v, g, h, do, dh, hdh, dq, dk, dg, cu_seqlens, chunk_indices, scale, H,
                    K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    IEEE: tl.constexpr, WIDE: tl.constexpr):
    """``dq``, ``dk`` and ``dg`` of one chunk, head and block of key channels."""
    i_k = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    i_n = tl.load(chunk_indices + i_c * 2)
    i_t = tl.load(chunk_indices + i_c * 2 + 1)
    bos = tl.load(cu_seqlens + i_n)
    seq_len = tl.load(cu_seqlens + i_n + 1) - bos
    k0 = i_k * BK
    row0 = i_t * BT

    b_dq, b_dk, b_dA = _dqk_partials(v, do, h, dh, bos, seq_len, i_c, i_h, H, row0, k0, K, V, BT, BK, BV, IEEE)

    b_q = tl.load(_rows(q, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1), padding_option="zero")
    b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1), padding_option="zero")
    b_b, b_last, b_ref = _gates(g, bos, seq_len, i_h, H, K, row0, k0, BT, BK)
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


def gla_forward(q, k, v, g, scale, initial_state, output_final_state, packed: PackedChunks):
    """q, k, g: ``[TT, H, K]`` (g float32); v: ``[TT, H, V]``; contiguous. Returns ``(o, h, final_state)``."""
    TT, H, K = q.shape
    V = v.shape[-1]
    cfg = KERNEL_CONFIG
    BT = cfg["chunk"]
    ieee = q.dtype == torch.float32
    wide = q.dtype == torch.float16
    N = packed.num_sequences
    h = torch.empty(packed.num_chunks, H, K, V, dtype=_state_dtype(q.dtype), device=q.device)
    ht = torch.empty(N, H, K, V, dtype=torch.float32, device=q.device) if output_final_state else None
    BK, BV = _block(K, cfg["state_block_k"]), _block(V, cfg["state_block_v"])
    _gla_states_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)](
        k, v, g, h, initial_state, ht, packed.cu_seqlens, packed.chunk_offsets, H,
        K=K, V=V, BT=BT, BK=BK, BV=BV, USE_H0=initial_state is not None, STORE_HT=output_final_state,
        IEEE=ieee, WHILE_LOOP=_INTERPRETING, num_warps=cfg["state_warps"], num_stages=cfg["state_stages"])
    o = torch.empty(TT, H, V, dtype=q.dtype, device=q.device)
    BK, BV = _block(K, cfg["out_block_k"]), _block(V, cfg["out_block_v"])
    _gla_output_kernel[(triton.cdiv(V, BV), packed.num_chunks, H)](
        q, k, v, g, h, o, packed.cu_seqlens, packed.chunk_indices, scale, H,
        K=K, V=V, BT=BT, BK=BK, BV=BV, IEEE=ieee, WIDE=wide, num_warps=cfg["out_warps"], num_stages=cfg["out_stages"])
    return o, h, ht


def gla_backward(q, k, v, g, h, do, dht, scale, need_dh0: bool, packed: PackedChunks):
    """Gradients ``(dq, dk, dv, dg float32 [TT, H, K], dh0 or None)``."""
    TT, H, K = q.shape
    V = v.shape[-1]
    cfg = KERNEL_CONFIG
    BT = cfg["chunk"]
    ieee = q.dtype == torch.float32
    wide = q.dtype == torch.float16
    N = packed.num_sequences
    dh = torch.empty(packed.num_chunks, H, K, V, dtype=_state_dtype(q.dtype), device=q.device)
    dh0 = torch.empty(N, H, K, V, dtype=torch.float32, device=q.device) if need_dh0 else None
    BK, BV = _block(K, cfg["state_block_k"]), _block(V, cfg["state_block_v"])
    NV = triton.cdiv(V, BV)
    hdh = torch.empty(packed.num_chunks, H, NV, K, dtype=torch.float32, device=q.device)
    _gla_state_grads_kernel[(triton.cdiv(K, BK), NV, N * H)](
        q, do, g, h, dh, hdh, dht, dh0, packed.cu_seqlens, packed.chunk_offsets, scale, H,
        K=K, V=V, BT=BT, BK=BK, BV=BV, USE_DHT=dht is not None, STORE_DH0=need_dh0, IEEE=ieee,
        WHILE_LOOP=_INTERPRETING, num_warps=cfg["state_warps"], num_stages=cfg["state_stages"])
    dv = torch.empty_like(v)
    BK, BV = _block(K, cfg["dv_block_k"]), _block(V, cfg["dv_block_v"])
    _gla_dv_kernel[(triton.cdiv(V, BV), packed.num_chunks, H)](
        q, k, g, do, dh, dv, packed.cu_seqlens, packed.chunk_indices, scale, H,
        K=K, V=V, BT=BT, BK=BK, BV=BV, IEEE=ieee, WIDE=wide, num_warps=cfg["dv_warps"], num_stages=cfg["grad_stages"])
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dg = torch.empty(TT, H, K, dtype=torch.float32, device=q.device)
    BK, BV = _block(K, cfg["dqk_block_k"]), _block(V, cfg["dqk_block_v"])
    _gla_dqk_kernel[(triton.cdiv(K, BK), packed.num_chunks, H)](
        q, k, v, g, h, do, dh, hdh.sum(2), dq, dk, dg, packed.cu_seqlens, packed.chunk_indices, scale, H,
        K=K, V=V, BT=BT, BK=BK, BV=BV, IEEE=ieee, WIDE=wide, num_warps=cfg["dqk_warps"], num_stages=cfg["grad_stages"])
    return dq, dk, dv, dg, dh0


GLAFunction = gated_chunk_function("GLAFunction", gla_forward, gla_backward)


def chunk_gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens):
    """``[B, T, H, D]`` entry point; ``g``: ``[B, T, H, K]`` log-decay."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    packed = packed_chunks(B, T, KERNEL_CONFIG["chunk"], q.device, cu_seqlens)
    flat = [x.reshape(B * T, H, -1).contiguous() for x in (q, k, v)]
    gf = g.float().reshape(B * T, H, K).contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    o, ht = GLAFunction.apply(*flat, gf, scale, h0, output_final_state, packed)
    return o.view(B, T, H, V), ht
