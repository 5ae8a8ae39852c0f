"""Copies that reorder the tokens of a ``[*lead, S, *row]`` tensor, moving whole token rows.

A token's row (its heads and channels, ``prod(row)`` elements) is contiguous in the tensors the
attention takes, and a reorder moves rows, never splits one. Copied element by element, a 16-bit
row of 64 elements is 64 loads and stores; viewed as 16-byte elements it is 8. ``as_wide_rows``
gives that view where the tensor allows it (contiguous rows of a multiple of 4 bytes, aligned),
``from_wide_rows`` takes it back; ``WIDE_ROWS = False`` (environment ``TESSERA_WIDE_ROWS=0``)
copies element by element, for comparison.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Optional

import torch

WIDE_ROWS = os.environ.get("TESSERA_WIDE_ROWS", "1") == "1"

# Element types of 16, 8 and 4 bytes, widest first: a row is viewed in the widest that divides it.
_WIDE_TYPES = (torch.complex128, torch.int64, torch.int32)


def as_wide_rows(x: torch.Tensor, dim: int) -> Optional[torch.Tensor]:
    """``x [*lead, S, *row]`` (``S`` at ``dim``) viewed as ``[*lead, S, W]`` of the widest of 16-,
    8- and 4-byte elements that holds each token's row whole, or None where no such view exists
    (rows not contiguous, an odd number of 16-bit elements, a misaligned start or stride), where
    ``WIDE_ROWS`` is off, or while traced by torch.compile (its own copy kernels move rows)."""
    if not WIDE_ROWS or torch.compiler.is_compiling():
        return None
    if not 0 <= dim < x.dim():
        raise ValueError(f"dim must be in [0, {x.dim()}), got {dim}")
    start = x.storage_offset() * x.element_size() % _WIDE_TYPES[0].itemsize
    plan = _wide_plan(tuple(x.shape), x.stride(), x.element_size(), start, dim)
    if plan is None:
        return None
    tokens_shape, wide = plan
    return x.reshape(tokens_shape).view(wide)


def from_wide_rows(wide: torch.Tensor, dtype: torch.dtype, shape) -> torch.Tensor:
    """A copy's result in wide rows (``[*lead, S, W]``) viewed back as ``dtype`` of ``shape``."""
    return wide.view(dtype).reshape(shape)


@functools.lru_cache(maxsize=256)
def _wide_plan(shape: tuple, stride: tuple, itemsize: int, start: int, dim: int):
    """``(tokens_shape, wide dtype)`` of ``as_wide_rows`` for a tensor of this shape, stride,
    element size and start offset (bytes, modulo 16); None where no wide view exists."""
    row_bytes = math.prod(shape[dim + 1:]) * itemsize
    if row_bytes == 0 or not _rows_contiguous(shape, stride, dim):
        return None
    for wide in _WIDE_TYPES:
        width = wide.itemsize
        ratio = width // itemsize
        if row_bytes % width == 0 and start % width == 0 and ratio > 1 and _strides_divisible(shape, stride, dim, ratio):
            return (*shape[:dim + 1], math.prod(shape[dim + 1:])), wide
    return None


def _strides_divisible(shape, stride, dim: int, ratio: int) -> bool:
    return all(size == 1 or step % ratio == 0 for size, step in zip(shape[:dim + 1], stride[:dim + 1]))


def _rows_contiguous(shape, stride, dim: int) -> bool:
    expected = 1
    for size, step in zip(reversed(shape[dim + 1:]), reversed(stride[dim + 1:])):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True
