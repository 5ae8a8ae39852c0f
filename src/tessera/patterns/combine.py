"""Pattern composition: union ``a | b``, intersection ``a & b``, and per-head assignment."""

from __future__ import annotations

from typing import Sequence

import torch

from .base import UNKNOWN, Pattern, as_pattern_list
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


class Union(Pattern):
    """Pairs allowed by either part."""

    def __init__(self, a: Pattern, b: Pattern):
        self.parts = as_pattern_list([a, b], "operands of |")
        self.head_dependent = any(p.head_dependent for p in self.parts)

    def mask(self, q_pos, k_pos, head):
        return self.parts[0].mask(q_pos, k_pos, head) | self.parts[1].mask(q_pos, k_pos, head)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        a, b = (p.classify(q_lo, q_hi, k_lo, k_hi, head) for p in self.parts)
        return _combine(_UNION, a, b)

    def __repr__(self) -> str:
        return f"({self.parts[0]!r} | {self.parts[1]!r})"


class Intersection(Pattern):
    """Pairs allowed by both parts."""

    def __init__(self, a: Pattern, b: Pattern):
        self.parts = as_pattern_list([a, b], "operands of &")
        self.head_dependent = any(p.head_dependent for p in self.parts)

    def mask(self, q_pos, k_pos, head):
        return self.parts[0].mask(q_pos, k_pos, head) & self.parts[1].mask(q_pos, k_pos, head)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        a, b = (p.classify(q_lo, q_hi, k_lo, k_hi, head) for p in self.parts)
        return _combine(_INTERSECTION, a, b)

    def __repr__(self) -> str:
        return f"({self.parts[0]!r} & {self.parts[1]!r})"


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

    def mask(self, q_pos, k_pos, head):
        return self._select([p.mask(q_pos, k_pos, head) for p in self.patterns], head)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        return self._select([p.classify(q_lo, q_hi, k_lo, k_hi, head) for p in self.patterns], head)

    def __repr__(self) -> str:
        return f"PerHead({self.patterns!r})"
