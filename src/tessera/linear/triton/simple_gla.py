"""Chunked Triton kernels of scalar-gated linear attention (simple GLA), forward and backward.

Serves ``simple_gla``, ``lightning_attn`` (constant gate per head) and ``linear_attention`` (no gate).
Math per chunk of ``BT`` tokens with local cumulative log-decay ``b`` (``b_C`` its last value) and
incoming state ``S`` (``[K, V]``):
    o = scale * (exp(b) * q) @ S + A @ v,   A = scale * tril(exp(b_i - b_j) q_i . k_j)
    S' = exp(b_C) S + (exp(b_C - b) * k)^T @ v
Backward, with ``dS'`` the gradient of the chunk's outgoing state:
    dS = exp(b_C) dS' + scale * (exp(b) * q)^T @ do
    dq = scale * exp(b) * (do @ S^T) + dA @ k,   dk = dA^T @ q + exp(b_C - b) * (v @ dS'^T)
    dv = A^T @ do + (exp(b_C - b) * k) @ dS',    dA = scale * tril(exp(b_i - b_j) do_i . v_j)
Gate gradient. A pair (reader ``i``, writer ``j``) is weighted by ``exp(g_{j+1} + ... + g_i)``, so
``dg_s`` sums the pair terms over pairs with ``j < s <= i``. With ``dB_t = q_t . dq_t - k_t . dk_t``
this is, for ``s`` in a chunk,
    dg_s = sum_{t >= s in the chunk} dB_t + <S_leaving, dS'>,
    <S_leaving, dS'> = exp(b_C) <S, dS'> + sum_{j in the chunk} k_j . dk_inter_j
(``dk_inter`` the state term of ``dk``): the pairs reaching past the chunk are summed through the
state, so no reverse cumulative sum runs over the whole sequence (that form loses accuracy as ``T``
grows, its terms cancelling over long spans).

Kernels see packed sequences: tokens ``[TT, H, D]`` (``TT = B * T``), ``cu_seqlens`` (``[N + 1]``),
``chunk_offsets`` (global index of each sequence's first chunk, ``[N + 1]``) and ``chunk_indices``
(``(sequence, chunk within it)`` for every global chunk, ``[NT, 2]``). States are accumulated in
float32; the per-chunk states kept between passes are stored in the input dtype for bf16 inputs (as
fla does) and in float32 otherwise. Key and value channels are split in blocks (``BK``, ``BV``) so
that the sequential state passes run ``N * H * (K / BK) * (V / BV)`` programs.

The local cumulative log-decay ``b`` is computed once per call by a parallel kernel
(``chunk_local_cumsum``, float32 ``[TT, H]``) and read by every other kernel, so the sequential state
passes carry no cumulative sum in their loops. Block sizes, warps and stages of each kernel are
chosen among a few candidates per head-dim / dtype key (``tuning.py``).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ...kernels.triton.launcher import Launcher
from . import tuning

# The interpreter cannot bound a ``for`` loop by a loaded scalar; compiled kernels keep ``for`` (pipelined).
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Tokens per chunk (BT) of every linear-attention kernel.
CHUNK = 64

# Where simple GLA's backward sums ``<S, dS'>`` (the state term of the gate gradient). True: in the dq / dk
# kernel, from the ``h`` and ``dh`` blocks it loads anyway (as fla does), for bf16 inputs from ``dh``
# rounded to bf16. False: in the sequential state-gradient pass, from its float32 accumulator, at the
# cost of one more load of ``h``, a block reduction and a store in every step of the recurrence, and a
# sum over the blocks after it.
STATE_DOT_IN_DQK = True


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _chunk_rows(cu_seqlens, chunk_indices, i_c):
    """``(bos, seq_len, i_t)`` of packed chunk ``i_c``: the first row and the length of its sequence, and
    its chunk number in that sequence (``chunk_indices`` holds ``(sequence, chunk)`` pairs)."""
    i_n = tl.load(chunk_indices + i_c * 2)
    i_t = tl.load(chunk_indices + i_c * 2 + 1)
    bos = tl.load(cu_seqlens + i_n)
    return bos, tl.load(cu_seqlens + i_n + 1) - bos, i_t


@triton.jit
def _chunk_coords(cu_seqlens, chunk_indices, i_c, T, BT: tl.constexpr, VARLEN: tl.constexpr):
    """``_chunk_rows`` of packed chunk ``i_c``; without ``VARLEN`` every sequence has ``T`` tokens and
    nothing is loaded (sequence ``i_c // cdiv(T, BT)``)."""
    if VARLEN:
        bos, seq_len, i_t = _chunk_rows(cu_seqlens, chunk_indices, i_c)
    else:
        per_seq = tl.cdiv(T, BT)
        i_n = i_c // per_seq
        bos, seq_len, i_t = i_n * T, T, i_c - i_n * per_seq
    return bos, seq_len, i_t


@triton.jit
def _seq_coords(cu_seqlens, chunk_offsets, i_n, T, BT: tl.constexpr, VARLEN: tl.constexpr):
    """``(bos, seq_len, first_chunk)`` of sequence ``i_n``: its first row, length and first global chunk
    (computed from ``T`` without ``VARLEN``, as in ``_chunk_coords``)."""
    if VARLEN:
        bos = tl.load(cu_seqlens + i_n)
        seq_len = tl.load(cu_seqlens + i_n + 1) - bos
        first_chunk = tl.load(chunk_offsets + i_n)
    else:
        bos, seq_len, first_chunk = i_n * T, T, i_n * tl.cdiv(T, BT)
    return bos, seq_len, first_chunk


@triton.jit
def _rows(x, bos, seq_len, i_h, H, D: tl.constexpr, row0, col0, BR: tl.constexpr, BD: tl.constexpr):
    """Block pointer to rows ``row0 : row0 + BR`` of one sequence, channels ``col0 : col0 + BD``, of ``x[TT, H, D]``."""
    return tl.make_block_ptr(x + (bos.to(tl.int64) * H + i_h) * D, (seq_len, D), (H * D, 1),
                             (row0, col0), (BR, BD), (1, 0))


@triton.jit
def _rows_t(x, bos, seq_len, i_h, H, D: tl.constexpr, row0, col0, BR: tl.constexpr, BD: tl.constexpr):
    """``_rows`` transposed: a ``[BD, BR]`` block (channels by rows)."""
    return tl.make_block_ptr(x + (bos.to(tl.int64) * H + i_h) * D, (D, seq_len), (1, H * D),
                             (col0, row0), (BD, BR), (0, 1))


@triton.jit
def _load_rows(x, bos, seq_len, i_h, H, D: tl.constexpr, row0, col0, BR: tl.constexpr, BD: tl.constexpr,
               TRANS: tl.constexpr = False):
    """Rows ``row0 : row0 + BR`` of one sequence, channels ``col0 : col0 + BD``, of ``x[TT, H, D]`` (zeros
    outside): ``[BR, BD]``, or ``[BD, BR]`` with ``TRANS``. Plain masked pointers: fewer address
    instructions than a block pointer's two-sided bounds checks."""
    o_r = row0 + tl.arange(0, BR)
    o_d = col0 + tl.arange(0, BD)
    base = x + (bos.to(tl.int64) * H + i_h) * D
    if TRANS:
        ptrs = base + o_d[:, None] + o_r.to(tl.int64)[None, :] * (H * D)
        if D % BD == 0:
            mask = (o_r < seq_len)[None, :]
        else:
            mask = (o_d < D)[:, None] & (o_r < seq_len)[None, :]
    else:
        ptrs = base + o_r.to(tl.int64)[:, None] * (H * D) + o_d[None, :]
        if D % BD == 0:
            mask = (o_r < seq_len)[:, None]
        else:
            mask = (o_r < seq_len)[:, None] & (o_d < D)[None, :]
    return tl.load(ptrs, mask=mask, other=0.)


@triton.jit
def _state(x, chunk, i_h, H, K: tl.constexpr, V: tl.constexpr, k0, v0, BK: tl.constexpr, BV: tl.constexpr):
    """Block pointer to ``x[chunk, i_h, k0 : k0 + BK, v0 : v0 + BV]`` of a ``[NT, H, K, V]`` state buffer."""
    return tl.make_block_ptr(x + (chunk.to(tl.int64) * H + i_h) * K * V, (K, V), (V, 1), (k0, v0), (BK, BV), (1, 0))


@triton.jit
def _initial_state(h0, i_n, i_h, H, K: tl.constexpr, V: tl.constexpr, k0, v0, BK: tl.constexpr, BV: tl.constexpr,
                   USE_H0: tl.constexpr):
    """Float32 ``[BK, BV]`` block ``k0, v0`` of sequence ``i_n``'s initial state ``h0 [N, H, K, V]`` (zeros
    without ``USE_H0``): where a state pass starts."""
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_h += tl.load(_state(h0, i_n, i_h, H, K, V, k0, v0, BK, BV), boundary_check=(0, 1),
                       padding_option="zero").to(tl.float32)
    return b_h


@triton.jit(do_not_specialize=["T"])
def _chunk_cumsum_kernel(g, gc, cu_seqlens, chunk_indices, T, H, BT: tl.constexpr, BH: tl.constexpr,
                         VARLEN: tl.constexpr):
    """``gc[t, h]``: cumulative sum of the float32 log-decay ``g[TT, H]`` over the tokens of ``t``'s
    chunk up to ``t``; one program per chunk, all heads."""
    i_c = tl.program_id(0)
    bos, seq_len, i_t = _chunk_coords(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    o_t = i_t * BT + tl.arange(0, BT)
    o_h = tl.arange(0, BH)
    offs = (bos + o_t).to(tl.int64)[:, None] * H + o_h[None, :]
    mask = (o_t < seq_len)[:, None] & (o_h < H)[None, :]
    b_g = tl.load(g + offs, mask=mask, other=0.).to(tl.float32)
    tl.store(gc + offs, tl.cumsum(b_g, axis=0), mask=mask)


@triton.jit
def _gate_local(gc, bos, seq_len, i_h, H, row0, BT: tl.constexpr, PAD: tl.constexpr = True):
    """Local cumulative log-decay ``b`` of a chunk, read from ``gc[TT, H]`` (padded rows repeat the
    last value; without ``PAD`` they read 0, for callers that zero those rows anyway), and its last
    value ``b_C``."""
    o_t = row0 + tl.arange(0, BT)
    last = tl.minimum(row0 + BT, seq_len) - 1
    b_last = tl.load(gc + (bos + last).to(tl.int64) * H + i_h)
    b_b = tl.load(gc + (bos + o_t).to(tl.int64) * H + i_h, mask=o_t < seq_len, other=0.)
    if PAD:
        b_b = tl.where(o_t < seq_len, b_b, b_last)
    return b_b, b_last


@triton.jit
def _pair_decay(b_b, TRANS: tl.constexpr = False):
    """``exp(b_i - b_j)`` ``[BT, BT]`` (``exp(b_j - b_i)`` with ``TRANS``) for the ``[BT]`` log-decay ``b``, over
    every pair (callers keep the pairs that cannot overflow), as ``exp2`` of differences of ``b / ln 2``: one
    multiply per row instead of one per pair."""
    b_b2 = b_b * 1.4426950408889634
    if TRANS:
        return tl.exp2(b_b2[None, :] - b_b2[:, None])
    else:
        return tl.exp2(b_b2[:, None] - b_b2[None, :])


@triton.jit
def _state_step(k, v, gc, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, k0, v0,
                K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                USE_G: tl.constexpr, IEEE: tl.constexpr):
    """Store the state entering chunk ``i_t`` and return the state leaving it."""
    tl.store(_state(h, first_chunk + i_t, i_h, H, K, V, k0, v0, BK, BV), b_h.to(h.dtype.element_ty),
             boundary_check=(0, 1))
    b_kt = _load_rows(k, bos, seq_len, i_h, H, K, i_t * BT, k0, BT, BK, TRANS=True)
    b_v = _load_rows(v, bos, seq_len, i_h, H, V, i_t * BT, v0, BT, BV)
    if USE_G:
        # Padded rows of v are zero and their factor exp(b_C - 0) is the state's own exp(b_C): finite
        # whenever the state is, so they stay zero.
        b_b, b_last = _gate_local(gc, bos, seq_len, i_h, H, i_t * BT, BT, PAD=False)
        b_h *= tl.exp(b_last)
        b_v = (b_v.to(tl.float32) * tl.exp(b_last - b_b)[:, None]).to(b_kt.dtype)
    b_h += _dot(b_kt, b_v, IEEE)
    return b_h


@triton.jit(do_not_specialize=["T"])
def _chunk_states_kernel(k, v, gc, h, h0, ht, cu_seqlens, chunk_offsets, T, H: tl.constexpr,
                         K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                         BV: tl.constexpr, USE_G: tl.constexpr, USE_H0: tl.constexpr,
                         STORE_HT: tl.constexpr, IEEE: tl.constexpr, WHILE_LOOP: tl.constexpr,
                         VARLEN: tl.constexpr):
    """Store the state entering every chunk (``h[chunk, head]``) and optionally the final state."""
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_nh = tl.program_id(2)
    i_n = i_nh // H
    i_h = i_nh % H
    bos, seq_len, first_chunk = _seq_coords(cu_seqlens, chunk_offsets, i_n, T, BT, VARLEN)
    n_chunks = tl.cdiv(seq_len, BT)
    k0 = i_k * BK
    v0 = i_v * BV

    b_h = _initial_state(h0, i_n, i_h, H, K, V, k0, v0, BK, BV, USE_H0)
    if WHILE_LOOP:
        i_t = 0
        while i_t < n_chunks:
            b_h = _state_step(k, v, gc, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, k0, v0,
                              K, V, BT, BK, BV, USE_G, IEEE)
            i_t += 1
    else:
        for i_t in range(0, n_chunks):
            b_h = _state_step(k, v, gc, h, b_h, i_t, bos, seq_len, first_chunk, i_h, H, k0, v0,
                              K, V, BT, BK, BV, USE_G, IEEE)
    if STORE_HT:
        tl.store(_state(ht, i_n, i_h, H, K, V, k0, v0, BK, BV), b_h, boundary_check=(0, 1))


@triton.jit
def _output_chunk(q, k, v, gc, h, o, scale, bos, seq_len, i_t, i_c, i_h, H, v0, K: tl.constexpr, V: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_G: tl.constexpr, IEEE: tl.constexpr):
    """Store ``o`` of chunk ``i_t`` of the sequence at ``bos`` (global chunk ``i_c`` of ``h``), head ``i_h``,
    value channels ``v0 : v0 + BV``."""
    row0 = i_t * BT
    if USE_G:
        # Loaded before the key loop (into registers), so that its latency overlaps the loop's. ``v`` is
        # loaded after it: its copy to shared memory would wait for it before the loop's first loads.
        b_b, _ = _gate_local(gc, bos, seq_len, i_h, H, row0, BT)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        b_q = tl.load(_rows(q, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK), boundary_check=(0, 1),
                      padding_option="zero")
        b_kt = tl.load(_rows_t(k, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK), boundary_check=(0, 1),
                       padding_option="zero")
        b_h = tl.load(_state(h, i_c, i_h, H, K, V, i_k * BK, v0, BK, BV), boundary_check=(0, 1),
                      padding_option="zero").to(b_q.dtype)
        b_o += _dot(b_q, b_h, IEEE)
        b_A += _dot(b_q, b_kt, IEEE)
    o_t = tl.arange(0, BT)
    causal = o_t[:, None] >= o_t[None, :]
    if USE_G:
        b_o *= tl.exp(b_b)[:, None]
        b_A = tl.where(causal, b_A * _pair_decay(b_b), 0.)
    else:
        b_A = tl.where(causal, b_A, 0.)
    b_v = tl.load(_rows(v, bos, seq_len, i_h, H, V, row0, v0, BT, BV), boundary_check=(0, 1), padding_option="zero")
    # Added, not accumulated in one dot: as the dot's accumulator, ``b_o`` would take another layout than
    # the key loop's product and be converted through shared memory when that loop has one block.
    b_o = b_o * scale + _dot(b_A.to(b_v.dtype), b_v, IEEE) * scale
    tl.store(_rows(o, bos, seq_len, i_h, H, V, row0, v0, BT, BV), b_o.to(o.dtype.element_ty), boundary_check=(0, 1))


@triton.jit(do_not_specialize=["T"])
def _chunk_output_kernel(q, k, v, gc, h, o, cu_seqlens, chunk_indices, scale, T, H: tl.constexpr,
                         K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                         BV: tl.constexpr, USE_G: tl.constexpr, IEEE: tl.constexpr, VARLEN: tl.constexpr):
    """``o`` of one chunk, one head, one block of value channels."""
    i_v = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    bos, seq_len, i_t = _chunk_coords(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    _output_chunk(q, k, v, gc, h, o, scale, bos, seq_len, i_t, i_c, i_h, H, i_v * BV, K, V, BT, BK, BV, USE_G, IEEE)


@triton.jit
def _state_grad_step(q, do, gc, h, dh, hdh, b_dh, i_t, bos, seq_len, first_chunk, i_h, H, scale, k0, v0, i_kv,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     NKV: tl.constexpr, USE_G: tl.constexpr, STORE_HDH: tl.constexpr, IEEE: tl.constexpr):
    """Store the gradient of the state leaving chunk ``i_t`` and return that of the state entering it.

    With ``STORE_HDH``, also store this block's share of ``<S, dS'>`` (state entering, gradient of state
    leaving)."""
    chunk = first_chunk + i_t
    tl.store(_state(dh, chunk, i_h, H, K, V, k0, v0, BK, BV), b_dh.to(dh.dtype.element_ty), boundary_check=(0, 1))
    if STORE_HDH:
        b_h = tl.load(_state(h, chunk, i_h, H, K, V, k0, v0, BK, BV), boundary_check=(0, 1), padding_option="zero")
        tl.store(hdh + (chunk.to(tl.int64) * H + i_h) * NKV + i_kv, tl.sum(tl.sum(b_h.to(tl.float32) * b_dh, 1), 0))
    b_qt = _load_rows(q, bos, seq_len, i_h, H, K, i_t * BT, k0, BT, BK, TRANS=True)
    b_do = _load_rows(do, bos, seq_len, i_h, H, V, i_t * BT, v0, BT, BV)
    if USE_G:
        b_b, b_last = _gate_local(gc, bos, seq_len, i_h, H, i_t * BT, BT)
        b_dh *= tl.exp(b_last)
        b_qt = (b_qt.to(tl.float32) * (tl.exp(b_b) * scale)[None, :]).to(b_do.dtype)
    else:
        b_qt = (b_qt.to(tl.float32) * scale).to(b_do.dtype)
    b_dh += _dot(b_qt, b_do, IEEE)
    return b_dh


@triton.jit(do_not_specialize=["T"])
def _chunk_state_grads_kernel(q, do, gc, h, dh, hdh, dht, dh0, cu_seqlens, chunk_offsets, scale, T, H: tl.constexpr,
                              K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                              BV: tl.constexpr, NKV: tl.constexpr, USE_G: tl.constexpr, USE_DHT: tl.constexpr,
                              STORE_DH0: tl.constexpr, IEEE: tl.constexpr, WHILE_LOOP: tl.constexpr,
                              STORE_HDH: tl.constexpr = True, VARLEN: tl.constexpr = True):
    """Store the gradient of the state leaving every chunk (``dh[chunk, head]``), walking backwards."""
    i_k = tl.program_id(0)
    i_v = tl.program_id(1)
    i_nh = tl.program_id(2)
    i_n = i_nh // H
    i_h = i_nh % H
    bos, seq_len, first_chunk = _seq_coords(cu_seqlens, chunk_offsets, i_n, T, BT, VARLEN)
    n_chunks = tl.cdiv(seq_len, BT)
    k0 = i_k * BK
    v0 = i_v * BV
    i_kv = i_k * tl.num_programs(1) + i_v

    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dh += tl.load(_state(dht, i_n, i_h, H, K, V, k0, v0, BK, BV), boundary_check=(0, 1),
                        padding_option="zero").to(tl.float32)
    if WHILE_LOOP:
        i_t = n_chunks - 1
        while i_t >= 0:
            b_dh = _state_grad_step(q, do, gc, h, dh, hdh, b_dh, i_t, bos, seq_len, first_chunk, i_h, H, scale, k0, v0,
                                    i_kv, K, V, BT, BK, BV, NKV, USE_G, STORE_HDH, IEEE)
            i_t -= 1
    else:
        for i_r in range(0, n_chunks):
            b_dh = _state_grad_step(q, do, gc, h, dh, hdh, b_dh, n_chunks - 1 - i_r, bos, seq_len, first_chunk, i_h, H,
                                    scale, k0, v0, i_kv, K, V, BT, BK, BV, NKV, USE_G, STORE_HDH, IEEE)
    if STORE_DH0:
        tl.store(_state(dh0, i_n, i_h, H, K, V, k0, v0, BK, BV), b_dh, boundary_check=(0, 1))


@triton.jit(do_not_specialize=["T"])
def _chunk_dv_kernel(q, k, gc, do, dh, dv, cu_seqlens, chunk_indices, scale, T, H: tl.constexpr,
                     K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     USE_G: tl.constexpr, IEEE: tl.constexpr, USE_DH: tl.constexpr = True,
                     VARLEN: tl.constexpr = True):
    """``dv = A^T @ do + (exp(b_C - b) * k) @ dS'`` of one chunk, head and block of value channels
    (only ``A^T @ do`` without ``USE_DH``)."""
    i_v = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    bos, seq_len, i_t = _chunk_coords(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    v0 = i_v * BV
    row0 = i_t * BT

    b_At = tl.zeros([BT, BT], dtype=tl.float32)
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK), boundary_check=(0, 1),
                      padding_option="zero")
        b_qt = tl.load(_rows_t(q, bos, seq_len, i_h, H, K, row0, i_k * BK, BT, BK), boundary_check=(0, 1),
                       padding_option="zero")
        b_At += _dot(b_k, b_qt, IEEE)
        if USE_DH:
            b_dh = tl.load(_state(dh, i_c, i_h, H, K, V, i_k * BK, v0, BK, BV), boundary_check=(0, 1),
                           padding_option="zero").to(b_k.dtype)
            b_dv += _dot(b_k, b_dh, IEEE)
    o_t = tl.arange(0, BT)
    anticausal = o_t[:, None] <= o_t[None, :]
    b_At *= scale
    if USE_G:
        b_b, b_last = _gate_local(gc, bos, seq_len, i_h, H, row0, BT)
        b_At = tl.where(anticausal, b_At * _pair_decay(b_b, TRANS=True), 0.)
        b_dv *= tl.exp(b_last - b_b)[:, None]
    else:
        b_At = tl.where(anticausal, b_At, 0.)
    b_do = tl.load(_rows(do, bos, seq_len, i_h, H, V, row0, v0, BT, BV), boundary_check=(0, 1),
                   padding_option="zero")
    b_dv += _dot(b_At.to(b_do.dtype), b_do, IEEE)
    tl.store(_rows(dv, bos, seq_len, i_h, H, V, row0, v0, BT, BV), b_dv.to(dv.dtype.element_ty),
             boundary_check=(0, 1))


@triton.jit
def _dqk_partials(v, do, h, dh, bos, seq_len, i_c, i_h, H, row0, k0, K: tl.constexpr, V: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, IEEE: tl.constexpr,
                  STATE_DOT: tl.constexpr = False, du=None, DW: tl.constexpr = False):
    """One chunk's sums over value blocks, float32: ``dA = do @ v^T`` ``[BT, BT]`` (before gating
    and the causal mask), ``dq = do @ h^T`` and ``dk = v @ dh^T`` ``[BT, BK]`` (key channels
    ``k0:k0 + BK``), ``<h, dh>`` over those key channels with ``STATE_DOT`` (else 0), and with ``DW``
    the delta rule's ``dW = -du @ h^T`` ``[BT, BK]`` (else zeros). Returns ``(dq, dk, dA, <h, dh>, dW)``."""
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_hdh = 0.
    for i_v in range(0, tl.cdiv(V, BV)):
        b_v = tl.load(_rows(v, bos, seq_len, i_h, H, V, row0, i_v * BV, BT, BV), boundary_check=(0, 1),
                      padding_option="zero")
        b_do = tl.load(_rows(do, bos, seq_len, i_h, H, V, row0, i_v * BV, BT, BV), boundary_check=(0, 1),
                       padding_option="zero")
        if DW:
            b_du = tl.load(_rows(du, bos, seq_len, i_h, H, V, row0, i_v * BV, BT, BV), boundary_check=(0, 1),
                           padding_option="zero")
        b_h = tl.load(_state(h, i_c, i_h, H, K, V, k0, i_v * BV, BK, BV), boundary_check=(0, 1),
                      padding_option="zero")
        b_dh = tl.load(_state(dh, i_c, i_h, H, K, V, k0, i_v * BV, BK, BV), boundary_check=(0, 1),
                       padding_option="zero")
        b_dA += _dot(b_do, tl.trans(b_v), IEEE)
        b_dq += _dot(b_do, tl.trans(b_h.to(b_do.dtype)), IEEE)
        b_dk += _dot(b_v, tl.trans(b_dh.to(b_v.dtype)), IEEE)
        if DW:
            b_dw += _dot(b_du.to(b_do.dtype), tl.trans(b_h.to(b_do.dtype)), IEEE)
        if STATE_DOT:
            b_hdh += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32))
    return b_dq, b_dk, b_dA, b_hdh, -b_dw


@triton.jit(do_not_specialize=["T"])
def _chunk_dqk_kernel(q, k, v, gc, h, do, dh, hdh, dq, dk, dg, cu_seqlens, chunk_indices, scale, TT, T,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, USE_G: tl.constexpr, IEEE: tl.constexpr, STATE_DOT: tl.constexpr = False,
                      VARLEN: tl.constexpr = True, du=None, dw=None, DW: tl.constexpr = False):
    """``dq``, ``dk`` of one chunk, head and block of key channels, and that block's share of ``dg``.

    ``<S, dS'>`` of the gate gradient: summed here over the block's key channels from ``h`` and ``dh``
    with ``STATE_DOT``, else read (whole) from ``hdh`` ``[NT, H]`` by the first key block.
    The delta rule runs this kernel with ``v := u`` (its output and state terms of ``dk`` and ``dg``) and
    ``DW``: also ``dW = -du S^T`` into ``dw``."""
    i_k = tl.program_id(0)
    i_c = tl.program_id(1)
    i_h = tl.program_id(2)
    bos, seq_len, i_t = _chunk_coords(cu_seqlens, chunk_indices, i_c, T, BT, VARLEN)
    k0 = i_k * BK
    row0 = i_t * BT

    b_dq, b_dk, b_dA, b_hdh, b_dw = _dqk_partials(v, do, h, dh, bos, seq_len, i_c, i_h, H, row0, k0, K, V, BT, BK,
                                                  BV, IEEE, STATE_DOT and USE_G, du=du, DW=DW)
    if DW:
        tl.store(_rows(dw, bos, seq_len, i_h, H, K, row0, k0, BT, BK), b_dw.to(dw.dtype.element_ty),
                 boundary_check=(0, 1))

    b_q = tl.load(_rows(q, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1), padding_option="zero")
    b_k = tl.load(_rows(k, bos, seq_len, i_h, H, K, row0, k0, BT, BK), boundary_check=(0, 1), padding_option="zero")
    o_t = tl.arange(0, BT)
    causal = o_t[:, None] >= o_t[None, :]
    b_dA = b_dA * scale
    if USE_G:
        b_b, b_last = _gate_local(gc, bos, seq_len, i_h, H, row0, BT)
        b_dA = tl.where(causal, b_dA * _pair_decay(b_b), 0.)
        b_dq *= (tl.exp(b_b) * scale)[:, None]
        b_dk *= tl.exp(b_last - b_b)[:, None]
    else:
        b_dq *= scale
        b_dA = tl.where(causal, b_dA, 0.)
    if USE_G:
        writers_before = tl.sum(b_k.to(tl.float32) * b_dk)
    b_dAc = b_dA.to(b_q.dtype)
    b_dq += _dot(b_dAc, b_k, IEEE)
    b_dk += _dot(tl.trans(b_dAc), b_q, IEEE)
    if USE_G:
        # Gate gradient (see the module docstring): this block's share of it.
        b_db = tl.sum(b_q.to(tl.float32) * b_dq, axis=1) - tl.sum(b_k.to(tl.float32) * b_dk, axis=1)
        if STATE_DOT:
            state_dot = b_hdh
        else:
            state_dot = tl.load(hdh + i_c.to(tl.int64) * H + i_h) * (i_k == 0)
        b_dg = tl.cumsum(b_db, axis=0, reverse=True) + (writers_before + tl.exp(b_last) * state_dot)
        o_row = row0 + o_t
        tl.store(dg + (i_k * TT + bos + o_row).to(tl.int64) * H + i_h, b_dg, mask=o_row < seq_len)
    tl.store(_rows(dq, bos, seq_len, i_h, H, K, row0, k0, BT, BK), b_dq.to(dq.dtype.element_ty), boundary_check=(0, 1))
    tl.store(_rows(dk, bos, seq_len, i_h, H, K, row0, k0, BT, BK), b_dk.to(dk.dtype.element_ty), boundary_check=(0, 1))


class PackedChunks:
    """Sequence and chunk bookkeeping of packed ``[TT, ...]`` tokens for chunk size ``chunk``.

    ``cu_seqlens`` (int32 ``[N + 1]``), ``chunk_offsets`` (int32 ``[N + 1]``: first global chunk of each
    sequence), ``chunk_indices`` (int32 ``[NT, 2]``: sequence and local index of each global chunk).
    Build it with ``packed_chunks``: equal-length batches are built on the device without a host sync
    and cached; packed varlen sequences read their lengths on the host once.

    ``length``: the common length of equal-length batches (None for packed varlen sequences). Kernels get it
    as ``T`` with ``VARLEN = False`` and compute a chunk's sequence and rows from it instead of loading them
    (``varlen`` True, ``T`` 0 otherwise).
    """

    def __init__(self, cu_seqlens: torch.Tensor, chunk_offsets: torch.Tensor, chunk_indices: torch.Tensor,
                 length: Optional[int] = None):
        self.cu_seqlens = cu_seqlens
        self.chunk_offsets = chunk_offsets
        self.chunk_indices = chunk_indices
        self.num_sequences = cu_seqlens.numel() - 1
        self.num_chunks = chunk_indices.shape[0]
        self.varlen = length is None
        self.T = 0 if length is None else length


_EQUAL_LENGTH_CACHE: dict = {}


def packed_chunks(batch: int, length: int, chunk: int, device: torch.device,
                  cu_seqlens: Optional[torch.Tensor] = None) -> PackedChunks:
    """``PackedChunks`` of ``batch`` sequences of ``length`` tokens, or of the packed ``cu_seqlens``."""
    if cu_seqlens is None:
        key = (batch, length, chunk, str(device))
        if key not in _EQUAL_LENGTH_CACHE:
            if len(_EQUAL_LENGTH_CACHE) >= 64:
                _EQUAL_LENGTH_CACHE.clear()
            per_seq = triton.cdiv(length, chunk)
            steps = torch.arange(batch + 1, dtype=torch.int32, device=device)
            ids = torch.arange(batch * per_seq, dtype=torch.int32, device=device)
            indices = torch.stack([ids // per_seq, ids % per_seq], dim=1).contiguous()
            _EQUAL_LENGTH_CACHE[key] = PackedChunks(steps * length, steps * per_seq, indices, length)
        return _EQUAL_LENGTH_CACHE[key]
    cu = cu_seqlens.to(device=device, dtype=torch.int32)
    counts = [triton.cdiv(int(n), chunk) for n in (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()]
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    indices = [(n, i) for n, c in enumerate(counts) for i in range(c)]
    return PackedChunks(cu, torch.tensor(offsets, dtype=torch.int32, device=device),
                        torch.tensor(indices, dtype=torch.int32, device=device).reshape(-1, 2))


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


_block = tuning.block_size


def _key(q: torch.Tensor, v: torch.Tensor, gated: bool) -> tuple:
    """Tuning key of a launch on packed ``[TT, H, D]`` tensors: heads, head dims, dtype, whether gated
    (never a length)."""
    return q.shape[1], q.shape[-1], v.shape[-1], str(q.dtype), gated


def chunk_local_cumsum(g: torch.Tensor, packed: PackedChunks) -> torch.Tensor:
    """Float32 ``[TT, H]``: cumulative sums of the float32 log-decay ``g[TT, H]`` within each chunk."""
    TT, H = g.shape
    gc = torch.empty(TT, H, dtype=torch.float32, device=g.device)
    if packed.num_chunks:
        Launcher.of(_chunk_cumsum_kernel)[(packed.num_chunks,)](
            g, gc, packed.cu_seqlens, packed.chunk_indices, packed.T, H, BT=CHUNK,
            BH=max(2, triton.next_power_of_2(H)), VARLEN=packed.varlen, num_warps=4)
    return gc


def chunk_states(k, v, gc, initial_state, output_final_state, packed: PackedChunks, kernel="simple_gla.state"):
    """States entering every chunk ``h [NT, H, K, V]`` (input dtype for bf16, else float32) and the final
    state (float32 ``[N, H, K, V]``, or None). ``gc``: chunk-local cumulative log-decay or None."""
    TT, H, K = k.shape
    V = v.shape[-1]
    N = packed.num_sequences

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        h = torch.empty(packed.num_chunks, H, K, V, dtype=_state_dtype(k.dtype), device=k.device)
        ht = torch.empty(N, H, K, V, dtype=torch.float32, device=k.device) if output_final_state else None
        Launcher.of(_chunk_states_kernel)[(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)](
            k, v, gc, h, initial_state, ht, packed.cu_seqlens, packed.chunk_offsets, packed.T, H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BV, USE_G=gc is not None, USE_H0=initial_state is not None,
            STORE_HT=output_final_state, IEEE=k.dtype == torch.float32, WHILE_LOOP=_INTERPRETING,
            VARLEN=packed.varlen, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return h, ht
    return tuning.run(kernel, _key(k, v, gc is not None), launch)


def chunk_output(q, k, v, gc, h, scale, packed: PackedChunks, kernel="simple_gla.output"):
    """``o [TT, H, V]`` (``q``'s dtype) from the states entering every chunk ``h``."""
    TT, H, K = q.shape
    V = v.shape[-1]

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        o = torch.empty(TT, H, V, dtype=q.dtype, device=q.device)
        Launcher.of(_chunk_output_kernel)[(triton.cdiv(V, BV), packed.num_chunks, H)](
            q, k, v, gc, h, o, packed.cu_seqlens, packed.chunk_indices, scale, packed.T, H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BV, USE_G=gc is not None, IEEE=q.dtype == torch.float32,
            VARLEN=packed.varlen,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return o
    return tuning.run(kernel, _key(q, v, gc is not None), launch)


def chunk_state_grads(q, do, gc, h, dht, scale, need_dh0: bool, packed: PackedChunks, state_dot: bool = True):
    """Gradients of the states leaving every chunk ``dh [NT, H, K, V]``, ``dh0`` (float32 or None) and,
    gated with ``state_dot``, ``<S, dS'>`` per chunk and head (float32 ``[NT, H]``, else None)."""
    TT, H, K = q.shape
    V = do.shape[-1]
    N = packed.num_sequences
    store_hdh = gc is not None and state_dot

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        NKV = triton.cdiv(K, BK) * triton.cdiv(V, BV)
        dh = torch.empty(packed.num_chunks, H, K, V, dtype=_state_dtype(q.dtype), device=q.device)
        dh0 = torch.empty(N, H, K, V, dtype=torch.float32, device=q.device) if need_dh0 else None
        hdh = torch.empty(packed.num_chunks, H, NKV, dtype=torch.float32, device=q.device) if store_hdh else None
        Launcher.of(_chunk_state_grads_kernel)[(triton.cdiv(K, BK), triton.cdiv(V, BV), N * H)](
            q, do, gc, h, dh, hdh, dht, dh0, packed.cu_seqlens, packed.chunk_offsets, scale, packed.T, H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BV, NKV=NKV, USE_G=gc is not None, USE_DHT=dht is not None,
            STORE_DH0=need_dh0, IEEE=q.dtype == torch.float32, WHILE_LOOP=_INTERPRETING, STORE_HDH=store_hdh,
            VARLEN=packed.varlen,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return dh, dh0, hdh
    dh, dh0, hdh = tuning.run("simple_gla.state_grad", _key(q, do, gc is not None) + (store_hdh,), launch)
    if hdh is None:
        return dh, dh0, None
    return dh, dh0, hdh[..., 0] if hdh.shape[-1] == 1 else hdh.sum(-1)


def chunk_dv(q, k, gc, do, dh, scale, packed: PackedChunks, kernel="simple_gla.dv", out_dtype=None):
    """``dv = A^T @ do + (exp(b_C - b) * k) @ dS'`` (only ``A^T @ do`` when ``dh`` is None), ``[TT, H, V]``
    in ``out_dtype`` (default: ``do``'s dtype)."""
    TT, H, K = q.shape
    V = do.shape[-1]

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        dv = torch.empty(TT, H, V, dtype=out_dtype or do.dtype, device=q.device)
        Launcher.of(_chunk_dv_kernel)[(triton.cdiv(V, BV), packed.num_chunks, H)](
            q, k, gc, do, dh, dv, packed.cu_seqlens, packed.chunk_indices, scale, packed.T, H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BV, USE_G=gc is not None, IEEE=q.dtype == torch.float32,
            USE_DH=dh is not None, VARLEN=packed.varlen, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return dv
    return tuning.run(kernel, _key(q, do, gc is not None), launch)


def chunk_dqk(q, k, v, gc, h, do, dh, hdh, scale, packed: PackedChunks, kernel="simple_gla.dqk", dk_dtype=None):
    """``dq``, ``dk`` (``dk_dtype``, default ``k``'s) and the gate gradient (float32 ``[TT, H]``, or None
    without a gate); ``hdh``: ``<S, dS'>`` per chunk and head from ``chunk_state_grads``, or None to sum
    it here from ``h`` and ``dh``."""
    TT, H, K = q.shape
    V = v.shape[-1]
    state_dot = gc is not None and hdh is None

    def launch(cfg):
        BK, BV = _block(K, cfg.block_k), _block(V, cfg.block_v)
        NK = triton.cdiv(K, BK)
        dq = torch.empty_like(q)
        dk = torch.empty(TT, H, K, dtype=dk_dtype or k.dtype, device=k.device)
        dg_parts = torch.empty(NK, TT, H, dtype=torch.float32, device=q.device) if gc is not None else None
        Launcher.of(_chunk_dqk_kernel)[(NK, packed.num_chunks, H)](
            q, k, v, gc, h, do, dh, hdh, dq, dk, dg_parts, packed.cu_seqlens, packed.chunk_indices, scale, TT,
            packed.T, H,
            K=K, V=V, BT=CHUNK, BK=BK, BV=BV, USE_G=gc is not None, IEEE=q.dtype == torch.float32,
            STATE_DOT=state_dot, VARLEN=packed.varlen, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return dq, dk, dg_parts
    dq, dk, dg_parts = tuning.run(kernel, _key(q, v, gc is not None) + (state_dot,), launch)
    if dg_parts is None:
        return dq, dk, None
    return dq, dk, dg_parts[0] if dg_parts.shape[0] == 1 else dg_parts.sum(0)


def simple_gla_forward(q, k, v, g, scale, initial_state, output_final_state, packed: PackedChunks):
    """q, k: ``[TT, H, K]``; v: ``[TT, H, V]``; g: float32 ``[TT, H]`` or None (all contiguous).
    Returns ``(o [TT, H, V], h [NT, H, K, V], final_state float32 [N, H, K, V] or None, gc)`` with ``gc``
    the chunk-local cumulative log-decay (float32 ``[TT, H]``, or None)."""
    gc = None if g is None else chunk_local_cumsum(g, packed)
    h, ht = chunk_states(k, v, gc, initial_state, output_final_state, packed)
    o = chunk_output(q, k, v, gc, h, scale, packed)
    return o, h, ht, gc


def simple_gla_backward(q, k, v, gc, h, do, dht, scale, need_dh0: bool, packed: PackedChunks):
    """Gradients ``(dq, dk, dv, dg float32 [TT, H] or None, dh0 float32 [N, H, K, V] or None)``; ``gc`` as
    returned by ``simple_gla_forward``."""
    dh, dh0, hdh = chunk_state_grads(q, do, gc, h, dht, scale, need_dh0, packed, state_dot=not STATE_DOT_IN_DQK)
    dv = chunk_dv(q, k, gc, do, dh, scale, packed)
    dq, dk, dg = chunk_dqk(q, k, v, gc, h, do, dh, hdh, scale, packed)
    return dq, dk, dv, dg, dh0


def gated_chunk_function(name: str, forward, backward) -> type:
    """An autograd Function over a pair of chunked gated-linear-attention launchers with the
    signatures of ``simple_gla_forward`` / ``simple_gla_backward`` (inputs packed ``[TT, H, D]``,
    contiguous; the forward's cumulative gate is what the backward receives)."""

    class GatedChunkFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, g, scale, initial_state, output_final_state, packed):
            o, h, ht, gc = forward(q, k, v, g, scale, initial_state, output_final_state, packed)
            ctx.save_for_backward(q, k, v, gc, h)
            ctx.scale = scale
            ctx.packed = packed
            ctx.has_initial_state = initial_state is not None
            return o, ht

        @staticmethod
        def backward(ctx, do, dht):
            q, k, v, gc, h = ctx.saved_tensors
            do = do.contiguous()
            dht = None if dht is None else dht.contiguous()
            dq, dk, dv, dg, dh0 = backward(q, k, v, gc, h, do, dht, ctx.scale, ctx.has_initial_state, ctx.packed)
            return dq, dk, dv, dg, None, dh0, None, None

    GatedChunkFunction.__name__ = GatedChunkFunction.__qualname__ = name
    return GatedChunkFunction


SimpleGLAFunction = gated_chunk_function("SimpleGLAFunction", simple_gla_forward, simple_gla_backward)


def chunk_simple_gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens):
    """``[B, T, H, D]`` entry point: packs the batch, runs ``SimpleGLAFunction``, unpacks.

    ``g``: ``[B, T, H]`` or None; ``initial_state``: ``[N, H, K, V]`` or None.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    packed = packed_chunks(B, T, CHUNK, q.device, cu_seqlens)
    flat = [x.reshape(B * T, H, -1).contiguous() for x in (q, k, v)]
    gf = None if g is None else g.float().reshape(B * T, H).contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    o, ht = SimpleGLAFunction.apply(*flat, gf, scale, h0, output_final_state, packed)
    return o.view(B, T, H, V), ht
