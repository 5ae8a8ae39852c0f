"""``delta = rowsum(o * do)``: the backward's per-row correction term, in one Triton pass.

Reads ``o`` and ``do`` in their own dtype (no float copies of either), accumulates in float32 and
writes ``[B, H, S]`` contiguous, the layout the dq and dk/dv kernels index.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .host_math import cdiv, padded_width
from .launcher import BoundLaunches, Launcher

# Rows per program: memory-bound, so enough rows per program to stream, few programs per row.
ROWS = 64


@triton.jit(do_not_specialize=["S", "G1", "G2", "E0", "E1", "E2"])
def _row_dot(O, DO, DELTA, s_ob, s_os, s_oh, s_db, s_ds, s_dh, H, S, G1, G2, E0, E1, E2,
             DV: tl.constexpr, DV_PAD: tl.constexpr, ROWS: tl.constexpr, EXTENT_ONLY: tl.constexpr):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = i * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, DV_PAD)
    inside = rows < S
    source = rows
    if EXTENT_ONLY:
        c2 = rows % G2
        c1 = (rows // G2) % G1
        c0 = rows // (G1 * G2)
        inside = inside & (c0 < E0) & (c1 < E1) & (c2 < E2)
        source = (c0 * E1 + c1) * E2 + c2
    ok = inside[:, None] & (cols[None, :] < DV)
    o = tl.load(O + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh
                + source.to(tl.int64)[:, None] * s_os + cols[None, :], mask=ok, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * s_db + h.to(tl.int64) * s_dh
                 + source.to(tl.int64)[:, None] * s_ds + cols[None, :], mask=ok, other=0.0)
    total = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * S + rows, total, mask=rows < S)


_ROW_DOT = Launcher(_row_dot)
# (shapes, strides, dtypes, device, rows, grid, extent, 16-byte alignment of o and do) -> the launch
# with only o, do and delta filled in per call (``launcher.BoundPlainLaunch``).
_BOUND = BoundLaunches()


def row_dot(o: torch.Tensor, do: torch.Tensor, grid=None, extent=None) -> torch.Tensor:
    """``(o * do).sum(-1)`` in float32, transposed to ``[B, H, S]`` (contiguous).

    o, do: ``[B, S, H, D_v]`` of one shape, each with a contiguous last dim (any other strides).
    With ``grid`` and ``extent`` (3 ints each: a ``PaddedNeighborhood``'s grid and extent) o and
    do hold only the extent's tokens (``S = prod(extent)``, row-major over the extent) and delta
    covers the grid: ``[B, H, prod(grid)]`` in the grid's row-major order, 0 past the extent.
    """
    if o.shape != do.shape:
        raise ValueError(f"do must have o's shape {tuple(o.shape)}, got {tuple(do.shape)}")
    if o.stride(-1) != 1 or do.stride(-1) != 1:
        raise ValueError("o and do need a contiguous last (head) dim")
    batch, seq, heads, dim_v = o.shape
    extent_only = extent is not None
    if extent_only:
        if len(grid) != 3 or len(extent) != 3 or any(not 0 < e <= g for e, g in zip(extent, grid)):
            raise ValueError(f"row_dot: extent must lie inside grid (3 axes each), got {extent} in {grid}")
        if seq != math.prod(extent):
            raise ValueError(f"row_dot: o must hold the extent's {math.prod(extent)} tokens, got {seq}")
        seq = math.prod(grid)
    g1, g2, (e0, e1, e2) = (grid[1], grid[2], extent) if extent_only else (1, 1, (1, 1, 1))
    delta = torch.empty(batch, heads, seq, dtype=torch.float32, device=o.device)
    if delta.numel() == 0:
        return delta
    key = (o.shape, o.stride(), do.stride(), o.dtype, do.dtype, o.device, seq, g1, g2, e0, e1, e2,
           extent_only, o.data_ptr() % 16 == 0, do.data_ptr() % 16 == 0)
    bound = _BOUND.get(key)
    if bound is not None:
        bound(o, do, delta)
        return delta
    launch = (cdiv(seq, ROWS), batch * heads)
    args = (o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1),
            do.stride(2), heads, seq, g1, g2, e0, e1, e2)
    options = dict(DV=dim_v, DV_PAD=padded_width(dim_v), ROWS=ROWS, EXTENT_ONLY=extent_only, num_warps=4)
    _ROW_DOT[launch](*args, **options)
    _BOUND.remember(key, _ROW_DOT, launch, args, options, live=(0, 1, 2))
    return delta
