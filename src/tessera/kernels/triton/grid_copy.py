"""Copies between token grids of different extents in one pass: zero padding up to whole tiles,
and cutting back.

A tensor ``[B, *grid, *token]`` (up to 3 grid axes, contiguous) is a row-major list of tokens of
``prod(token)`` elements. ``copy_grids`` writes each destination token (``[B, *dst_grid]``) from
the source token at the same grid coordinates where those lie inside ``src_grid``, zeros
elsewhere: every destination element written once, every needed source element read once (where
``torch.nn.functional.pad`` fills its whole output, then copies the input over it). Up to three
tensors of one dtype go in one launch (q, k and v; their token sizes may differ, as with GQA).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from .host_math import cdiv
from .launcher import Launcher

# Tokens and elements per program: 4 x 1024 (8 KB at 16 bits), streamed.
TOKENS = 4
COLUMNS = 1024


@triton.jit(do_not_specialize=["n_tokens", "ROW0", "ROW1", "ROW2", "S0", "S1", "S2", "T0", "T1", "T2"])
def _copy_grids(SRC0, SRC1, SRC2, DST0, DST1, DST2, ROW0, ROW1, ROW2, n_tokens,
                S0, S1, S2, T0, T1, T2, TOKENS: tl.constexpr, COLUMNS: tl.constexpr):
    which = tl.program_id(2)
    src, dst, row = SRC0, DST0, ROW0
    if which == 1:
        src, dst, row = SRC1, DST1, ROW1
    if which == 2:
        src, dst, row = SRC2, DST2, ROW2
    t = tl.program_id(0) * TOKENS + tl.arange(0, TOKENS)
    c2 = t % T2
    rest = t // T2
    c1 = rest % T1
    rest = rest // T1
    c0 = rest % T0
    b = rest // T0
    inside = (c0 < S0) & (c1 < S1) & (c2 < S2) & (t < n_tokens)
    source = ((b.to(tl.int64) * S0 + c0) * S1 + c1) * S2 + c2
    cols = tl.program_id(1) * COLUMNS + tl.arange(0, COLUMNS)
    in_row = cols < row
    x = tl.load(src + source[:, None] * row + cols[None, :], mask=inside[:, None] & in_row[None, :], other=0)
    tl.store(dst + t.to(tl.int64)[:, None] * row + cols[None, :], x,
             mask=(t < n_tokens)[:, None] & in_row[None, :])


_COPY = Launcher(_copy_grids)


def _three(grid: tuple) -> tuple:
    return (1,) * (3 - len(grid)) + tuple(grid)


def copy_grids(sources: list, src_grid: tuple, dst_grid: tuple) -> list:
    """Each of ``sources`` (1 to 3 contiguous ``[B, *src_grid, *token]`` tensors of one dtype and
    device) as a new ``[B, *dst_grid, *token]`` tensor: equal where the grid coordinates lie inside
    both grids, zero where they lie outside ``src_grid``."""
    if not 1 <= len(sources) <= 3 or len(src_grid) != len(dst_grid) or len(src_grid) > 3:
        raise ValueError(f"copy_grids takes 1 to 3 tensors over grids of up to 3 axes, got "
                         f"{len(sources)} over {src_grid} -> {dst_grid}")
    axes = len(src_grid)
    outs, rows = [], []
    for t in sources:
        if t.shape[0] != sources[0].shape[0]:
            raise ValueError(f"copy_grids needs one batch size, got {sources[0].shape[0]} and {t.shape[0]}")
        if not t.is_contiguous() or tuple(t.shape[1:1 + axes]) != tuple(src_grid):
            raise ValueError(f"copy_grids needs contiguous [B, *{tuple(src_grid)}, ...] tensors, got "
                             f"shape {tuple(t.shape)} with strides {t.stride()}")
        outs.append(t.new_empty(t.shape[0], *dst_grid, *t.shape[1 + axes:]))
        rows.append(math.prod(t.shape[1 + axes:]))
    n_tokens = sources[0].shape[0] * math.prod(dst_grid)
    if n_tokens == 0 or max(rows) == 0:
        return outs
    padded_in = list(sources) + [sources[0]] * (3 - len(sources))
    padded_out = outs + [outs[0]] * (3 - len(outs))
    padded_rows = rows + [rows[0]] * (3 - len(rows))
    grid = (cdiv(n_tokens, TOKENS), cdiv(max(rows), COLUMNS), len(sources))
    _COPY[grid](*padded_in, *padded_out, *padded_rows, n_tokens, *_three(src_grid), *_three(dst_grid),
                TOKENS=TOKENS, COLUMNS=COLUMNS, num_warps=4)
    return outs
