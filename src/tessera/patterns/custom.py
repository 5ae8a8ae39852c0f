"""Patterns given by the user: a materialized boolean mask, or a FlexAttention ``mask_mod``."""

from __future__ import annotations

from typing import Callable

import torch

from .base import UNKNOWN, Pattern
from .tilemap import EMPTY, FULL, PARTIAL


class FromMask(Pattern):
    """A fixed boolean mask: ``mask[row, col]`` (or ``mask[h, row, col]`` per head) says whether query
    row ``row`` sees key ``col``.

    Args:
        mask: bool ``[S_q, S_k]`` (every head) or ``[H, S_q, S_k]`` (head ``h`` uses ``mask[h]``).
    Only usable with ``q_len == S_q``, ``k_len == S_k`` (and ``num_heads == H`` for a per-head mask);
    other lengths raise ValueError. Row ``row`` is the query at position ``row + S_k - S_q``, as for
    every pattern. Tile states are exact, from a summed-area table of the mask (O(S_q * S_k) once).
    """

    def __init__(self, mask: torch.Tensor):
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
        if mask.dim() not in (2, 3):
            raise ValueError(f"mask must be [S_q, S_k] or [H, S_q, S_k], got shape {tuple(mask.shape)}")
        if mask.numel() == 0:
            raise ValueError(f"mask must be non-empty, got shape {tuple(mask.shape)}")
        self.head_dependent = mask.dim() == 3 and mask.shape[0] > 1
        self.tensor = mask if mask.dim() == 3 else mask.unsqueeze(0)
        self.num_heads, self.q_len, self.k_len = self.tensor.shape
        self._sums: dict[torch.device, torch.Tensor] = {}

    def check_lengths(self, q_len: int, k_len: int, num_heads: int) -> None:
        if (q_len, k_len) != (self.q_len, self.k_len):
            raise ValueError(f"(q_len, k_len) must be {(self.q_len, self.k_len)} for this FromMask "
                             f"pattern, got {(q_len, k_len)}")
        if self.head_dependent and num_heads != self.num_heads:
            raise ValueError(f"num_heads must be {self.num_heads} for this per-head FromMask pattern, "
                             f"got {num_heads}")

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        tensor = self.tensor.to(q_pos.device)
        row = q_pos - (self.k_len - self.q_len)
        inside = (row >= 0) & (row < self.q_len) & (k_pos >= 0) & (k_pos < self.k_len)
        flat = (((head % self.num_heads) * self.q_len + row.clamp(0, self.q_len - 1)) * self.k_len
                + k_pos.clamp(0, self.k_len - 1))
        value = torch.take(tensor, flat)
        return (value & inside).expand(shape)

    def _summed_area(self, device) -> torch.Tensor:
        device = torch.device(device)
        if device not in self._sums:
            h, s_q, s_k = self.tensor.shape
            sums = torch.zeros(h, s_q + 1, s_k + 1, dtype=torch.int64, device=device)
            sums[:, 1:, 1:] = self.tensor.to(device).long().cumsum(1).cumsum(2)
            self._sums[device] = sums
        return self._sums[device]

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        sums = self._summed_area(q_lo.device)
        offset = self.k_len - self.q_len
        r0 = (q_lo - offset).clamp(0, self.q_len)
        r1 = torch.maximum((q_hi - offset + 1).clamp(max=self.q_len), r0)
        c0 = k_lo.clamp(0, self.k_len)
        c1 = torch.maximum((k_hi + 1).clamp(max=self.k_len), c0)
        h = head % self.num_heads
        count = sums[h, r1, c1] - sums[h, r0, c1] - sums[h, r1, c0] + sums[h, r0, c0]
        area = (r1 - r0) * (c1 - c0)
        out = torch.where(count == 0, EMPTY, torch.where(count == area, FULL, PARTIAL))
        return out.to(torch.int8).expand(shape)

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in (self.tensor.shape if self.head_dependent else self.tensor.shape[1:]))
        return f"FromMask(<bool {shape}>)"


class FromFlex(Pattern):
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` as a pattern.

    ``q_idx`` receives the query *position* (``row + S_k - S_q``, bottom-right aligned), which is
    the query row when ``S_q == S_k``; FlexAttention itself passes the row. ``b`` receives 0 (a
    pattern does not depend on the batch). ``mask_mod`` must be elementwise tensor code that
    broadcasts (as FlexAttention's own mask_mods do). Tile states evaluate ``mask_mod`` on every
    element (in chunks); give ``head_dependent=False`` when the mask ignores ``h`` to evaluate one
    head only.
    """

    def __init__(self, mask_mod: Callable, *, head_dependent: bool = True):
        if not callable(mask_mod):
            raise TypeError(f"mask_mod must be callable (b, h, q_idx, kv_idx) -> bool tensor, "
                            f"got {type(mask_mod).__name__}")
        if not isinstance(head_dependent, bool):
            raise TypeError(f"head_dependent must be a bool, got {type(head_dependent).__name__}")
        self.mask_mod = mask_mod
        self.head_dependent = head_dependent

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        batch = torch.zeros((), dtype=torch.int64, device=q_pos.device)
        out = self.mask_mod(batch, head, q_pos, k_pos)
        if not isinstance(out, torch.Tensor):
            out = torch.tensor(bool(out), device=q_pos.device)
        return out.to(torch.bool).expand(shape)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        return torch.full(shape, UNKNOWN, dtype=torch.int8, device=q_lo.device)

    def __repr__(self) -> str:
        name = getattr(self.mask_mod, "__name__", type(self.mask_mod).__name__)
        return f"FromFlex({name})"
