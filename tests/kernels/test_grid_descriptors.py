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
