"""Attention sinks: the first keys of the sequence, visible to every query."""

from __future__ import annotations

import torch

from .base import Pattern, _check_positive_int
from .tilemap import EMPTY, FULL, PARTIAL, cdiv


class Sinks(Pattern):
    """Attention sinks (StreamingLLM, Xiao et al. 2023): every query sees the keys at positions
    ``k_pos < n``, whatever its own position (also future ones for a query earlier than ``n``; use
    ``(Window(w) | Sinks(n)) & Causal()`` to keep those out). Usually combined with a window:
    ``Window(w) | Sinks(n)``."""

    def __init__(self, n: int):
        self.n = _check_positive_int("n", n)

    def key_prefix(self) -> int:
        return self.n

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        return (k_pos < self.n).expand(shape)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        out = torch.where(k_hi < self.n, FULL, torch.where(k_lo < self.n, PARTIAL, EMPTY))
        return out.to(torch.int8).expand(shape)

    def key_tile_candidates(self, q_lo, q_hi, k_len, block_n, heads=1):
        width = cdiv(min(self.n, k_len), block_n)
        if width >= cdiv(k_len, block_n):
            return None
        return torch.arange(width, device=q_lo.device).expand(q_lo.shape[0], width)

    def __repr__(self) -> str:
        return f"Sinks({self.n})"
