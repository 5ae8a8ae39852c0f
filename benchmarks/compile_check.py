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
import re
import subprocess
import sys
import tempfile
import time

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("unset TRITON_INTERPRET: this script compiles kernels, it does not interpret them")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor

import tessera
from tessera.kernels.registry import AttentionCall
from tessera.kernels.triton import backend, flash_bwd, flash_fwd
from tessera.patterns import Causal, FromMask, Power, Strided, Window
from tessera.patterns.layout import GridLayout, Permuted
from tessera.patterns.neighborhood import Neighborhood

HOPPER = GPUTarget("cuda", 90, 32)
SHARED_LIMIT = 232448
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
          torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}


def _hopper_tma(a, b, block):
    return all(t.data_ptr() % 16 == 0 and all((s * t.element_size()) % 16 == 0 for s in t.stride()[:-1])
               for t in (a, b))


class Capture:
    """Records kernel launches instead of running them."""

    def __init__(self):
        self.launches = []

    def __enter__(self):
        self._getitem = JITFunction.__getitem__
        capture = self

        def getitem(fn, grid):
            return lambda *args, **kwargs: capture.launches.append((fn, args, kwargs))
        JITFunction.__getitem__ = getitem
        self._tma = flash_fwd.tma_ok, getattr(flash_bwd, "tma_ok", None)
        flash_fwd.tma_ok = _hopper_tma
        if self._tma[1] is not None:
            flash_bwd.tma_ok = _hopper_tma
        return self

    def __exit__(self, *exc):
        JITFunction.__getitem__ = self._getitem
        flash_fwd.tma_ok = self._tma[0]
        if self._tma[1] is not None:
            flash_bwd.tma_ok = self._tma[1]


def _source(fn: JITFunction, args: tuple, kwargs: dict):
    names = fn.arg_names
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    options = {k: v for k, v in kwargs.items() if k not in names}
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(names, fn.params)):
        value = bound.get(name, param.default)
        if param.is_constexpr or value is None:
            signature[name] = "constexpr"
            constexprs[(i,)] = value
        elif isinstance(value, TensorDescriptor):
            block = ",".join(str(b) for b in value.block_shape)
            signature[name] = f"tensordesc<{DTYPES[value.base.dtype]}[{block}]>"
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i64" if abs(value) >= 2 ** 31 else "i32"
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {name} of type {type(value).__name__}")
    key = (fn.__name__, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
           repr(sorted(options.items())))
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), options, key


def _resources(kernel) -> str:
    """``regs R stack B`` of a compiled kernel (registers per thread, and the per-thread stack
    frame: local memory that holds spilled registers), read by cuobjdump from its cubin."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs, stack = re.search(r"REG:(\d+)", out), re.search(r"STACK:(\d+)", out)
    if regs is None or stack is None:
        return "regs ? stack ?"
    return f"regs {regs.group(1):>3s} stack {stack.group(1):>4s} B"


def _call(q, k, v, pattern=None, causal=False, **extra) -> AttentionCall:
    from tessera.api import _build_call
    call, _ = _build_call(q, k, v, pattern=pattern, causal=causal, **extra)
    return call


def variants():
    """(name, thunk) pairs; each thunk runs forward and backward through the Triton backend."""
    def make(name, dtype=torch.bfloat16, dim=128, seq=512, heads=4, kv_heads=2, pattern=None,
             causal=False, grid=None, grid_order=False, **extra):
        def thunk():
            gen = torch.Generator().manual_seed(0)
            q = torch.randn(1, seq, heads, dim, generator=gen).to(dtype).requires_grad_()
            k = torch.randn(1, seq, kv_heads, dim, generator=gen).to(dtype).requires_grad_()
            v = torch.randn(1, seq, kv_heads, dim, generator=gen).to(dtype).requires_grad_()
            kwargs = {key: (val() if callable(val) else val) for key, val in extra.items()}
            call = _call(q, k, v, pattern=pattern, causal=causal, **kwargs)
            call.grid_order = grid_order
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
        for fn, launch_args, kwargs in capture.launches:
            src, options, key = _source(fn, launch_args, kwargs)
            if key in seen:
                continue
            seen.add(key)
            start = time.time()
            try:
                kernel = triton.compile(src, target=HOPPER, options=options)
            except Exception as exc:  # report every variant, then fail
                failures += 1
                print(f"FAIL {name:32s} {fn.__name__:18s} {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                continue
            compiled += 1
            shared = kernel.metadata.shared
            flag = "OVER 227 KB: needs the run-time fallback" if shared > SHARED_LIMIT else "ok"
            print(f"{flag:4s} {name:32s} {fn.__name__:18s} warps {options.get('num_warps')} "
                  f"stages {options.get('num_stages')} shared {math.ceil(shared / 1024)} KB "
                  f"{_resources(kernel)} "
                  f"({time.time() - start:.1f} s)", flush=True)
    print(f"{compiled} compiled, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
