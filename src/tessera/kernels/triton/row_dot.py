"""``delta = rowsum(o * do)``: the backward's per-row correction term, in one Triton pass.

Reads ``o`` and ``do`` in their own dtype (no float copies of either), accumulates in float32 and
writes ``[B, H, S]`` contiguous, the layout the dq and dk/dv kernels index.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .host_math import cdiv, padded_width
from .launcher import Launcher

# Rows per program: memory-bound, so enough rows per program to stream, few programs per row.
ROWS = 64


@triton.jit(do_not_specialize=["S"])
def _row_dot(O, DO, DELTA, s_ob, s_os, s_oh, s_db, s_ds, s_dh, H, S,
             DV: tl.constexpr, DV_PAD: tl.constexpr, ROWS: tl.constexpr):
    i = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = i * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, DV_PAD)
    ok = (rows[:, None] < S) & (cols[None, :] < DV)
    o = tl.load(O + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh
                + rows.to(tl.int64)[:, None] * s_os + cols[None, :], mask=ok, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * s_db + h.to(tl.int64) * s_dh
                 + rows.to(tl.int64)[:, None] * s_ds + cols[None, :], mask=ok, other=0.0)
    total = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * S + rows, total, mask=rows < S)


_ROW_DOT = Launcher(_row_dot)


def row_dot(o: torch.Tensor, do: torch.Tensor) -> torch.Tensor:
    """``(o * do).sum(-1)`` in float32, transposed to ``[B, H, S]`` (contiguous).

    o, do: ``[B, S, H, D_v]`` of one shape, each with a contiguous last dim (any other strides).
    """
    if o.shape != do.shape:
        raise ValueError(f"do must have o's shape {tuple(o.shape)}, got {tuple(do.shape)}")
    if o.stride(-1) != 1 or do.stride(-1) != 1:
        raise ValueError("o and do need a contiguous last (head) dim")
    batch, seq, heads, dim_v = o.shape
    delta = torch.empty(batch, heads, seq, dtype=torch.float32, device=o.device)
    if delta.numel() == 0:
        return delta
    grid = (cdiv(seq, ROWS), batch * heads)
    _ROW_DOT[grid](o, do, delta, o.stride(0), o.stride(1), o.stride(2),
                   do.stride(0), do.stride(1), do.stride(2), heads, seq,
                   DV=dim_v, DV_PAD=padded_width(dim_v), ROWS=ROWS,
                   num_warps=4)
    return delta
