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

    def test_rejects_mismatched_shapes():
        from tessera.kernels.triton.row_dot import row_dot
        with pytest.raises(ValueError, match="do must have o's shape"):
            row_dot(torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 16))

else:

    @pytest.mark.parametrize("case", CASES)
    def test_matches_float64(case):
        _check("cpu", *case)
