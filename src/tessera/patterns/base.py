"""Pattern: a static rule saying which keys each query may see, and its exact TileMap.

Positions. A pattern speaks in absolute positions. Key ``j`` has position ``j``. Query row ``r`` of
a ``q_len``-long query against a ``k_len``-long key sequence has position ``r + (k_len - q_len)``:
queries are aligned to the *end* of the keys (bottom-right), so a decode query is the newest token.

A pattern implements two things:
  * ``mask(q_pos, k_pos, head)``: elementwise truth, on int64 tensors that broadcast together.
  * ``classify(q_lo, q_hi, k_lo, k_hi, head)``: for rectangles of positions (inclusive bounds,
    int64 tensors that broadcast together) return EMPTY / PARTIAL / FULL exactly, or UNKNOWN where
    it cannot tell analytically; UNKNOWN rectangles are settled by evaluating ``mask`` on them.
Built-in patterns classify every rectangle analytically, so their tile maps cost O(number of
tiles); only compositions (``|``, ``&``) of two partial tiles and mask-defined patterns evaluate
elements, and only inside the tiles in question.

Two optional hooks make tile maps cheaper and compositions exact:
  * ``offsets()``: the set of offsets ``d = q_pos - k_pos`` a pattern allows, as an ``OffsetSet``,
    for patterns that depend on ``d`` only (causal, windows, dilated, power). Unions and
    intersections of such patterns are again offset sets, so they stay exact.
  * ``key_tile_candidates(q_lo, q_hi, k_len, block_n)``: a superset of the key tiles that may hold
    an allowed pair, per query tile, so that a tile map classifies O(listed tiles), not all
    ``n_q_tiles x n_k_tiles``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .tilemap import EMPTY, FULL, PARTIAL, TileMap, cdiv

UNKNOWN = 3

# Elements evaluated at once when settling UNKNOWN tiles by their mask.
_REFINE_ELEMENTS = 1 << 24


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class Pattern:
    """Base class of static attention patterns. Subclasses set ``head_dependent`` when the rule
    differs between heads, and override ``mask`` and ``classify``."""

    head_dependent: bool = False

    # ---- the two things a pattern defines -------------------------------------------------
    def mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """Bool tensor of the broadcast shape of the int64 inputs: may query ``q_pos`` see key ``k_pos``
        in head ``head``."""
        raise NotImplementedError

    def classify(self, q_lo, q_hi, k_lo, k_hi, head) -> torch.Tensor:
        """int8 state (EMPTY/PARTIAL/FULL, or UNKNOWN) of each position rectangle
        ``[q_lo, q_hi] x [k_lo, k_hi]`` (inclusive, non-empty) in head ``head``."""
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        return torch.full(shape, UNKNOWN, dtype=torch.int8, device=q_lo.device)

    # ---- algebra ---------------------------------------------------------------------------
    def __or__(self, other: "Pattern") -> "Pattern":
        from .combine import Union
        return Union(self, other)

    def __and__(self, other: "Pattern") -> "Pattern":
        from .combine import Intersection
        return Intersection(self, other)

    # ---- optional structure ------------------------------------------------------------------
    def offsets(self):
        """The ``OffsetSet`` of allowed ``d = q_pos - k_pos`` when the rule depends on ``d`` only
        (and not on the head), else None."""
        return None

    def key_prefix(self) -> int | None:
        """``n`` when the rule is "keys at positions ``< n`` are visible to every query, no other key"
        (attention sinks), else None. Lets compositions with such a part stay exact."""
        return None

    def check_lengths(self, q_len: int, k_len: int, num_heads: int) -> None:
        """Raise ValueError when the pattern cannot be used for this problem (fixed-size masks)."""

    def key_tile_candidates(self, q_lo: torch.Tensor, q_hi: torch.Tensor, k_len: int,
                            block_n: int, heads: int = 1) -> torch.Tensor | None:
        """Candidate key tiles per query tile, or None for "all of them".

        Args:
            q_lo, q_hi: int64 ``[n_q_tiles]`` first and last query position of each query tile.
            heads: number of heads asked for (used by head-dependent patterns only).
        Returns:
            int64 ``[n_q_tiles, W]`` (the same for every head) or ``[heads, n_q_tiles, W]``: a
            superset of the key tiles holding an allowed pair. Entries ``>= n_k_tiles`` are
            padding and may sit anywhere; the others ascend along the last axis, without repeats.
        """
        offsets = self.offsets()
        if offsets is None:
            return None
        return offsets.key_tile_candidates(q_lo, q_hi, k_len, block_n)

    # ---- derived ---------------------------------------------------------------------------
    def tile_map(self, q_len: int, k_len: int, block_m: int = 128, block_n: int = 128,
                 num_heads: int = 1, device: torch.device | str = "cpu") -> TileMap:
        """The exact TileMap of this pattern for one ``(q_len, k_len)`` problem.

        Returns a TileMap with ``num_heads`` heads (every head the same unless the pattern is
        head-dependent). A key tile is listed iff at least one of its pairs is allowed and flagged
        full iff all of its (existing) pairs are allowed.
        """
        columns, states = self._candidate_states(q_len, k_len, block_m, block_n, num_heads, device)
        tiles = TileMap.from_candidates(columns, states, q_len, k_len, block_m, block_n)
        if tiles.num_heads != num_heads:
            tiles = TileMap(*(t.expand(num_heads, *t.shape[1:]).contiguous()
                              for t in (tiles.kv_count, tiles.kv_index, tiles.kv_full)),
                            q_len, k_len, block_m, block_n)
        return tiles

    def tile_states(self, q_len: int, k_len: int, block_m: int, block_n: int, num_heads: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """Dense int8 tile states ``[num_heads, n_q_tiles, n_k_tiles]``: 0 empty, 1 partial, 2 full."""
        columns, states = self._candidate_states(q_len, k_len, block_m, block_n, num_heads, device)
        heads, nq, width = states.shape
        nk = cdiv(k_len, block_n)
        if width != nk or columns.dim() != 1:
            dense = torch.zeros(heads, nq, nk + 1, dtype=torch.int8, device=states.device)
            states = dense.scatter_(-1, columns.expand(states.shape).clamp(max=nk), states)[..., :nk]
        return states.expand(num_heads, nq, nk).contiguous()

    def _candidate_states(self, q_len: int, k_len: int, block_m: int, block_n: int, num_heads: int,
                          device) -> tuple[torch.Tensor, torch.Tensor]:
        """(columns, states): candidate key tiles (``[n_q_tiles, W]``, ``[heads, n_q_tiles, W]``, or
        ``[n_k_tiles]`` for all tiles; see ``key_tile_candidates``) and exact int8 states ``[heads, n_q_tiles, W]`` of those candidates, where ``heads`` is
        ``num_heads`` for head-dependent patterns and 1 otherwise. Padding candidates are EMPTY."""
        _check_positive_int("q_len", q_len)
        _check_positive_int("k_len", k_len)
        _check_positive_int("block_m", block_m)
        _check_positive_int("block_n", block_n)
        _check_positive_int("num_heads", num_heads)
        self.check_lengths(q_len, k_len, num_heads)
        offset = k_len - q_len
        nq, nk = cdiv(q_len, block_m), cdiv(k_len, block_n)
        m = torch.arange(nq, device=device, dtype=torch.int64)
        q_lo = m * block_m + offset
        q_hi = torch.clamp((m + 1) * block_m, max=q_len) - 1 + offset
        heads = num_heads if self.head_dependent else 1
        head = torch.arange(heads, device=device, dtype=torch.int64).view(heads, 1, 1)
        columns = self.key_tile_candidates(q_lo, q_hi, k_len, block_n, heads)
        if columns is None or columns.shape[-1] >= nk:
            columns = torch.arange(nk, device=device, dtype=torch.int64)
            col = columns.view(1, nk)
            padding = None
        else:
            col = columns.clamp(max=nk - 1)
            padding = columns >= nk
        k_lo = col * block_n
        k_hi = torch.clamp((col + 1) * block_n, max=k_len) - 1
        states = self.classify(q_lo.view(-1, 1), q_hi.view(-1, 1), k_lo, k_hi, head)
        states = states.to(torch.int8).expand(heads, nq, k_lo.shape[-1]).clone()
        if padding is not None:
            states.masked_fill_(padding, EMPTY)
        unknown = (states == UNKNOWN).nonzero(as_tuple=True)
        if unknown[0].numel():
            hh, mm, ww = unknown
            kk = col.expand(heads, nq, col.shape[-1])[hh, mm, ww]
            states[hh, mm, ww] = self._settle(q_lo[mm], q_hi[mm], kk * block_n,
                                              torch.clamp((kk + 1) * block_n, max=k_len) - 1, hh,
                                              block_m, block_n)
        return columns, states

    def _settle(self, q_lo, q_hi, k_lo, k_hi, head, block_m: int, block_n: int) -> torch.Tensor:
        """Tile states by evaluating ``mask`` on every pair of the given tiles (1-D tile lists)."""
        out = torch.empty(q_lo.shape[0], dtype=torch.int8, device=q_lo.device)
        step = max(1, _REFINE_ELEMENTS // (block_m * block_n))
        rows = torch.arange(block_m, device=q_lo.device)
        cols = torch.arange(block_n, device=q_lo.device)
        for s in range(0, q_lo.shape[0], step):
            sl = slice(s, s + step)
            qp = q_lo[sl, None] + rows                                   # [U, bm]
            kp = k_lo[sl, None] + cols                                   # [U, bn]
            valid = (qp <= q_hi[sl, None])[:, :, None] & (kp <= k_hi[sl, None])[:, None, :]
            allowed = self.mask(qp[:, :, None], kp[:, None, :], head[sl, None, None]) & valid
            any_ = allowed.flatten(1).any(1)
            all_ = (allowed | ~valid).flatten(1).all(1)
            out[sl] = torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8)
        return out

    def density(self, q_len: int, k_len: int, num_heads: int = 1) -> float:
        """Fraction of (query, key) pairs allowed, averaged over heads. Exact; evaluates elements
        only inside partial tiles."""
        block = 64
        heads = num_heads if self.head_dependent else 1
        self.check_lengths(q_len, k_len, num_heads)
        states = self.tile_states(q_len, k_len, block, block, heads)
        offset = k_len - q_len
        nq, nk = states.shape[1:]
        q_rows = torch.clamp(torch.arange(1, nq + 1) * block, max=q_len) - torch.arange(nq) * block
        k_cols = torch.clamp(torch.arange(1, nk + 1) * block, max=k_len) - torch.arange(nk) * block
        area = q_rows[:, None] * k_cols[None, :]
        allowed = (area * (states == FULL)).sum().item()
        hh, mm, nn = (states == PARTIAL).nonzero(as_tuple=True)
        rows = torch.arange(block)
        for s in range(0, hh.numel(), 4096):
            h, m, n = hh[s:s + 4096], mm[s:s + 4096], nn[s:s + 4096]
            qp = m[:, None] * block + rows + offset
            kp = n[:, None] * block + rows
            valid = (qp < q_len + offset)[:, :, None] & (kp < k_len)[:, None, :]
            allowed += (self.mask(qp[:, :, None], kp[:, None, :], h[:, None, None]) & valid).sum().item()
        return allowed / (q_len * k_len * heads)

    def dense_mask(self, q_len: int, k_len: int, num_heads: int = 1, device="cpu") -> torch.Tensor:
        """Materialized bool mask ``[num_heads, q_len, k_len]``, for tests and pictures of small sizes."""
        _check_positive_int("q_len", q_len)
        _check_positive_int("k_len", k_len)
        _check_positive_int("num_heads", num_heads)
        self.check_lengths(q_len, k_len, num_heads)
        q = torch.arange(q_len, device=device).view(1, q_len, 1) + (k_len - q_len)
        k = torch.arange(k_len, device=device).view(1, 1, k_len)
        h = torch.arange(num_heads, device=device).view(num_heads, 1, 1)
        return self.mask(q, k, h).expand(num_heads, q_len, k_len)


class Dense(Pattern):
    """Every query sees every key."""

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        return torch.ones(shape, dtype=torch.bool, device=q_pos.device)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        return torch.full(shape, FULL, dtype=torch.int8, device=q_lo.device)

    def __repr__(self) -> str:
        return "Dense()"


def as_pattern_list(patterns: Sequence[Pattern], name: str) -> list[Pattern]:
    items = list(patterns)
    if not items:
        raise ValueError(f"{name} must hold at least one Pattern, got an empty sequence")
    for i, p in enumerate(items):
        if not isinstance(p, Pattern):
            raise TypeError(f"{name}[{i}] must be a Pattern, got {type(p).__name__}")
    return items


def unique_columns(columns: torch.Tensor, n_k_tiles: int) -> torch.Tensor | None:
    """Sort candidate key tiles along the last axis and turn repeats into padding (``n_k_tiles``);
    None when as many distinct candidates remain as there are key tiles."""
    columns = columns.clamp(max=n_k_tiles).sort(dim=-1).values
    repeat = torch.zeros_like(columns, dtype=torch.bool)
    repeat[..., 1:] = columns[..., 1:] == columns[..., :-1]
    columns = columns.masked_fill_(repeat, n_k_tiles)
    width = max(int((columns < n_k_tiles).sum(-1).max().item()), 1)
    if width >= n_k_tiles:
        return None
    if 2 * width <= columns.shape[-1]:
        columns = columns.sort(dim=-1).values[..., :width]          # trim mostly-padding columns
    return columns


def merge_candidates(candidates: Sequence[torch.Tensor | None], k_len: int, block_n: int) -> torch.Tensor | None:
    """Union of several ``key_tile_candidates`` answers (None = all tiles)."""
    if any(c is None for c in candidates):
        return None
    if len(candidates) == 1:
        return candidates[0]
    lead = torch.broadcast_shapes(*(c.shape[:-1] for c in candidates))
    columns = torch.cat([c.expand(*lead, c.shape[-1]) for c in candidates], dim=-1)
    return unique_columns(columns, cdiv(k_len, block_n))
