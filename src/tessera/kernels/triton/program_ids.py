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
    run-time 0 or 1 ``SCHEDULED`` picks the longest-first grid instead (``_scheduled``)."""
    if MAY_SCHEDULE:
        if SCHEDULED:
            m, b, h = _scheduled(ORDER, REPS, ORDER_HEADS, H_Q, N_Q_TILES)
        else:
            m, b, h = _plain(H_Q, N_Q_TILES, True)
    else:
        m, b, h = _plain(H_Q, N_Q_TILES, True)
    return m, b, h


@triton.jit
def program_cols(ORDER, REPS, ORDER_HEADS, H_KV, N_K_TILES, SCHEDULED, MAY_SCHEDULE: tl.constexpr):
    """``(n, b, hk)``: key tile, batch, key/value head. Plain grid ``(N_K_TILES, B * H_KV)``, key
    tiles in ascending order; scheduled grid as ``program_rows``."""
    if MAY_SCHEDULE:
        if SCHEDULED:
            n, b, hk = _scheduled(ORDER, REPS, ORDER_HEADS, H_KV, N_K_TILES)
        else:
            n, b, hk = _plain(H_KV, N_K_TILES, False)
    else:
        n, b, hk = _plain(H_KV, N_K_TILES, False)
    return n, b, hk


@triton.jit
def _scheduled(ORDER, REPS, ORDER_HEADS, HEADS, N_TILES):
    """Grid ``(len(ORDER) * REPS,)``: entry ``ORDER[pid // REPS] = head_entry * N_TILES + tile``
    (int32), replica ``pid % REPS`` over the batch and the heads ``head_entry + j * ORDER_HEADS``
    of the ``HEADS`` heads."""
    pid = tl.program_id(0)
    entry = tl.load(ORDER + pid // REPS)
    rep = pid % REPS
    per = HEADS // ORDER_HEADS
    return entry % N_TILES, rep // per, (rep % per) * ORDER_HEADS + entry // N_TILES


@triton.jit
def _plain(HEADS, N_TILES, DESCENDING: tl.constexpr):
    """Grid ``(N_TILES, B * HEADS)``: ``(tile, batch, head)``, tiles descending or ascending."""
    tile = tl.program_id(0)
    if DESCENDING:
        tile = N_TILES - 1 - tile
    bh = tl.program_id(1)
    return tile, bh // HEADS, bh % HEADS
