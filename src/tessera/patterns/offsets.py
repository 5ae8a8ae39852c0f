"""OffsetSet: the set of offsets ``d = q_pos - k_pos`` an offset-only pattern allows.

Causal masks, sliding windows, dilated windows and power-of-two strides depend on ``d`` only.
Over a rectangle of positions ``[q_lo, q_hi] x [k_lo, k_hi]`` the offset takes every integer value
in ``[q_lo - k_hi, q_hi - k_lo]`` and no other, so the rectangle is FULL iff that interval lies
inside the set, EMPTY iff it misses the set, and PARTIAL otherwise: exact, with no element
evaluated. Unions and intersections of offset sets are offset sets, so ``Window | Power`` or
``Causal & Window`` stay exact too.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .tilemap import EMPTY, FULL, PARTIAL

# Stand-in for an unbounded end: far beyond any position a tensor can index.
INF = 1 << 62

# An offset set with more intervals than this is classified by binary search, not by a loop.
_LOOP_INTERVALS = 8


class OffsetSet:
    """A finite union of integer intervals of offsets, normalized: sorted, disjoint, non-adjacent.

    ``intervals`` is a tuple of inclusive ``(lo, hi)`` pairs; ``-INF`` / ``INF`` mark unbounded ends.
    """

    __slots__ = ("intervals",)

    def __init__(self, intervals: Iterable[tuple[int, int]]):
        merged: list[list[int]] = []
        for lo, hi in sorted((max(int(lo), -INF), min(int(hi), INF)) for lo, hi in intervals):
            if lo > hi:
                continue
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.intervals = tuple((lo, hi) for lo, hi in merged)

    def __or__(self, other: "OffsetSet") -> "OffsetSet":
        return OffsetSet(self.intervals + other.intervals)

    def __and__(self, other: "OffsetSet") -> "OffsetSet":
        out, i, j = [], 0, 0
        a, b = self.intervals, other.intervals
        while i < len(a) and j < len(b):
            lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return OffsetSet(out)

    def __eq__(self, other) -> bool:
        return isinstance(other, OffsetSet) and self.intervals == other.intervals

    def __hash__(self) -> int:
        return hash(self.intervals)

    def __repr__(self) -> str:
        def end(x):
            return "inf" if x == INF else "-inf" if x == -INF else str(x)
        return "OffsetSet(" + ", ".join(f"[{end(lo)}, {end(hi)}]" for lo, hi in self.intervals) + ")"

    def contains(self, d: torch.Tensor) -> torch.Tensor:
        """Bool tensor: ``d`` (int64) lies in the set. Tensor ops only (traceable)."""
        out = torch.zeros_like(d, dtype=torch.bool)
        for lo, hi in self.intervals:
            inside = torch.ones_like(out)
            if lo > -INF:
                inside = inside & (d >= lo)
            if hi < INF:
                inside = inside & (d <= hi)
            out = out | inside
        return out

    def classify_range(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """int8 EMPTY/PARTIAL/FULL for the offset intervals ``[a, b]`` (``a <= b``, broadcast)."""
        a, b = torch.broadcast_tensors(a, b)
        if not self.intervals:
            return torch.full(a.shape, EMPTY, dtype=torch.int8, device=a.device)
        if len(self.intervals) <= _LOOP_INTERVALS:
            full = torch.zeros(a.shape, dtype=torch.bool, device=a.device)
            hit = torch.zeros_like(full)
            for lo, hi in self.intervals:
                full |= (a >= lo) & (b <= hi)
                hit |= (a <= hi) & (b >= lo)
        else:
            los = torch.tensor([lo for lo, _ in self.intervals], dtype=torch.int64, device=a.device)
            his = torch.tensor([hi for _, hi in self.intervals], dtype=torch.int64, device=a.device)
            # The first interval ending at or after a decides: it holds a iff lo <= a, and the
            # range meets the set iff that interval starts at or before b.
            first = torch.searchsorted(his, a.contiguous()).clamp(max=len(self.intervals) - 1)
            lo, hi = los[first], his[first]
            hit = (hi >= a) & (lo <= b)
            full = (lo <= a) & (hi >= b)
        return torch.where(full, FULL, torch.where(hit, PARTIAL, EMPTY)).to(torch.int8)

    def key_tile_candidates(self, q_lo: torch.Tensor, q_hi: torch.Tensor, k_len: int,
                            block_n: int) -> torch.Tensor:
        """Key tiles ``[n_q_tiles, W]`` (ascending, ``>= n_k_tiles`` = padding) that may meet the set,
        for query tiles spanning positions ``[q_lo, q_hi]``. Exactly the tiles whose key range
        ``[q_lo - hi, q_hi - lo]`` of some interval overlaps; one run of tiles per interval."""
        nk = -(-k_len // block_n)
        if not self.intervals:
            return torch.full((q_lo.shape[0], 1), nk, dtype=torch.int64, device=q_lo.device)
        runs = []
        q_min, q_max = int(q_lo.min().item()), int(q_hi.max().item())
        for lo, hi in self.intervals:
            if lo > q_max or hi < q_min - (k_len - 1):
                continue                                   # no key in [0, k_len) at these offsets
            first = torch.clamp(q_lo - hi, min=0, max=k_len) // block_n
            last = torch.clamp(q_hi - lo, min=-1, max=k_len - 1)
            last = torch.where(last < 0, -1, last // block_n)
            width = int((last - first + 1).max().clamp(min=1).item())
            if width >= nk:
                return torch.arange(nk, device=q_lo.device).expand(q_lo.shape[0], nk)
            tiles = first[:, None] + torch.arange(width, device=q_lo.device)
            runs.append(torch.where(tiles <= last[:, None], tiles, nk))
        if not runs:
            return torch.full((q_lo.shape[0], 1), nk, dtype=torch.int64, device=q_lo.device)
        columns = torch.cat(runs, dim=1)
        if len(runs) > 1:
            # Runs of neighbouring intervals may overlap.
            from .base import unique_columns
            unique = unique_columns(columns, nk)
            return torch.arange(nk, device=q_lo.device).expand(q_lo.shape[0], nk) if unique is None else unique
        return columns


class OffsetPattern:
    """Mixin for patterns whose rule is membership of ``q_pos - k_pos`` in ``self.offsets()``:
    supplies the exact ``classify``."""

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        return self.offsets().classify_range(q_lo - k_hi, q_hi - k_lo).expand(shape)
