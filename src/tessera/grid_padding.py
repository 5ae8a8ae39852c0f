"""Zero padding of token grids up to whole tiles, and its inverse, with their gradients.

``natten`` runs a grid that no tile shape divides on the grid padded up to whole tiles
(``PaddedNeighborhood``). Where the Gluon kernels take the call they read q, k and v unpadded
(``natten.PAD_IN_KERNEL``: their bulk copies read zeros past the grid) and only lse is cut here;
elsewhere q, k and v go in padded (``pad_grids``), o and lse come back cut to the grid
(``unpad_grid``). Contiguous ``[B, *grid, ...]`` tensors on the Triton kernels' devices take
one pass of ``kernels.triton.grid_copy`` (q, k and v in one launch; the gradient of a padding is a
view of the padded gradient, that of a cut one more pass); other tensors take
``torch.nn.functional.pad`` and slices. On an H200, for the suite's 100 x 100 grid padded to
104 x 104 (bf16, H = 16, D = 128), padding q, k and v takes 0.070 ms of GPU time (0.191 with
``functional.pad``) and the cut of o 0.025 ms (0.049 by slicing), against 0.147 ms for the
attention kernels (``results/tuning/2026-12-02-h200-padded-grid-2.json``, ``-padded-grid.json``).
"""

from __future__ import annotations

import math

import torch


def _by_kernel(tensors) -> bool:
    """Whether ``tensors`` take ``grid_copy``: contiguous, one dtype, on CUDA or on CPU with the
    Triton kernels interpreted."""
    first = tensors[0]
    if not all(t.is_contiguous() and t.dtype == first.dtype and t.device == first.device for t in tensors):
        return False
    if first.device.type == "cuda":
        return True
    from .kernels.triton.backend import kernels_interpreted
    return first.device.type == "cpu" and kernels_interpreted()


def _inside(grid: tuple, first_axis: int) -> tuple:
    return (slice(None),) * first_axis + tuple(slice(0, g) for g in grid)


def _functional_pad(t: torch.Tensor, grid: tuple, padded: tuple, first_axis: int) -> torch.Tensor:
    trailing = t.dim() - first_axis - len(grid)
    widths = [0, 0] * trailing + [w for g, p in zip(reversed(grid), reversed(padded)) for w in (0, p - g)]
    return torch.nn.functional.pad(t, widths)


class _PadGrids(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grid, padded, *tensors):
        from .kernels.triton.grid_copy import copy_grids
        ctx.grid = grid
        return tuple(copy_grids(list(tensors), grid, padded))

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, *(None if g is None else g[_inside(ctx.grid, 1)] for g in grads))


class _UnpadGrid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, grid, padded):
        from .kernels.triton.grid_copy import copy_grids
        ctx.grid, ctx.padded = grid, padded
        return copy_grids([t], padded, grid)[0]

    @staticmethod
    def backward(ctx, grad):
        from .kernels.triton.grid_copy import copy_grids
        if not _by_kernel([grad]):
            return _functional_pad(grad, ctx.grid, ctx.padded, 1), None, None
        return copy_grids([grad], ctx.grid, ctx.padded)[0], None, None


def pad_grids(tensors, grid: tuple, padded: tuple) -> list:
    """Each of ``tensors`` (``[B, *grid, ...]``) zero-padded to ``padded`` on the grid axes and
    flattened there: ``[B, prod(padded), ...]``."""
    grid, padded = tuple(grid), tuple(padded)
    if 1 <= len(tensors) <= 3 and _by_kernel(tensors):
        out = _PadGrids.apply(grid, padded, *tensors)
    else:
        out = [_functional_pad(t, grid, padded, 1) for t in tensors]
    return [o.reshape(o.shape[0], math.prod(padded), *o.shape[1 + len(grid):]) for o in out]


def pad_grid(t: torch.Tensor, grid: tuple, padded: tuple, first_axis: int) -> torch.Tensor:
    """``t`` with grid axes ``grid`` at dims ``first_axis`` on, zero-padded to ``padded`` there
    and flattened: ``[*t.shape[:first_axis], prod(padded), *rest]``."""
    if first_axis == 1:
        return pad_grids([t], grid, padded)[0]
    out = _functional_pad(t, grid, padded, first_axis)
    return out.reshape(*t.shape[:first_axis], math.prod(padded), *t.shape[first_axis + len(grid):])


def unpad_grid(t: torch.Tensor, grid: tuple, padded: tuple, first_axis: int) -> torch.Tensor:
    """``t`` with the flattened ``padded`` grid at dim ``first_axis``, cut to ``grid`` (grid
    axes back in shape), contiguous."""
    shaped = t.reshape(*t.shape[:first_axis], *padded, *t.shape[first_axis + 1:])
    if first_axis == 1 and _by_kernel([shaped]):
        return _UnpadGrid.apply(shaped, tuple(grid), tuple(padded))
    return shaped[_inside(grid, first_axis)].contiguous()
