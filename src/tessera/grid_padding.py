"""Zero padding of token grids up to whole tiles, and its inverse.

``natten`` runs a grid that no tile shape divides on the grid padded up to whole tiles
(``PaddedNeighborhood``): q, k and v go in padded (``pad_grid``), o and lse come back cut to the
grid (``unpad_grid``). Both are single autograd-aware torch ops (``constant_pad_nd``, a slice and a
copy), so their host cost stays a few microseconds per call. On an H200, for the suite's
100 x 100 grid padded to 104 x 104 (bf16, H = 16, D = 128), padding q, k and v takes 0.19 ms
of GPU time and cutting o 0.05 ms, against 0.15 ms for the kernels
(``results/tuning/2026-12-02-h200-padded-grid.json``).
"""

from __future__ import annotations

import math

import torch


def pad_grid(t: torch.Tensor, grid: tuple, padded: tuple, first_axis: int) -> torch.Tensor:
    """``t`` with grid axes ``grid`` at dims ``first_axis`` on, zero-padded to ``padded`` there
    and flattened: ``[*t.shape[:first_axis], prod(padded), *rest]``."""
    trailing = t.dim() - first_axis - len(grid)
    widths = [0, 0] * trailing + [w for g, p in zip(reversed(grid), reversed(padded)) for w in (0, p - g)]
    out = torch.nn.functional.pad(t, widths)
    return out.reshape(*t.shape[:first_axis], math.prod(padded), *t.shape[first_axis + len(grid):])


def unpad_grid(t: torch.Tensor, grid: tuple, padded: tuple, first_axis: int) -> torch.Tensor:
    """``t`` with the flattened ``padded`` grid at dim ``first_axis``, cut to ``grid`` (grid
    axes back in shape), contiguous."""
    shaped = t.reshape(*t.shape[:first_axis], *padded, *t.shape[first_axis + 1:])
    inside = (slice(None),) * first_axis + tuple(slice(0, g) for g in grid)
    return shaped[inside].contiguous()
