"""In-kernel score computation shared by the forward and backward flash kernels.

``score_tile`` turns a tile of raw dot products ``q . k`` into logits in log2 units
(``z * log2(e)``), applying in order: scale, softcap, ALiBi, tensor bias, a bias tile the caller
computes (low-rank ``u_tile @ w_tile^T`` from ``low_rank_tile``, or a relative-position gather
from ``rel_pos_tile``), and (on partial tiles) the mask. Positions come in as broadcastable 2-D
tensors, so the same helper serves the row-major forward/dq tiles ``[BLOCK_M, BLOCK_N]`` and the
transposed dk/dv tiles ``[BLOCK_N, BLOCK_M]``.
"""

import builtins
import os

import triton
import triton.language as tl

from .na_mask import NA_EXACT, na_penalty

# True when kernels are defined for Triton's CPU interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED = bool(triton.knobs.runtime.interpret)

# Bitmask partial tiles (MASK_MODE 2): on, each row's words load once and expand to bits in
# registers (``bit_tile``); off, every element gathers its own word. Read at import (the
# kernels compile it in): TESSERA_BITS_BY_ROWS=0 for the gather.
BITS_BY_ROWS = tl.constexpr(os.environ.get("TESSERA_BITS_BY_ROWS", "1") == "1")

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def tanh(x):
    """tanh through exp2; exact limits +-1 for large |x|."""
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)


@triton.jit
def load_factor_rows(base, rows, offs_r, s_row, s_rank, LIMIT, RANK, BOUNDED: tl.constexpr):
    """Rows ``rows`` of one (batch, head) slice of a low-rank factor, ``[len(rows), R_PAD]`` in the
    factor's dtype; rank columns past ``RANK`` (and, when BOUNDED, rows past ``LIMIT``) read 0."""
    ptrs = base + rows.to(tl.int64)[:, None] * s_row + offs_r[None, :] * s_rank
    ok = offs_r[None, :] < RANK
    if BOUNDED:
        ok = ok & (rows[:, None] < LIMIT)
    return tl.load(ptrs, mask=ok, other=0.0)


@triton.jit
def low_rank_tile(a, b, PRECISION: tl.constexpr):
    """``a @ b^T`` in fp32: the low-rank bias of a tile from factor rows ``a`` and ``b``."""
    return tl.dot(a, tl.trans(b), input_precision=PRECISION)


@triton.jit
def grid_flat(pos, G1, G2):
    """Relative-position addressing: token ``pos`` of a row-major grid ``(G0, G1, G2)`` (1-D and
    2-D grids padded with leading 1s) as a flat index in the ``(2G0-1, 2G1-1, 2G2-1)`` table
    shape, so that ``flat(i) - flat(j) + flat(last token)`` indexes ``table[c_i - c_j + G - 1]``."""
    c2 = pos % G2
    rest = pos // G2
    return ((rest // G1) * (2 * G1 - 1) + rest % G1) * (2 * G2 - 1) + c2


@triton.jit
def grid_position(flat, G0, G1, G2):
    """Inverse of ``grid_flat``: ``(pos, ok)``, ok False where ``flat`` is no token's index."""
    w2 = 2 * G2 - 1
    w1 = 2 * G1 - 1
    c2 = flat % w2
    rest = flat // w2
    c1 = rest % w1
    c0 = rest // w1
    ok = (flat >= 0) & (c2 < G2) & (c1 < G1) & (c0 < G0)
    return (c0 * G1 + c1) * G2 + c2, ok


@triton.jit
def rel_pos_tile(table_base, fq, fk, center, ok):
    """fp32 relative-position bias ``table[fq - fk + center]`` (0 where not ``ok``); fq and fk are
    broadcastable flat indices (``grid_flat``) of the query and key positions."""
    return tl.load(table_base + (fq - fk + center), mask=ok, other=0.0).to(tl.float32)


@triton.jit
def rel_pos_table_grad(dtab_base, ds, fq, q_first, q_last, k_first, k_last, k_pos0,
                       G0, G1, G2, center, S_K, BN: tl.constexpr, TW: tl.constexpr):
    """Add ``ds [BM, BN]`` (logit gradients of query rows with flat indices ``fq [BM]`` against keys
    ``k_pos0 + arange(BN)``) into a per-program table-gradient buffer at ``dtab_base``: entry ``t``
    gets every ``ds[i, j]`` with ``fq[i] - flat(k_j) + center == t``. Runs over the aligned chunks
    of ``TW`` entries that the tile can reach; each row meets an entry at most once, so a chunk is
    a gather along the key axis then a sum over rows. The read-add-write of the buffer is fenced
    by barriers (several threads may hold one entry)."""
    lo = grid_flat(q_first, G1, G2) - grid_flat(k_last, G1, G2) + center
    hi = grid_flat(q_last, G1, G2) - grid_flat(k_first, G1, G2) + center
    offs_t = tl.arange(0, TW)
    for chunk in range(lo // TW, hi // TW + 1):
        entry = chunk * TW + offs_t
        pos, ok = grid_position(fq[:, None] - (entry[None, :] - center), G0, G1, G2)
        col = pos - k_pos0
        ok = ok & (col >= 0) & (col < BN) & (pos < S_K)
        part = tl.sum(tl.where(ok, tl.gather(ds, tl.where(ok, col, 0), axis=1), 0.0), 0)
        ptrs = dtab_base + entry
        total = tl.load(ptrs) + part
        tl.debug_barrier()
        tl.store(ptrs, total)
        tl.debug_barrier()


@triton.jit
def bit_tile(bits_base, ROWS: tl.constexpr, NW: tl.constexpr):
    """``[ROWS, NW * 32]`` bool of one partial tile's bitmask (``masks.py`` layout: bit ``c % 32``
    of word ``[r, c // 32]``): each row's ``NW`` words load once and expand in registers."""
    rows = tl.arange(0, ROWS)
    words = tl.load(bits_base + rows[:, None] * NW + tl.arange(0, NW)[None, :])       # [ROWS, NW]
    bits = (words[:, :, None] >> tl.arange(0, 32)[None, None, :]) & 1               # [ROWS, NW, 32]
    return tl.reshape(bits, (ROWS, NW * 32)) != 0


@triton.jit
def score_tile(qk, q_row, q_pos, k_pos, q_local, k_local, S_Q, S_K,
               scale, qk_scale, softcap, slope, band_lo, band_hi,
               bias_base, s_bias_m, s_bias_n, bits_base, tile_bias, na_win, na_code,
               MASKED: tl.constexpr, MASK_MODE: tl.constexpr, SOFTCAP: tl.constexpr,
               ALIBI: tl.constexpr, TENSOR_BIAS: tl.constexpr, TILE_BIAS: tl.constexpr,
               NW: tl.constexpr, NB: tl.constexpr, NA_STATIC: tl.constexpr):
    """Returns ``(z2, t)``: logits in log2 units (-inf where masked) and, with SOFTCAP, the tanh
    value ``t`` of the cap (its derivative is ``1 - t^2``); without SOFTCAP ``t`` is ``z2``.

    qk: fp32 raw dot products. q_row: query row in [0, S_Q); q_pos = q_row + S_K - S_Q;
    k_pos: key position; q_local/k_local: row/column inside the tile (bitmask addressing);
    tile_bias: fp32 bias tile shaped like qk (read only with TILE_BIAS); bits_base: the tile's
    bitmask words (MASK_MODE 2) or its ``NB`` ``(lo, hi)`` offset bands (MASK_MODE 3);
    na_win / na_code: broadcastable neighborhood windows of one side and codes of the other
    (``na_allowed``; read only with MASK_MODE 4), NA_STATIC their compile-time switches.
    """
    if SOFTCAP or ALIBI or TENSOR_BIAS or TILE_BIAS:
        z = qk * scale
        t = z
        if SOFTCAP:
            t = tanh(z / softcap)
            z = softcap * t
        if ALIBI:
            dist = tl.abs(q_pos - k_pos).to(tl.float32)
            z = z - slope * dist
        if TENSOR_BIAS:
            ptrs = bias_base + q_row.to(tl.int64) * s_bias_m + k_pos.to(tl.int64) * s_bias_n
            if MASKED:
                b = tl.load(ptrs, mask=(q_row < S_Q) & (k_pos < S_K), other=0.0)
            else:
                b = tl.load(ptrs)
            z = z + b.to(tl.float32)
        if TILE_BIAS:
            z = z + tile_bias
        z2 = z * 1.4426950408889634
    else:
        z2 = qk * qk_scale
        t = z2
    if MASKED and MASK_MODE == 4 and (NA_EXACT & NA_STATIC):
        z2 = z2 + na_penalty(na_win, na_code, NA_STATIC, True)
    elif MASKED:
        allowed = k_pos < S_K
        # MASK_MODE: 0 bounds only, 1 offset band, 2 packed bitmask, 3 per-tile bands,
        # 4 N-D neighborhood (masks.py).
        if MASK_MODE == 1:
            d = q_pos - k_pos
            allowed = allowed & (d >= band_lo) & (d <= band_hi)
        if MASK_MODE == 3:
            d = q_pos - k_pos
            hit = (d >= tl.load(bits_base)) & (d <= tl.load(bits_base + 1))
            for i in tl.static_range(1, NB):
                hit = hit | ((d >= tl.load(bits_base + 2 * i)) & (d <= tl.load(bits_base + 2 * i + 1)))
            allowed = allowed & hit
        if MASK_MODE == 4:
            z2 = z2 + na_penalty(na_win, na_code, NA_STATIC, True)
        if MASK_MODE == 2:
            if not BITS_BY_ROWS:
                words = tl.load(bits_base + q_local * NW + k_local // 32)
                allowed = allowed & (((words >> (k_local % 32)) & 1) != 0)
            elif q_local.shape[0] == 1:                      # transposed tile: [BLOCK_N, BLOCK_M]
                allowed = allowed & tl.trans(bit_tile(bits_base, q_local.shape[1], NW))
            else:
                allowed = allowed & bit_tile(bits_base, q_local.shape[0], NW)
        z2 = tl.where(allowed, z2, float("-inf"))
    return z2, t


def interpreter_range(*bounds):
    """``range`` for interpreted kernels: the interpreter holds scalars as 1-element arrays, which
    recent numpy refuses to turn into loop bounds. Kernel modules bind it as ``range`` only when
    INTERPRETED (the compiler needs the builtin)."""
    return builtins.range(*(int(b.handle.data.item()) if hasattr(b, "handle") else int(b)
                            for b in bounds))


if INTERPRETED:
    range = interpreter_range  # noqa: A001
