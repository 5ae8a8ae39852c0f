"""Which (tile, batch, head) a flash-kernel program works on: the plain 2-D grid, or the 1-D
longest-first launch order of ``schedule.py`` (its ``Launch`` supplies the arguments); and which
tiles of the other side it visits (``listed_tiles``: the plan's lists, ``masks.TileLists``)."""

from __future__ import annotations

import triton
import triton.language as tl

# Integer arguments of the flash kernels that vary with lengths or patterns: kept out of Triton's
# specialization (value 1, divisibility by 16), so that a new length, window size, block layout or
# launch order reuses the compiled kernel (a kernel names only those of them it has).
RUN_TIME_INTS = ["S_Q", "S_K", "N_Q_TILES", "N_K_TILES", "FULL_W", "PART_W", "band_lo", "band_hi",
                 "REPS", "ORDER_HEADS", "MAP_HEADS", "SCHEDULED"]


@triton.jit
def program_ids(ORDER, REPS, ORDER_HEADS, HEADS, N_TILES, SCHEDULED, MAY_SCHEDULE: tl.constexpr,
                DESCENDING: tl.constexpr):
    """``(tile, batch, head)`` of this program over ``N_TILES`` tiles (query tiles of the forward
    and dq kernels, key tiles of dk/dv) and ``HEADS`` heads (query or key/value heads). Plain grid
    ``(N_TILES, B * HEADS)``, tiles descending (``DESCENDING``: on causal-like query maps the
    longest first) or ascending. With ``MAY_SCHEDULE`` the run-time 0 or 1 ``SCHEDULED`` picks the
    longest-first grid instead (``_scheduled``)."""
    if MAY_SCHEDULE:
        if SCHEDULED:
            tile, b, h = _scheduled(ORDER, REPS, ORDER_HEADS, HEADS, N_TILES)
        else:
            tile, b, h = _plain(HEADS, N_TILES, DESCENDING)
    else:
        tile, b, h = _plain(HEADS, N_TILES, DESCENDING)
    return tile, b, h


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


@triton.jit
def listed_tiles(PART_IDX, PART_BITS, PART_CNT, PART_W, FULL_IDX, FULL_CNT, FULL_W, row,
                 PARTIAL: tl.constexpr):
    """The plan's list for entry ``row`` (``head * n_tiles + tile``): ``(tile indices, mask words,
    count)`` of its partial tiles when PARTIAL, else of its full tiles (which have no mask words:
    the indices stand in, unread)."""
    if PARTIAL:
        tiles = PART_IDX + row.to(tl.int64) * PART_W
        words = PART_BITS + row.to(tl.int64) * PART_W
        count = tl.load(PART_CNT + row)
    else:
        tiles = FULL_IDX + row.to(tl.int64) * FULL_W
        words = tiles
        count = tl.load(FULL_CNT + row)
    return tiles, words, count
