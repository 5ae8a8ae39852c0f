"""Local patterns: causal, sliding window (flash-attn ``window_size``), block-diagonal."""

from __future__ import annotations

import torch

from .base import Pattern, _check_positive_int
from .offsets import INF, OffsetPattern, OffsetSet
from .tilemap import EMPTY, FULL, PARTIAL


def _check_window_side(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= 0 or None (unbounded), got "
                        f"{type(value).__name__} ({value!r})")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 or None (unbounded), got {value}")
    return value


class Causal(OffsetPattern, Pattern):
    """Causal mask: query at position ``q_pos`` sees keys with ``k_pos <= q_pos``.

    With ``S_q != S_k`` the alignment is bottom-right (query row ``r`` has position
    ``r + S_k - S_q``), as in flash-attn >= 2.1: the last query sees every key.
    """

    def offsets(self) -> OffsetSet:
        return OffsetSet([(0, INF)])

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        return (k_pos <= q_pos).expand(shape)

    def __repr__(self) -> str:
        return "Causal()"


class Window(OffsetPattern, Pattern):
    """Sliding window (flash-attn ``window_size=(left, right)``, Longformer / Mistral local attention).

    Query at position ``q_pos`` sees keys with ``q_pos - left <= k_pos <= q_pos + right``;
    ``left`` or ``right`` set to None leaves that side unbounded. ``Window(w)`` (``right=0``) is the
    causal sliding window of ``w + 1`` keys, the query's own key included; ``Window(None, 0)`` is
    ``Causal()``. Positions are bottom-right aligned as for ``Causal``.
    """

    def __init__(self, left: int | None, right: int | None = 0):
        self.left = _check_window_side("left", left)
        self.right = _check_window_side("right", right)

    def offsets(self) -> OffsetSet:
        lo = -INF if self.right is None else -self.right
        hi = INF if self.left is None else self.left
        return OffsetSet([(lo, hi)])

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        d = q_pos - k_pos
        allowed = torch.ones(shape, dtype=torch.bool, device=q_pos.device)
        if self.left is not None:
            allowed = allowed & (d <= self.left)
        if self.right is not None:
            allowed = allowed & (d >= -self.right)
        return allowed

    def __repr__(self) -> str:
        return f"Window({self.left!r}, {self.right!r})"


class Blocked(Pattern):
    """Block-diagonal attention on absolute positions (blockwise / chunked local attention, as in
    Blockwise Transformers and the non-shifted windows of Swin in 1-D): query at ``q_pos`` sees keys
    with ``q_pos // block == k_pos // block``. Not causal inside a block; combine with
    ``Causal()`` (``Blocked(b) & Causal()``) for chunked causal attention."""

    def __init__(self, block: int):
        self.block = _check_positive_int("block", block)

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        return (torch.div(q_pos, self.block, rounding_mode="floor")
                == torch.div(k_pos, self.block, rounding_mode="floor")).expand(shape)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        b = self.block
        qa, qb, ka, kb = q_lo // b, q_hi // b, k_lo // b, k_hi // b
        hit = (qa <= kb) & (ka <= qb)
        full = (qa == qb) & (ka == kb) & (qa == ka)
        out = torch.where(full, FULL, torch.where(hit, PARTIAL, EMPTY)).to(torch.int8)
        return out.expand(shape)

    def key_tile_candidates(self, q_lo, q_hi, k_len, block_n, heads=1):
        b = self.block
        first = torch.clamp(q_lo // b * b, min=0, max=k_len) // block_n
        last = torch.clamp((q_hi // b + 1) * b - 1, min=-1, max=k_len - 1)
        last = torch.where(last < 0, -1, last // block_n)
        nk = -(-k_len // block_n)
        width = int((last - first + 1).max().clamp(min=1).item())
        if width >= nk:
            return None
        tiles = first[:, None] + torch.arange(width, device=q_lo.device)
        return torch.where(tiles <= last[:, None], tiles, nk)

    def __repr__(self) -> str:
        return f"Blocked({self.block})"
