"""``row_dot`` (the backward's ``delta = rowsum(o * do)``) against float64 torch, under Triton's CPU
interpreter (re-run in a fresh process, as in test_flash_interpreted.py) and on the GPU."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import assert_passes_interpreted

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def _check(device: str, dtype: torch.dtype, batch: int, seq: int, heads: int, dim_v: int,
           transposed: bool) -> None:
    from tessera.kernels.triton.row_dot import row_dot
    shape = (batch, heads, seq, dim_v) if transposed else (batch, seq, heads, dim_v)
    o, do = (torch.randn(shape, device=device).to(dtype) for _ in range(2))
    if transposed:  # [B, S, H, D] views of [B, H, S, D] storage
        o, do = o.transpose(1, 2), do.transpose(1, 2)
    expected = (o.double() * do.double()).sum(-1).transpose(1, 2)
    delta = row_dot(o, do)
    assert delta.dtype == torch.float32 and delta.is_contiguous()
    assert delta.shape == (batch, heads, seq)
    torch.testing.assert_close(delta.double(), expected, rtol=1e-5, atol=1e-5 * dim_v ** 0.5)


def _check_extent_only(device: str, dtype: torch.dtype, grid: tuple, extent: tuple) -> None:
    """Over a padded grid: o and do hold the extent's tokens; delta covers the grid, 0 in the
    padding, each grid row the dot of the extent token at its coordinates."""
    from tessera.kernels.triton.row_dot import row_dot
    batch, heads, dim_v = 2, 3, 24
    o, do = (torch.randn(batch, *extent, heads, dim_v, device=device).to(dtype) for _ in range(2))
    dots = (o.double() * do.double()).sum(-1)                       # [B, *extent, H]
    expected = torch.zeros(batch, *grid, heads, dtype=torch.float64, device=device)
    expected[(slice(None), *(slice(0, e) for e in extent))] = dots
    expected = expected.reshape(batch, -1, heads).transpose(1, 2)
    delta = row_dot(o.reshape(batch, -1, heads, dim_v), do.reshape(batch, -1, heads, dim_v), grid, extent)
    assert delta.shape == (batch, heads, expected.shape[2]) and delta.is_contiguous()
    torch.testing.assert_close(delta.double(), expected, rtol=1e-5, atol=1e-5 * dim_v ** 0.5)


EXTENT_CASES = [(torch.float32, (1, 12, 16), (1, 10, 13)), (torch.float16, (4, 8, 8), (3, 8, 5))]

CASES = [(torch.float32, 2, 67, 3, 40, False), (torch.float16, 1, 130, 2, 64, True),
         (torch.float32, 1, 1, 1, 16, False)]

if not IN_INTERPRETER:

    def test_interpreted_cases_in_a_fresh_process():
        assert_passes_interpreted(__file__, timeout=300)

    @pytest.mark.gpu
    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
    def test_gpu(dtype):
        _check("cuda", dtype, 2, 4097, 16, 128, False)
        _check("cuda", dtype, 1, 1000, 4, 96, True)

    @pytest.mark.gpu
    def test_gpu_extent_only():
        _check_extent_only("cuda", torch.bfloat16, (1, 104, 104), (1, 100, 100))
        _check_extent_only("cuda", torch.float16, (22, 32, 52), (21, 30, 52))

    def test_rejects_mismatched_shapes():
        from tessera.kernels.triton.row_dot import row_dot
        with pytest.raises(ValueError, match="do must have o's shape"):
            row_dot(torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 16))

    def test_rejects_an_extent_outside_the_grid_or_a_wrong_length():
        from tessera.kernels.triton.row_dot import row_dot
        o = torch.zeros(1, 12, 2, 8)
        with pytest.raises(ValueError, match="extent must lie inside grid"):
            row_dot(o, o, (1, 4, 2), (1, 4, 3))
        with pytest.raises(ValueError, match="must hold the extent's 6 tokens"):
            row_dot(o, o, (1, 4, 4), (1, 3, 2))

else:

    @pytest.mark.parametrize("case", CASES)
    def test_matches_float64(case):
        _check("cpu", *case)

    @pytest.mark.parametrize("case", EXTENT_CASES)
    def test_extent_only_matches_float64(case):
        _check_extent_only("cpu", *case)
