"""Which (tile, batch, head) a flash-kernel program works on: the plain 2-D grid, or the 1-D
longest-first launch order of ``schedule.py``."""

from __future__ import annotations

import triton
import triton.language as tl

# Integer arguments of the flash kernels that vary with lengths or patterns: kept out of Triton's
# specialization (value 1, divisibility by 16), so that a new length, window size, block layout or
# launch order reuses the compiled kernel (a kernel names only those of them it has).
RUN_TIME_INTS = ["S_Q", "S_K", "N_Q_TILES", "N_K_TILES", "FULL_W", "PART_W", "band_lo", "band_hi",
                 "REPS", "ORDER_HEADS", "MAP_HEADS", "SCHEDULED"]


@triton.jit
def program_rows(ORDER, REPS, ORDER_HEADS, H_Q, N_Q_TILES, SCHEDULED, MAY_SCHEDULE: tl.constexpr):
    """``(m, b, h)``: query tile, batch, query head. Plain grid ``(N_Q_TILES, B * H_Q)``, query
    tiles in descending order (on causal-like maps the longest first). With ``MAY_SCHEDULE`` the
    run-time 0 or 1 ``SCHEDULED`` picks the longest-first grid ``(len(ORDER) * REPS,)`` instead:
    entry ``ORDER[pid // REPS] = head_entry * N_Q_TILES + m`` (int32), replica ``pid % REPS`` over
    the batch and the heads ``head_entry + j * ORDER_HEADS``."""
    if MAY_SCHEDULE:
        if SCHEDULED:
            pid = tl.program_id(0)
            entry = tl.load(ORDER + pid // REPS)
            rep = pid % REPS
            per = H_Q // ORDER_HEADS
            m = entry % N_Q_TILES
            h = (rep % per) * ORDER_HEADS + entry // N_Q_TILES
            b = rep // per
        else:
            m, b, h = _plain_rows(H_Q, N_Q_TILES)
    else:
        m, b, h = _plain_rows(H_Q, N_Q_TILES)
    return m, b, h


@triton.jit
def _plain_rows(H_Q, N_Q_TILES):
    bh = tl.program_id(1)
    return N_Q_TILES - 1 - tl.program_id(0), bh // H_Q, bh % H_Q


@triton.jit
def program_cols(ORDER, REPS, ORDER_HEADS, H_KV, N_K_TILES, SCHEDULED, MAY_SCHEDULE: tl.constexpr):
    """``(n, b, hk)``: key tile, batch, key/value head. Plain grid ``(N_K_TILES, B * H_KV)``;
    scheduled grid as ``program_rows`` with key tiles and key/value heads."""
    if MAY_SCHEDULE:
        if SCHEDULED:
            pid = tl.program_id(0)
            entry = tl.load(ORDER + pid // REPS)
            rep = pid % REPS
            per = H_KV // ORDER_HEADS
            n = entry % N_K_TILES
            hk = (rep % per) * ORDER_HEADS + entry // N_K_TILES
            b = rep // per
        else:
            n, b, hk = _plain_cols(H_KV)
    else:
        n, b, hk = _plain_cols(H_KV)
    return n, b, hk


@triton.jit
def _plain_cols(H_KV):
    bhk = tl.program_id(1)
    return tl.program_id(0), bhk // H_KV, bhk % H_KV
