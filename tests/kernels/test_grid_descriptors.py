"""Host-side tensor descriptors of grid-order tensors: the same fields Triton's constructor would
hold for the ``[B * g0, g1, g2, H, D]`` view, built without the view (CPU, no GPU needed)."""

import pytest
import torch

pytest.importorskip("triton")

from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

from tessera.kernels.triton.flash_fwd import _grid_descriptor, descriptor  # noqa: E402


def _fields(desc):
    return desc.base.data_ptr(), list(desc.shape), list(desc.strides), list(desc.block_shape), desc.padding


@pytest.mark.parametrize("batch", [1, 3])
def test_grid_descriptor_matches_the_view(batch):
    grid, box = (4, 8, 16), (2, 4, 8)
    t = torch.zeros(batch, 4 * 8 * 16, 5, 32, dtype=torch.float16)
    view = t.view(batch * 4, 8, 16, 5, 32)
    expected = TensorDescriptor(view, list(view.shape), list(view.stride()), [*box, 1, 32])
    assert _fields(_grid_descriptor(t, grid, box, 32)) == _fields(expected)


def test_grid_descriptor_of_a_strided_batch_and_a_head_slice():
    t = torch.zeros(2, 128, 6, 32, dtype=torch.float16)
    heads = t[:, :, 2:4]                 # batch and sequence still mergeable
    view = heads.view(2 * 2, 8, 8, 2, 32)
    expected = TensorDescriptor(view, list(view.shape), list(view.stride()), [1, 8, 8, 1, 32])
    assert _fields(_grid_descriptor(heads, (2, 8, 8), (1, 8, 8), 32)) == _fields(expected)
    rows = torch.zeros(2, 256, 6, 32, dtype=torch.float16)[:, :128]   # batch stride != S * row stride
    assert _grid_descriptor(rows, (2, 8, 8), (1, 8, 8), 32) is None


def test_descriptor_checks_block_shapes_once():
    t = torch.zeros(64, 64, dtype=torch.float16)
    assert _fields(descriptor(t, [64, 64], [64, 1], [16, 32])) == _fields(TensorDescriptor(t, [64, 64], [64, 1], [16, 32]))
    with pytest.raises(ValueError, match="power of 2"):
        descriptor(t, [64, 64], [64, 1], [16, 24])


def test_grid_view_of_a_tensor_holding_only_the_extent():
    """A ``PaddedNeighborhood``'s q may hold only the extent's tokens: the view is the extent's,
    at the grid's coordinates, where batch entries line up (axis 0 unpadded, or one entry);
    a length matching neither grid nor extent has no view."""
    from tessera.kernels.triton.flash_fwd import grid_view
    grid, extent = (4, 16, 16), (4, 13, 10)
    t = torch.zeros(3, 4 * 13 * 10, 2, 32, dtype=torch.float16)
    view = t.view(3 * 4, 13, 10, 2, 32)
    assert grid_view(t, grid, extent) == (list(view.shape), list(view.stride()))
    assert grid_view(t, grid) is None
    padded = torch.zeros(3, 4 * 16 * 16, 2, 32, dtype=torch.float16)
    assert grid_view(padded, grid, extent) == ([12, 16, 16, 2, 32], list(padded.view(12, 16, 16, 2, 32).stride()))
    deeper = (6, 16, 16)                  # axis 0 padded: batch entries 1, 2 would start at 6, 12
    assert grid_view(t, deeper, extent) is None
    one = t[:1]
    assert grid_view(one, deeper, extent) == ([4, 13, 10, 2, 32], list(view.stride()))
    assert grid_view(t[:, :100], grid, extent) is None


def test_plan_rows_and_extent_of_a_padded_plan():
    """Row statistics cover the padded grid; ``grid_extent`` names the extent only where it is
    smaller than the grid."""
    from tessera.kernels.gluon.na_forward import _view, plan_rows
    from tessera.kernels.triton import masks
    from tessera.kernels.triton.flash_fwd import grid_extent
    from tessera.patterns.layout import GridLayout, Permuted
    from tessera.patterns.neighborhood import Neighborhood, PaddedNeighborhood
    padded = Permuted(PaddedNeighborhood((16, 16), (13, 10), (5, 5)), GridLayout((16, 16), (8, 8)))
    plan = masks.get_plan(padded, 256, 256, 64, 64, 1, torch.device("cpu"))
    assert grid_extent(plan) == (1, 13, 10) and plan_rows(plan) == 256
    q = torch.zeros(2, 130, 4, 64, dtype=torch.bfloat16)
    assert _view(q, plan, None) == ([2, 13, 10, 4, 64], list(q.view(2, 13, 10, 4, 64).stride()))
    whole = Permuted(Neighborhood((16, 16), (5, 5)), GridLayout((16, 16), (8, 8)))
    whole_plan = masks.get_plan(whole, 256, 256, 64, 64, 1, torch.device("cpu"))
    assert grid_extent(whole_plan) is None and _view(q, whole_plan, None) is None


def test_batch_axis_view_of_an_extent_padded_along_axis_0():
    """At B > 1 with axis 0 padded, batch becomes its own axis and heads merge with D:
    ``[B, e0, e1, e2, H * D]``; the Gluon descriptors then take ``[1, b0, b1, b2, D]`` boxes."""
    from tessera.kernels.gluon.na_forward import _descriptor, batch_axis
    from tessera.kernels.triton import masks
    from tessera.kernels.triton.flash_fwd import batch_axis_view
    from tessera.patterns.layout import GridLayout, Permuted
    from tessera.patterns.neighborhood import PaddedNeighborhood
    t = torch.zeros(2, 7 * 21 * 26, 3, 64, dtype=torch.float16)
    assert batch_axis_view(t, (7, 21, 26)) == ([2, 7, 21, 26, 192], [7 * 21 * 26 * 192, 21 * 26 * 192, 26 * 192, 192, 1])
    assert batch_axis_view(t, (7, 21, 25)) is None
    assert batch_axis_view(t.transpose(2, 3).contiguous().transpose(2, 3), (7, 21, 26)) is None
    pattern = Permuted(PaddedNeighborhood((8, 24, 28), (7, 21, 26), (3, 7, 9)), GridLayout((8, 24, 28), (2, 8, 4)))
    plan = masks.get_plan(pattern, 8 * 24 * 28, 8 * 24 * 28, 64, 64, 1, torch.device("cpu"))
    assert batch_axis(t, plan) and not batch_axis(t[:1], plan)
    assert not batch_axis(torch.zeros(2, 8 * 24 * 28, 3, 64, dtype=torch.float16), plan)
    desc = _descriptor(t, plan, (2, 8, 4))
    assert (list(desc.shape), list(desc.block_shape)) == ([2, 7, 21, 26, 192], [1, 2, 8, 4, 64])
