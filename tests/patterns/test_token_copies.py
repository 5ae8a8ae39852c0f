"""Token reorders that move whole rows (``as_wide_rows``) give the element-wise copies' bits, and
their gradients."""

import math

import pytest
import torch

from tessera.patterns import token_copies
from tessera.patterns.layout import GridLayout
from tessera.patterns.token_copies import as_wide_rows, from_wide_rows
from tessera.patterns.vision import MaxViTGrid


def random_bits(shape, dtype):
    """Every bit pattern of ``dtype`` is possible (NaN payloads, subnormals): a copy must keep them."""
    width = torch.empty((), dtype=dtype).element_size()
    bits = torch.randint(-(2 ** 15), 2 ** 15, (*shape[:-1], shape[-1] * width // 2), dtype=torch.int16)
    return bits.view(dtype)


@pytest.mark.parametrize("shape, dtype, wide", [
    ((2, 10, 4, 16), torch.bfloat16, torch.complex128),    # a 128-byte row: 16-byte elements
    ((2, 10, 2, 2), torch.float16, torch.int64),           # 8 bytes
    ((2, 10, 1, 2), torch.float16, torch.int32),           # 4 bytes
    ((2, 10, 3), torch.float32, torch.int32),              # 12 bytes: 4-byte elements gain nothing
    ((2, 10, 2), torch.float64, torch.complex128),
])
def test_wide_rows_view_each_token_row_whole(shape, dtype, wide):
    x = random_bits(shape, dtype)
    rows = as_wide_rows(x, 1)
    if wide.itemsize == x.element_size():
        assert rows is None
        return
    assert rows.dtype == wide and rows.shape[:2] == x.shape[:2]
    assert rows.data_ptr() == x.data_ptr()
    assert torch.equal(from_wide_rows(rows, dtype, shape).view(torch.int16), x.view(torch.int16))


def test_no_wide_rows_where_rows_are_not_whole_or_aligned():
    assert as_wide_rows(torch.zeros(2, 10, 3, dtype=torch.float16), 1) is None          # 6 bytes
    assert as_wide_rows(torch.zeros(2, 10, 4, 8).transpose(2, 3), 1) is None            # rows strided
    assert as_wide_rows(torch.zeros(2 * 10 * 8 + 1, dtype=torch.float16)[1:].view(2, 10, 8), 1) is None
    assert as_wide_rows(torch.zeros(2, 10, 9, dtype=torch.float16)[:, :, :8], 1) is None  # token stride 9
    assert as_wide_rows(torch.zeros(2, 10, 0, dtype=torch.float16), 1) is None
    with pytest.raises(ValueError, match="dim must be in"):
        as_wide_rows(torch.zeros(2, 10, 8, dtype=torch.float16), -2)


def test_wide_rows_off(monkeypatch):
    monkeypatch.setattr(token_copies, "WIDE_ROWS", False)
    assert as_wide_rows(torch.zeros(2, 10, 8, dtype=torch.float16), 1) is None


def copies_both_ways(monkeypatch, copy, x):
    """``copy(x)`` and its gradient for an upstream gradient, with wide rows and element by element."""
    results = []
    upstream = random_bits(x.shape, x.dtype).nan_to_num()
    for wide in (True, False):
        monkeypatch.setattr(token_copies, "WIDE_ROWS", wide)
        leaf = x.clone().requires_grad_(x.is_floating_point())
        out = copy(leaf)
        grad = None
        if leaf.requires_grad:
            (grad,) = torch.autograd.grad(out, leaf, upstream)
        results.append((out.detach(), grad))
    return results


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grid, size, heads, dim", [((8, 8), 2, 2, 8), ((12, 6), (3, 2), 1, 3), ((4, 6, 6), (2, 3, 2), 3, 4)])
def test_maxvit_swaps_are_the_same_copy(monkeypatch, dtype, grid, size, heads, dim):
    pattern = MaxViTGrid(grid, size)
    x = random_bits((2, math.prod(grid), heads, dim), dtype)
    for copy in (pattern.as_blocks, pattern.from_blocks):
        (wide, wide_grad), (plain, plain_grad) = copies_both_ways(monkeypatch, copy, x)
        assert torch.equal(wide.view(torch.uint8), plain.view(torch.uint8))
        assert torch.equal(wide_grad, plain_grad)
    assert torch.equal(pattern.from_blocks(pattern.as_blocks(x)).view(torch.uint8), x.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_layout_gathers_are_the_same_copy(monkeypatch, dtype):
    layout = GridLayout((6, 10), (3, 4))
    x = random_bits((2, 60, 2, 4), dtype)
    for copy in (lambda t: layout.permute(t, 1), lambda t: layout.unpermute(t, 1)):
        (wide, wide_grad), (plain, plain_grad) = copies_both_ways(monkeypatch, copy, x)
        assert torch.equal(wide.view(torch.uint8), plain.view(torch.uint8))
        assert torch.equal(wide_grad, plain_grad)
    y = layout.permute(x.clone(), 1)
    assert torch.equal(y.view(torch.uint8), x[:, layout.positions()].view(torch.uint8))
