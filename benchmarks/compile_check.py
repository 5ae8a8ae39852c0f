"""Compile every Triton flash-kernel variant for Hopper (sm_90) on a machine without a GPU.

    python benchmarks/compile_check.py [--only NAME ...]

The attention backend runs on small CPU tensors with kernel launches intercepted (nothing is
executed); each captured launch is compiled ahead of time for sm_90 with the same constexprs,
argument types and launch options, and its shared-memory need is checked against Hopper's
227 KB per block. Compilation failures and oversized variants are reported; a variant over the
limit is one the backend's shared-memory fallback (smaller tiles) must catch at run time.
Exit status 1 when any variant fails to compile.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("unset TRITON_INTERPRET: this script compiles kernels, it does not interpret them")

import torch

import tessera
from tessera.bench.hopper_compile import SHARED_LIMIT, LaunchRecorder, compile_distinct, resources
from tessera.kernels.registry import AttentionCall
from tessera.kernels.triton import backend, flash_bwd, flash_fwd
from tessera.kernels.triton.masks import DilationFold
from tessera.patterns import FromMask, Power, Strided, Window
from tessera.patterns.layout import GridLayout, Permuted
from tessera.patterns.neighborhood import Neighborhood


def _hopper_tma(a, b, block):
    return all(t.data_ptr() % 16 == 0 and all((s * t.element_size()) % 16 == 0 for s in t.stride()[:-1])
               for t in (a, b))


class Capture(LaunchRecorder):
    """Records kernel launches instead of running them, with the tensor-descriptor path taken as on
    a Hopper GPU."""

    def __enter__(self):
        self._tma = flash_fwd.tma_ok, getattr(flash_bwd, "tma_ok", None)
        flash_fwd.tma_ok = _hopper_tma
        if self._tma[1] is not None:
            flash_bwd.tma_ok = _hopper_tma
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        flash_fwd.tma_ok = self._tma[0]
        if self._tma[1] is not None:
            flash_bwd.tma_ok = self._tma[1]


def _call(q, k, v, pattern=None, causal=False, **extra) -> AttentionCall:
    from tessera.api import _build_call
    call, _ = _build_call(q, k, v, pattern=pattern, causal=causal, **extra)
    return call


def variants():
    """(name, thunk) pairs; each thunk runs forward and backward through the Triton backend."""
    def make(name, dtype=torch.bfloat16, dim=128, seq=512, heads=4, kv_heads=2, pattern=None,
             causal=False, grid=None, grid_order=False, fold=None, **extra):
        def thunk():
            gen = torch.Generator().manual_seed(0)
            q = torch.randn(1, seq, heads, dim, generator=gen).to(dtype).requires_grad_()
            k = torch.randn(1, seq, kv_heads, dim, generator=gen).to(dtype).requires_grad_()
            v = torch.randn(1, seq, kv_heads, dim, generator=gen).to(dtype).requires_grad_()
            kwargs = {key: (val() if callable(val) else val) for key, val in extra.items()}
            # A dilation fold's pattern covers one group: it joins after the length checks.
            call = _call(q, k, v, pattern=None if fold else pattern, causal=causal, **kwargs)
            call.pattern, call.grid_order, call.dilation_fold = pattern, grid_order, fold
            o, _ = backend.run(call)
            o.float().sum().backward()
        return name, thunk

    h = 4
    lr = lambda: tessera.bias.LowRank(torch.randn(1, h, 512, 8).requires_grad_(),
                                      torch.randn(1, h, 512, 8).requires_grad_())
    rp = lambda: tessera.bias.RelativePosition(torch.randn(h, 31, 63).requires_grad_(), (16, 32))
    return [
        make("dense bf16 D128"),
        make("causal bf16 D128", causal=True),
        make("window bf16 D128", pattern=Window(100, 0), causal=True),
        make("power (tile bands) bf16 D128", pattern=Power(local=64, causal=True)),
        make("strided (bitmask) bf16 D128", pattern=Strided(block=64, local_blocks=2, stride=4)),
        make("from-mask bf16 D128", pattern=FromMask(torch.rand(512, 512) < 0.2)),
        make("neighborhood 2-D tiled bf16 D128",
             pattern=Permuted(Neighborhood((16, 32), 7, dilation=(1, 2)),
                              GridLayout((16, 32), (8, 16)))),
        make("na2d 128x128 k17 bf16 D128", seq=16384,
             pattern=Permuted(Neighborhood((128, 128), 17), GridLayout((128, 128), (8, 8)))),
        make("na2d 128x128 k17 grid order bf16 D128", seq=16384, grid_order=True,
             pattern=Permuted(Neighborhood((128, 128), 17), GridLayout((128, 128), (8, 8)))),
        make("na2d 128x128 k17 grid order t16x8 bf16 D128", seq=16384, grid_order=True,
             pattern=Permuted(Neighborhood((128, 128), 17), GridLayout((128, 128), (16, 8)))),
        make("na3d 16x48x48 k5x13x13 grid order bf16 D128", seq=16 * 48 * 48, grid_order=True,
             pattern=Permuted(Neighborhood((16, 48, 48), (5, 13, 13)), GridLayout((16, 48, 48), (1, 8, 8)))),
        make("na2d 128x128 k17 grid order bf16 D64", seq=16384, dim=64, grid_order=True,
             pattern=Permuted(Neighborhood((128, 128), 17), GridLayout((128, 128), (8, 8)))),
        make("na3d 16x48x48 k5x13x13 grid order bf16 D64", seq=16 * 48 * 48, dim=64, grid_order=True,
             pattern=Permuted(Neighborhood((16, 48, 48), (5, 13, 13)), GridLayout((16, 48, 48), (1, 8, 8)))),
        make("na2d 128x128 k17 dilation 2 folded bf16 D128", seq=16384, grid_order=True,
             pattern=Permuted(Neighborhood((64, 64), 17), GridLayout((64, 64), (8, 8))),
             fold=DilationFold((128, 128), (2, 2))),
        make("na3d blocked grid order bf16 D128", seq=16 * 48 * 48, grid_order=True,
             pattern=Permuted(Neighborhood((16, 48, 48), (4, 8, 8), stride=(4, 8, 8)),
                              GridLayout((16, 48, 48), (1, 8, 8)))),
        make("neighborhood 3-D causal fp16 D64", dtype=torch.float16, dim=64,
             pattern=Neighborhood((8, 8, 8), (3, 5, 5), stride=(1, 2, 1),
                                  causal=(True, False, False))),
        make("softcap+sinks+alibi bf16 D128", causal=True, softcap=30.0,
             sinks=lambda: torch.randn(h).requires_grad_(),
             bias=lambda: tessera.bias.ALiBi(torch.rand(h).requires_grad_())),
        make("tensor bias bf16 D128", bias=lambda: torch.randn(1, h, 512, 512).requires_grad_()),
        make("low-rank bf16 D128", bias=lr),
        make("relative position bf16 D128", bias=rp),
        make("sigmoid bf16 D128", score="sigmoid", pattern=Window(64, 64)),
        make("window fp16 D64", dtype=torch.float16, dim=64, pattern=Window(100, 0)),
        make("causal fp32 D128", dtype=torch.float32, causal=True),
        make("dense bf16 D256", dim=256),
        make("causal bf16 D96", dim=96, causal=True),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="variants whose name contains one of these")
    args = parser.parse_args()
    failures, compiled, seen = 0, 0, set()
    for name, thunk in variants():
        if args.only and not any(s in name for s in args.only):
            continue
        with Capture() as capture:
            thunk()
        start = time.time()
        for fn, options, kernel, error in compile_distinct(capture.launches, seen):
            if error is not None:  # report every variant, then fail
                failures += 1
                print(f"FAIL {name:32s} {fn.__name__:18s} {type(error).__name__}: {str(error).splitlines()[0][:200]}")
                continue
            compiled += 1
            shared = kernel.metadata.shared
            flag = "OVER 227 KB: needs the run-time fallback" if shared > SHARED_LIMIT else "ok"
            regs, stack = resources(kernel)
            print(f"{flag:4s} {name:32s} {fn.__name__:18s} warps {options.get('num_warps')} "
                  f"stages {options.get('num_stages')} shared {math.ceil(shared / 1024)} KB "
                  f"regs {regs:>3d} stack {stack:>4d} B ({time.time() - start:.1f} s)", flush=True)
            start = time.time()
    print(f"{compiled} compiled, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
