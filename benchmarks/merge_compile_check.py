"""Compile the merge kernels (``kernels/triton/merge.py``) for Hopper (sm_90) on a machine without a
GPU: each dtype, the backward with and without a lse gradient; prints registers and stack bytes
per thread (cuobjdump) or the compile error.

    python benchmarks/merge_compile_check.py
"""

from __future__ import annotations

import sys

import torch

from tessera.bench.hopper_compile import LaunchRecorder, compile_distinct, resources
from tessera.kernels.triton import merge
from tessera.kernels.triton.host_math import padded_width


def main() -> int:
    batch, tokens, heads, dim = 1, 100, 4, 128
    failed = 0
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        o1, o2, do = (torch.randn(batch, tokens, heads, dim, dtype=dtype) for _ in range(3))
        l1, l2, dlse = (torch.randn(batch, heads, tokens) for _ in range(3))
        sizes = dict(D=dim, D_PAD=padded_width(dim), ROWS=merge.ROWS, num_warps=4)
        grid = (-(-tokens // merge.ROWS), batch * heads)
        with LaunchRecorder() as recorder:
            merge._merge_forward[grid](o1, o2, l1, l2, torch.empty_like(o1), torch.empty_like(l1),
                                       *o1.stride()[:3], *o2.stride()[:3], *o1.stride()[:3], heads, tokens, **sizes)
            for has_dlse in (True, False):
                merge._merge_backward[grid](do, o1, o2, l1, l2, dlse, torch.empty_like(do), torch.empty_like(do),
                                            torch.empty_like(l1), torch.empty_like(l1), *do.stride()[:3],
                                            *o1.stride()[:3], *o2.stride()[:3], heads, tokens, HAS_DLSE=has_dlse,
                                            **sizes)
        for fn, _options, kernel, error in compile_distinct(recorder.launches, set()):
            if error is not None:
                failed += 1
                print(f"{dtype} {fn.__name__}: FAILED {type(error).__name__}: {str(error)[:300]}")
            else:
                registers, stack = resources(kernel)
                print(f"{dtype} {fn.__name__}: {registers} registers, {stack} B stack")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
