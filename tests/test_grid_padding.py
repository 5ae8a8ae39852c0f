"""grid_padding: zero padding of token grids and its inverse; values and gradients against an
explicit zero tensor with the input copied into its corner."""

import math

import torch

from tessera.grid_padding import pad_grid, unpad_grid


def test_pad_and_unpad_values_and_gradients():
    torch.manual_seed(0)
    for shape, first_axis, grid, padded in [((2, 5, 7, 3, 4), 1, (5, 7), (8, 8)),
                                            ((2, 3, 5, 6, 3, 4), 1, (3, 5, 6), (4, 8, 8)),
                                            ((2, 3, 5, 7), 2, (5, 7), (5, 8)),
                                            ((1, 9, 2, 4), 1, (9,), (16,))]:
        t = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        end = first_axis + len(grid)
        inside = (slice(None),) * first_axis + tuple(slice(0, g) for g in grid)
        want = torch.zeros(*shape[:first_axis], *padded, *shape[end:], dtype=torch.float64)
        want[inside] = t.detach()
        flat = (*shape[:first_axis], math.prod(padded), *shape[end:])
        got = pad_grid(t, grid, padded, first_axis)
        assert torch.equal(got, want.reshape(flat))
        back = unpad_grid(got * 3, grid, padded, first_axis)
        assert back.is_contiguous() and torch.equal(back, t * 3)
        g = torch.randn(shape, dtype=torch.float64)
        (grad,) = torch.autograd.grad(back, t, g)
        assert torch.equal(grad, 3 * g)
        h = torch.randn(flat, dtype=torch.float64)
        (grad,) = torch.autograd.grad(pad_grid(t, grid, padded, first_axis), t, h)
        assert torch.equal(grad, h.reshape(want.shape)[inside])
