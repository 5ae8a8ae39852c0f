"""sm_90 compile statistics of the delta-rule kernels (and optionally fla 0.6's), without a GPU.

    python benchmarks/delta_rule_compile_check.py [--gated] [--all-candidates] [--fla PATH] [--only NAME ...]

tessera: ``delta_rule`` forward and backward run on small CPU tensors (bf16, K = V = 128, ungated
unless ``--gated``) with kernel launches intercepted; each launch is compiled ahead of time for Hopper
with its constexprs, argument types and launch options (the default candidate of every kernel, or
every candidate with ``--all-candidates``, forced through ``tuning.OVERRIDES``). fla: with ``--fla``
(a folder holding the unpacked ``fla`` package), its delta-rule kernels are compiled with the Hopper
settings its launchers would pick (block sizes, a few of its autotune configurations). One line per
kernel: warps, stages, shared memory, registers per thread and stack bytes (local memory: spills).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("unset TRITON_INTERPRET: this script compiles kernels, it does not interpret them")

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

HOPPER = GPUTarget("cuda", 90, 32)
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
          torch.int64: "i64"}


def source(fn: JITFunction, bound: dict, options: dict):
    """``ASTSource`` of ``fn`` for argument values ``bound`` (tensors stand for their pointer type)."""
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        value = bound.get(name, param.default)
        if param.is_constexpr or value is None:
            signature[name] = "constexpr"
            constexprs[(i,)] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32"
        else:
            signature[name] = "fp32"
    key = (fn.__name__, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
           repr(sorted(options.items())))
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), key


def resources(kernel) -> tuple[int, int]:
    """(registers per thread, stack bytes per thread) of a compiled kernel, read by cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs, stack = re.search(r"REG:(\d+)", out), re.search(r"STACK:(\d+)", out)
    return int(regs.group(1)) if regs else -1, int(stack.group(1)) if stack else -1


def report(label: str, fn: JITFunction, bound: dict, options: dict, seen: set):
    src, key = source(fn, bound, options)
    if key in seen:
        return
    seen.add(key)
    try:
        kernel = triton.compile(src, target=HOPPER, options=options)
    except Exception as exc:  # report and go on
        print(f"FAIL {label:34s} {fn.__name__:44s} {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return
    regs, stack = resources(kernel)
    print(f"{label:34s} {fn.__name__:44s} warps {options.get('num_warps', 4)} stages "
          f"{options.get('num_stages', 3)} shared {math.ceil(kernel.metadata.shared / 1024):3d} KB "
          f"regs {regs:3d} stack {stack:5d} B", flush=True)


def tessera_launches(gated: bool, overrides: dict) -> list:
    """Launches (fn, bound arguments, options) of one delta-rule forward + backward on CPU tensors."""
    import torch.nn.functional as F

    from tessera.linear import ops
    from tessera.linear.triton import tuning
    launches = []
    original = JITFunction.__getitem__

    def getitem(fn, grid):
        def launch(*args, **kwargs):
            bound = dict(zip(fn.arg_names, args))
            bound.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
            launches.append((fn, bound, {k: v for k, v in kwargs.items() if k not in fn.arg_names}))
        return launch
    JITFunction.__getitem__ = getitem
    tuning.OVERRIDES.clear()
    tuning.OVERRIDES.update(overrides)
    try:
        B, T, H, D = 1, 256, 2, 128
        q, k, v = (torch.randn(B, T, H, D).to(torch.bfloat16).requires_grad_() for _ in range(3))
        beta = torch.rand(B, T, H).requires_grad_()
        if gated:
            g = F.logsigmoid(torch.randn(B, T, H)).requires_grad_()
            o, _ = ops.gated_delta_rule(q, k, v, g, beta, backend="triton")
        else:
            o, _ = ops.delta_rule(q, k, v, beta, backend="triton")
        o.float().sum().backward()
    finally:
        JITFunction.__getitem__ = original
        tuning.OVERRIDES.clear()
    return launches


def tessera_stats(gated: bool, all_candidates: bool, only, seen: set):
    from tessera.linear.triton import tuning
    runs = [("default", {})]
    if all_candidates:
        needs = getattr(tuning, "PREREQUISITES", {})  # absent in older trees (comparisons across commits)
        runs += [(f"{name} {tuple(vars(cfg).values())}", {**needs.get(name, {}), name: cfg})
                 for name, cands in tuning.CANDIDATES.items() if name.startswith("delta.") for cfg in cands[1:]]
    for label, overrides in runs:
        for fn, bound, options in tessera_launches(gated, overrides):
            if only and not any(s in fn.__name__ for s in only):
                continue
            report(f"tessera {label}", fn, bound, options, seen)


def _jit(kernel) -> JITFunction:
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def fla_stats(path: str, only, seen: set):
    """fla 0.6's delta-rule kernels at Hopper settings (B = 2, H = 16, K = V = 128, BT = 64, bf16)."""
    sys.path.insert(0, path)
    from fla.ops.common import chunk_delta_h, chunk_o, chunk_scaled_dot_kkt
    from fla.ops.delta_rule import wy_fast
    solve_tril = __import__("fla.ops.utils.solve_tril", fromlist=["solve_tril"])

    bf, f32 = torch.empty(1, dtype=torch.bfloat16), torch.empty(1, dtype=torch.float32)
    dims = dict(H=16, K=128, V=128, BT=64, T=16384)
    hv = dict(dims, HV=16)
    none_g = dict(g=None, gk=None, g_gamma=None, cu_seqlens=None, chunk_indices=None, chunk_offsets=None,
                  USE_G=False, USE_GK=False, USE_G_GAMMA=False, IS_VARLEN=False, STATE_V_FIRST=False)
    kernels = [
        ("kkt", chunk_scaled_dot_kkt.chunk_scaled_dot_kkt_fwd_kernel,
         dict(hv, **none_g, k=bf, beta=bf, A=f32, BK=64),
         [dict(num_warps=w, num_stages=s) for w, s in ((4, 3), (2, 3), (8, 2))]),
        ("solve_tril (pointer loads)", solve_tril.merge_16x16_to_64x64_inverse_kernel,
         dict(dims, **none_g, A=f32, Ai=bf, DOT_PRECISION="tf32x3", USE_TMA=False),
         [dict(num_warps=w, num_stages=s) for w, s in ((2, 2), (4, 3), (8, 2))]),
        ("recompute_w_u", wy_fast.recompute_w_u_fwd_kernel,
         dict(dims, **none_g, k=bf, v=bf, beta=bf, w=bf, u=bf, A=bf, BK=64, BV=64),
         [dict(num_warps=w, num_stages=s) for w, s in ((4, 3), (2, 3), (8, 2))]),
    ] + [
        ("fwd_h", chunk_delta_h.chunk_gated_delta_rule_fwd_kernel_h_blockdim64,
         dict(hv, **none_g, k=bf, v=bf, w=bf, v_new=bf, h=bf, h0=None, ht=None, BV=bv, USE_INITIAL_STATE=False,
              STORE_FINAL_STATE=False, SAVE_NEW_VALUE=True), [dict(num_warps=w, num_stages=s)])
        for bv, w, s in ((32, 4, 2), (64, 4, 3), (32, 2, 3))
    ] + [
        ("bwd_dhu", chunk_delta_h.chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64,
         dict(hv, **none_g, q=bf, k=bf, w=bf, dht=None, dh0=None, do=bf, dh=bf, dv=bf, dv2=bf, scale=0.1, BV=bv,
              USE_INITIAL_STATE=False, USE_FINAL_STATE_GRADIENT=False), [dict(num_warps=w, num_stages=s)])
        for bv, w, s in ((32, 4, 2), (64, 4, 3), (32, 2, 3), (64, 2, 2))
    ] + [
        ("bwd_dv_local", chunk_o.chunk_bwd_kernel_dv_local,
         dict(hv, **none_g, q=bf, k=bf, A=None, do=bf, dv=bf, scale=0.1, BK=128, BV=128, USE_A=False),
         [dict(num_warps=w, num_stages=s) for w, s in ((4, 3), (2, 3), (4, 2))]),
        ("bwd_dqkwg", chunk_o.chunk_bwd_kernel_dqkwg,
         dict(hv, **none_g, q=bf, k=bf, v=bf, h=bf, do=bf, dh=bf, dq=bf, dk=bf, dw=bf, dv=bf, dg=None, scale=0.1,
              B=2, BK=128, BV=128, USE_DW=True),
         [dict(num_warps=w, num_stages=s) for w, s in ((4, 3), (2, 3), (4, 2))]),
        ("wy_bwd", wy_fast.prepare_wy_repr_bwd_kernel,
         dict(dims, **none_g, k=bf, v=bf, beta=bf, A=bf, dw=bf, du=bf, dk=bf, dv=bf, dbeta=bf, BK=64, BV=64),
         [dict(num_warps=2, num_stages=s) for s in (2, 3, 4)]),
    ]
    for label, kernel, bound, option_list in kernels:
        fn = _jit(kernel)
        if only and not any(s in fn.__name__ or s in label for s in only):
            continue
        for options in option_list:
            report(f"fla {label}", fn, bound, options, seen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gated", action="store_true", help="gated delta rule (default: ungated)")
    parser.add_argument("--all-candidates", action="store_true", help="every tuning candidate of the delta kernels")
    parser.add_argument("--fla", metavar="PATH", help="folder holding the unpacked fla package: compile its kernels")
    parser.add_argument("--no-tessera", action="store_true")
    parser.add_argument("--only", nargs="*", help="kernels whose name contains one of these")
    args = parser.parse_args()
    seen = set()
    if not args.no_tessera:
        tessera_stats(args.gated, args.all_candidates, args.only, seen)
    if args.fla:
        fla_stats(args.fla, args.only, seen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
