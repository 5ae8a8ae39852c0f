"""Neighborhood attention over 1-, 2- and 3-D token grids (NATTEN semantics), and the analytic
speedup estimate of any pattern's tile map."""

from __future__ import annotations

import torch

from .base import Pattern
from .layout import GridPattern, as_axes, as_flags, as_grid
from .tilemap import TileMap, cdiv

# Cost of a partial tile relative to a full one in ``predicted_speedup`` (in-kernel masking and
# the wasted lanes of masked pairs).
PARTIAL_COST = 1.3


class Neighborhood(GridPattern):
    """Neighborhood attention (NA / DiNA / GNA, as in NATTEN) over a row-major flattened grid.

    Every parameter is an int (all axes) or a tuple with one value per axis. Per axis, with
    ``L = grid[a]``, ``k = kernel[a]``, ``d = dilation[a]``, ``s = stride[a]``, a query at coordinate
    ``x`` sees a key at ``y`` iff ``y % d == x % d`` (same dilation group) and ``y // d`` lies in
    the window ``[start, end)`` computed inside the group, where ``i = x // d`` and the group holds
    ``n = ceil((L - x % d) / d)`` coordinates:

      * non-causal: ``leader = min((i // s) * s + s // 2, n - 1)``,
        ``start = clamp(leader - k // 2, 0, n - k)``, ``end = start + k``: a window of ``k``
        positions centred on the query (for even ``k`` one more on the left), shifted inwards at
        the borders so it always holds ``k`` positions;
      * causal: ``leader = min((i // s) * s + s - 1, n - 1)``,
        ``start = max(leader - k + 1, 0)``, ``end = i + 1``: the ``k`` positions ending at the
        query (fewer at the start), never past the query.

    A key is visible iff the condition holds on every axis. ``stride`` makes the ``s`` queries of a
    stride group share the window of their leader (Generalized Neighborhood Attention; ``stride ==
    kernel`` is blocked attention); ``stride=1`` gives each query its own window, so non-causal
    queries see exactly ``prod(kernel)`` keys. Requires ``kernel * dilation <= grid`` and
    ``stride <= kernel`` on every axis, and ``S_q == S_k == prod(grid)``.

    Tile states are exact: a range of flattened positions is a union of at most ``2n - 1`` boxes,
    and the rule is a conjunction over axes of windows with non-decreasing ends, so each pair of
    boxes is classified by interval arithmetic per axis and dilation group.
    """

    def __init__(self, grid, kernel, dilation=1, stride=1, causal=False):
        self.grid = as_grid(grid)
        n = len(self.grid)
        self.kernel = as_axes("kernel", kernel, n)
        self.dilation = as_axes("dilation", dilation, n)
        self.stride = as_axes("stride", stride, n)
        self.causal = as_flags("causal", causal, n)
        for a in range(n):
            k, d, s, g = self.kernel[a], self.dilation[a], self.stride[a], self.grid[a]
            if k * d > g:
                raise ValueError(f"kernel[{a}] * dilation[{a}] must be <= grid[{a}] = {g}, "
                                 f"got {k} * {d} = {k * d}")
            if s > k:
                raise ValueError(f"stride[{a}] must be <= kernel[{a}] = {k}, got {s}")

    # ---- one axis, in dilation-group coordinates -------------------------------------------
    def _group_length(self, axis: int, group):
        d = self.dilation[axis]
        return (self.grid[axis] - group + d - 1) // d

    def _window(self, axis: int, i, n):
        """``(start, end)`` (exclusive end) of the in-group window of in-group coordinate ``i``."""
        k, s = self.kernel[axis], self.stride[axis]
        if self.causal[axis]:
            leader = torch.minimum((i // s) * s + s - 1, n - 1)
            return torch.clamp(leader - k + 1, min=0), i + 1
        leader = torch.minimum((i // s) * s + s // 2, n - 1)
        start = torch.minimum(torch.clamp(leader - k // 2, min=0), n - k)
        return start, start + k

    def _axis_allowed(self, axis: int, x, y):
        d = self.dilation[axis]
        group = x % d
        start, end = self._window(axis, x // d, self._group_length(axis, group))
        j = y // d
        return (y % d == group) & (j >= start) & (j < end)

    def allowed(self, q, k, head):
        out = None
        for a in range(self.ndim):
            ok = self._axis_allowed(a, q[a], k[a])
            out = ok if out is None else out & ok
        return out

    def axis_states(self, axis, x0, x1, y0, y1, head):
        d = self.dilation[axis]
        # Full needs one dilation group on both sides (single coordinates when d > 1); in-group
        # windows have non-decreasing ends, so the first query's end and the last query's start
        # bound every window.
        g0 = x0 % d
        n0 = self._group_length(axis, g0)
        start_last, _ = self._window(axis, x1 // d, n0)
        _, end_first = self._window(axis, x0 // d, n0)
        full = (start_last <= y0 // d) & (end_first - 1 >= y1 // d) & (y0 % d == g0)
        if d > 1:
            full = full & (x0 == x1) & (y0 == y1)
        # Hit: some dilation group holds queries and keys, and the union of its queries' windows
        # (one interval: consecutive windows overlap or touch since stride <= kernel) meets them.
        group = torch.arange(d, device=x0.device)
        x0g, x1g, y0g, y1g = (t[..., None] for t in (x0, x1, y0, y1))
        i_lo, i_hi = (x0g - group + d - 1) // d, (x1g - group) // d
        j_lo, j_hi = (y0g - group + d - 1) // d, (y1g - group) // d
        n = self._group_length(axis, group)
        first_start, _ = self._window(axis, i_lo, n)
        _, last_end = self._window(axis, i_hi, n)
        hit = (i_lo <= i_hi) & (j_lo <= j_hi) & (first_start <= j_hi) & (last_end - 1 >= j_lo)
        return full, hit.any(-1)

    def axis_key_range(self, axis, x0, x1, head):
        d = self.dilation[axis]
        group = torch.arange(d, device=x0.device)
        i_lo = (x0[..., None] - group + d - 1) // d
        i_hi = (x1[..., None] - group) // d
        n = self._group_length(axis, group)
        present = i_lo <= i_hi
        first_start, _ = self._window(axis, i_lo.clamp(min=0), n)
        _, last_end = self._window(axis, i_hi.clamp(min=0), n)
        big = self.grid[axis]
        lo = torch.where(present, group + first_start * d, big).amin(-1)
        hi = torch.where(present, group + (last_end - 1) * d, -1).amax(-1)
        return lo, hi

    def __repr__(self) -> str:
        return (f"Neighborhood(grid={self.grid}, kernel={self.kernel}, dilation={self.dilation}, "
                f"stride={self.stride}, causal={self.causal})")


class PaddedNeighborhood(Neighborhood):
    """``Neighborhood(extent, kernel, 1, stride, causal)`` at the origin of a larger ``grid``: the
    tokens past ``extent`` on some axis pad the grid up to a multiple of a tile shape, so that
    tiles of that shape divide it (``natten`` runs grids that no tile shape divides this way).

    Windows are taken in ``extent`` by ``Neighborhood``'s rule, for every query of ``grid``: a
    query inside ``extent`` sees exactly what it sees in ``Neighborhood(extent, ...)``, and no
    padding key. A padding query sees the window of the nearest border position (a causal axis
    also lets it see the padding keys up to itself); its output is meant to be dropped, and its
    window is never empty, so it stays finite. Undilated only (a dilation would interleave
    padding tokens into the dilation groups).
    """

    def __init__(self, grid, extent, kernel, stride=1, causal=False):
        super().__init__(grid, kernel, 1, stride, causal)
        self.extent = as_axes("extent", extent, self.ndim)
        for a, (e, g, k) in enumerate(zip(self.extent, self.grid, self.kernel)):
            if not k <= e <= g:
                raise ValueError(f"extent[{a}] must lie in [kernel[{a}], grid[{a}]] = [{k}, {g}], got {e}")

    def _group_length(self, axis: int, group):
        return self.extent[axis] - group

    def __repr__(self) -> str:
        return (f"PaddedNeighborhood(grid={self.grid}, extent={self.extent}, kernel={self.kernel}, "
                f"stride={self.stride}, causal={self.causal})")


def predicted_speedup(pattern: Pattern, q_len: int, k_len: int, block_m: int = 128,
                      block_n: int = 128, num_heads: int = 1, partial_cost: float = PARTIAL_COST,
                      tile_map: TileMap | None = None) -> float:
    """Analytic speedup of a block-sparse kernel over dense attention for ``pattern``.

    ``total / (full + partial_cost * partial)``, where ``total`` is the number of
    (head, query tile, key tile) triples of the problem and ``full`` / ``partial`` count the listed
    tiles of its exact tile map (``tile_map`` when given, else built here). ``partial_cost`` (default
    ``PARTIAL_COST`` = 1.3) prices a masked tile relative to an unmasked one. It ignores per-tile
    launch and bookkeeping costs, so it bounds what a kernel reaches rather than predicting it.
    """
    if isinstance(partial_cost, bool) or not isinstance(partial_cost, (int, float)) or partial_cost <= 0:
        raise ValueError(f"partial_cost must be a positive number, got {partial_cost!r}")
    tiles = tile_map if tile_map is not None else pattern.tile_map(q_len, k_len, block_m, block_n, num_heads)
    heads = num_heads if tile_map is None else tiles.num_heads
    total = heads * cdiv(q_len, block_m) * cdiv(k_len, block_n)
    if tiles.num_heads != heads:
        raise ValueError(f"tile_map must have {heads} heads, got {tiles.num_heads}")
    listed = int(tiles.kv_count.sum().item())
    full = int(tiles.kv_full.sum().item())
    cost = full + partial_cost * (listed - full)
    return float("inf") if cost == 0 else total / cost


__all__ = ["Neighborhood", "PaddedNeighborhood", "predicted_speedup", "PARTIAL_COST"]
