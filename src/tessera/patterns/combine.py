"""Pattern composition: union ``a | b``, intersection ``a & b``, and per-head assignment.

Composition stays exact where structure allows: offset-only parts (``offsets()``) merge into one
offset set, and key-prefix parts (``Sinks``) are handled by splitting each rectangle at the prefix
end. Only two partial tiles of otherwise unrelated parts give UNKNOWN, settled by the mask.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import UNKNOWN, Pattern, as_pattern_list, merge_candidates
from .offsets import OffsetSet
from .tilemap import EMPTY, FULL, PARTIAL

E, P, F, U = EMPTY, PARTIAL, FULL, UNKNOWN
# Tile state of a union / intersection from the two parts' states, indexed [a, b]. Two partial
# tiles are UNKNOWN: their union may be full, their intersection empty.
_UNION = torch.tensor([[E, P, F, U],
                       [P, U, F, U],
                       [F, F, F, F],
                       [U, U, F, U]], dtype=torch.int8)
_INTERSECTION = torch.tensor([[E, E, E, E],
                              [E, U, P, U],
                              [E, P, F, U],
                              [E, U, U, U]], dtype=torch.int8)


def _combine(table: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = torch.broadcast_tensors(a.long(), b.long())
    return table.to(a.device)[a, b]


class _OffsetTerm(Pattern):
    """The merged offset set of the offset-only parts of a composition (classification only)."""

    def __init__(self, offsets: OffsetSet):
        self._offsets = offsets

    def offsets(self) -> OffsetSet:
        return self._offsets

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        return self._offsets.classify_range(q_lo - k_hi, q_hi - k_lo).expand(shape)


class _Composition(Pattern):
    """Shared machinery of Union and Intersection over the flattened list of their parts."""

    _table: torch.Tensor
    _symbol: str

    def __init__(self, a: Pattern, b: Pattern):
        self.parts = as_pattern_list([a, b], f"operands of {self._symbol}")
        self.head_dependent = any(p.head_dependent for p in self.parts)
        self._terms = None

    def _flat_parts(self) -> list[Pattern]:
        out = []
        for p in self.parts:
            out.extend(p._flat_parts() if type(p) is type(self) else [p])
        return out

    def _merge_offsets(self, sets: list[OffsetSet]) -> OffsetSet:
        raise NotImplementedError

    def _merge_prefixes(self, prefixes: list[int]) -> int:
        raise NotImplementedError

    def _grouped(self):
        """(offset term or None, key prefix or None, other parts)."""
        if self._terms is None:
            sets, prefixes, others = [], [], []
            for p in self._flat_parts():
                if p.offsets() is not None:
                    sets.append(p.offsets())
                elif p.key_prefix() is not None:
                    prefixes.append(p.key_prefix())
                else:
                    others.append(p)
            offset = self._merge_offsets(sets) if sets else None
            prefix = self._merge_prefixes(prefixes) if prefixes else None
            self._terms = (offset, prefix, others)
        return self._terms

    def offsets(self) -> OffsetSet | None:
        offset, prefix, others = self._grouped()
        return offset if prefix is None and not others else None

    def key_prefix(self) -> int | None:
        offset, prefix, others = self._grouped()
        return prefix if offset is None and not others else None

    def _classify_rest(self, q_lo, q_hi, k_lo, k_hi, head):
        """State of the offset term and other parts combined (None when there are none)."""
        offset, _, others = self._grouped()
        parts = ([_OffsetTerm(offset)] if offset is not None else []) + others
        state = None
        for p in parts:
            s = p.classify(q_lo, q_hi, k_lo, k_hi, head)
            state = s if state is None else _combine(self._table, state, s)
        return state

    def check_lengths(self, q_len, k_len, num_heads):
        for p in self.parts:
            p.check_lengths(q_len, k_len, num_heads)

    def mask(self, q_pos, k_pos, head):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"({self.parts[0]!r} {self._symbol} {self.parts[1]!r})"


class Union(_Composition):
    """Pairs allowed by either part."""

    _table = _UNION
    _symbol = "|"

    def _merge_offsets(self, sets):
        out = sets[0]
        for s in sets[1:]:
            out = out | s
        return out

    def _merge_prefixes(self, prefixes):
        return max(prefixes)

    def mask(self, q_pos, k_pos, head):
        return self.parts[0].mask(q_pos, k_pos, head) | self.parts[1].mask(q_pos, k_pos, head)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        _, prefix, _ = self._grouped()
        if prefix is None:
            return self._classify_rest(q_lo, q_hi, k_lo, k_hi, head).expand(shape)
        # Keys below the prefix end are all allowed; the rest of the rectangle is the other parts'.
        has_left, has_right = k_lo < prefix, k_hi >= prefix
        rest = self._classify_rest(q_lo, q_hi, torch.clamp(k_lo, min=prefix), k_hi, head)
        if rest is None:
            rest = torch.full((), EMPTY, dtype=torch.int8, device=q_lo.device)
        both = torch.where(rest == FULL, FULL, torch.where(rest == UNKNOWN, UNKNOWN, PARTIAL))
        out = torch.where(has_left, torch.where(has_right, both, FULL), rest)
        return out.to(torch.int8).expand(shape)

    def key_tile_candidates(self, q_lo, q_hi, k_len, block_n, heads=1):
        return merge_candidates([p.key_tile_candidates(q_lo, q_hi, k_len, block_n, heads) for p in self.parts],
                                k_len, block_n)


class Intersection(_Composition):
    """Pairs allowed by both parts."""

    _table = _INTERSECTION
    _symbol = "&"

    def _merge_offsets(self, sets):
        out = sets[0]
        for s in sets[1:]:
            out = out & s
        return out

    def _merge_prefixes(self, prefixes):
        return min(prefixes)

    def mask(self, q_pos, k_pos, head):
        return self.parts[0].mask(q_pos, k_pos, head) & self.parts[1].mask(q_pos, k_pos, head)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        _, prefix, _ = self._grouped()
        if prefix is None:
            return self._classify_rest(q_lo, q_hi, k_lo, k_hi, head).expand(shape)
        # Keys at or past the prefix end are all masked; below it the other parts decide.
        has_left, has_right = k_lo < prefix, k_hi >= prefix
        rest = self._classify_rest(q_lo, q_hi, k_lo, torch.clamp(k_hi, max=prefix - 1), head)
        if rest is None:
            rest = torch.full((), FULL, dtype=torch.int8, device=q_lo.device)
        both = torch.where(rest == EMPTY, EMPTY, torch.where(rest == UNKNOWN, UNKNOWN, PARTIAL))
        out = torch.where(has_left, torch.where(has_right, both, rest), EMPTY)
        return out.to(torch.int8).expand(shape)

    def key_tile_candidates(self, q_lo, q_hi, k_len, block_n, heads=1):
        best = None
        for p in self.parts:
            c = p.key_tile_candidates(q_lo, q_hi, k_len, block_n, heads)
            if c is not None and (best is None or c.shape[-1] < best.shape[-1]):
                best = c
        return best


class PerHead(Pattern):
    """A different pattern per head: head ``h`` follows ``patterns[h % len(patterns)]``.

    With as many patterns as heads each head gets its own; with fewer, they repeat cyclically
    (S2-style shards, MoA spans, HiLo groups). Each part is evaluated with the global head index.
    """

    head_dependent = True

    def __init__(self, patterns: Sequence[Pattern]):
        self.patterns = as_pattern_list(patterns, "patterns")

    def _select(self, results: list[torch.Tensor], head: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(*(r.shape for r in results), head.shape)
        which = (head % len(self.patterns)).expand(shape)
        out = results[0].expand(shape).clone()
        for i, r in enumerate(results[1:], start=1):
            out = torch.where(which == i, r.expand(shape), out)
        return out

    def check_lengths(self, q_len, k_len, num_heads):
        for p in self.patterns:
            p.check_lengths(q_len, k_len, num_heads)

    def mask(self, q_pos, k_pos, head):
        return self._select([p.mask(q_pos, k_pos, head) for p in self.patterns], head)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        return self._select([p.classify(q_lo, q_hi, k_lo, k_hi, head) for p in self.patterns], head)

    def key_tile_candidates(self, q_lo, q_hi, k_len, block_n, heads=1):
        return merge_candidates([p.key_tile_candidates(q_lo, q_hi, k_len, block_n, heads) for p in self.patterns],
                                k_len, block_n)

    def __repr__(self) -> str:
        return f"PerHead({self.patterns!r})"
