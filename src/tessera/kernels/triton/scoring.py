"""In-kernel score computation shared by the forward and backward flash kernels.

``score_tile`` turns a tile of raw dot products ``q . k`` into logits in log2 units
(``z * log2(e)``), applying in order: scale, softcap, ALiBi, tensor bias, and (on partial tiles)
the mask. Positions come in as broadcastable 2-D tensors, so the same helper serves the
row-major forward/dq tiles ``[BLOCK_M, BLOCK_N]`` and the transposed dk/dv tiles
``[BLOCK_N, BLOCK_M]``.
"""

import triton
import triton.language as tl

# True when kernels are defined for Triton's CPU interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED = bool(triton.knobs.runtime.interpret)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def tanh(x):
    """tanh through exp2; exact limits +-1 for large |x|."""
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)


@triton.jit
def score_tile(qk, q_row, q_pos, k_pos, q_local, k_local, S_Q, S_K,
               scale, qk_scale, softcap, slope, band_lo, band_hi,
               bias_base, s_bias_m, s_bias_n, bits_base,
               MASKED: tl.constexpr, MASK_MODE: tl.constexpr, SOFTCAP: tl.constexpr,
               ALIBI: tl.constexpr, TENSOR_BIAS: tl.constexpr, NW: tl.constexpr):
    """Returns ``(z2, t)``: logits in log2 units (-inf where masked) and, with SOFTCAP, the tanh
    value ``t`` of the cap (its derivative is ``1 - t^2``); without SOFTCAP ``t`` is ``z2``.

    qk: fp32 raw dot products. q_row: query row in [0, S_Q); q_pos = q_row + S_K - S_Q;
    k_pos: key position; q_local/k_local: row/column inside the tile (bitmask addressing).
    """
    if SOFTCAP or ALIBI or TENSOR_BIAS:
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
        z2 = z * 1.4426950408889634
    else:
        z2 = qk * qk_scale
        t = z2
    if MASKED:
        allowed = k_pos < S_K
        # MASK_MODE: 0 bounds only, 1 offset band, 2 packed bitmask (see masks.py).
        if MASK_MODE == 1:
            d = q_pos - k_pos
            allowed = allowed & (d >= band_lo) & (d <= band_hi)
        if MASK_MODE == 2:
            words = tl.load(bits_base + q_local * NW + k_local // 32)
            allowed = allowed & (((words >> (k_local % 32)) & 1) != 0)
        z2 = tl.where(allowed, z2, float("-inf"))
    return z2, t


def interpreter_range(*bounds):
    """``range`` for interpreted kernels: the interpreter holds scalars as 1-element arrays, which
    recent numpy refuses to turn into loop bounds. Kernel modules bind it as ``range`` only when
    INTERPRETED (the compiler needs the builtin)."""
    return range(*(int(b.handle.data.item()) if hasattr(b, "handle") else int(b) for b in bounds))
