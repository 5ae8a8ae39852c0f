"""Integer helpers for the host side of kernel launches.

``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr functions: called from Python they
unwrap their arguments through Triton's frontend first, several microseconds per call on a slow
host, and a launch path calls them several times. These are the plain-integer versions.
"""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ``b``."""
    return -(-a // b)


def padded_width(n: int) -> int:
    """The width a head (or rank) dim of ``n`` takes inside a kernel tile: the next power of two,
    at least 16 (the smallest dot operand)."""
    return max(16, 1 << (n - 1).bit_length()) if n > 1 else 16
