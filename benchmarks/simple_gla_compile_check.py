"""sm_90 compile statistics of the simple GLA kernels (and fla 0.6's equivalents) on a machine without a GPU.

    python benchmarks/simple_gla_compile_check.py [--kernels simple_gla.dqk ...] [--config KERNEL:BK,BV,W,S ...]
                                              [--fla /tmp/fla]

Runs simple_gla forward and backward on small CPU tensors (bf16, K = V = 128, gated) with kernel launches
intercepted, once per candidate of ``tuning.CANDIDATES`` (forced through ``tuning.OVERRIDES``), compiles
each launch for Hopper with its constexprs and launch options, and prints registers per thread, stack
(spilled registers), shared memory and the PTX instructions of the first loop's body (the
recurrence of the sequential state passes). ``--fla DIR`` (an unpacked fla 0.6 wheel) also compiles fla's
chunk_fwd_h / chunk_fwd_o / chunk_bwd_dh / chunk_bwd_dv / chunk_bwd_dqkwg kernels at the block sizes
fla uses on Hopper (its autotuned warps / stages picked from the same lists).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("unset TRITON_INTERPRET: this script compiles kernels, it does not interpret them")

import torch
import torch.nn.functional as F
import triton
from triton.runtime.jit import JITFunction

sys.path.insert(0, os.path.dirname(__file__))
from compile_check import HOPPER, _resources, _source  # noqa: E402

from tessera.linear import ops  # noqa: E402
from tessera.linear.triton import tuning  # noqa: E402

KERNELS = ("simple_gla.state", "simple_gla.output", "simple_gla.state_grad", "simple_gla.dv", "simple_gla.dqk")


def _captured(kernel: str, cfg) -> list:
    """Launches ``(fn, args, kwargs)`` of one simple_gla forward + backward with ``cfg`` forced on ``kernel``."""
    launches = []
    original = JITFunction.__getitem__
    JITFunction.__getitem__ = lambda fn, grid: (lambda *a, **kw: launches.append((fn, a, kw)))
    tuning.OVERRIDES[kernel] = cfg
    try:
        q, k, v = (torch.randn(1, 200, 2, 128).to(torch.bfloat16).requires_grad_() for _ in range(3))
        g = F.logsigmoid(torch.randn(1, 200, 2)).requires_grad_()
        o, _ = ops.simple_gla(q, k, v, g, backend="triton")
        o.float().sum().backward()
    finally:
        JITFunction.__getitem__ = original
        tuning.OVERRIDES.clear()
    return launches


def _loop_instructions(ptx: str) -> str:
    """PTX instructions of the first loop's body (its header label to the branch back), or ``-``."""
    lines = ptx.splitlines()
    header = next((i for i, line in enumerate(lines) if "Loop Header" in line), None)
    if header is None:
        return "-"
    label = next(lines[j].split(":")[0] for j in range(header, -1, -1) if re.match(r"^\$L__BB\d+_\d+:", lines[j]))
    end = max(i for i, line in enumerate(lines) if re.search(r"bra(\.uni)?\s+" + re.escape(label) + ";", line))
    body = [line.strip() for line in lines[header:end + 1]]
    return str(sum(1 for s in body if s and s not in "{}" and not s.startswith(("//", "$L", ".loc", ".reg"))))


def _compile(fn, args, kwargs) -> str:
    src, options, _ = _source(fn, args, kwargs)
    try:
        kernel = triton.compile(src, target=HOPPER, options=options)
    except Exception as exc:  # report and go on
        return f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return (f"shared {math.ceil(kernel.metadata.shared / 1024):3d} KB {_resources(kernel)} "
            f"loop {_loop_instructions(kernel.asm['ptx']):>4s}")


def tessera_rows(configs) -> None:
    """One row per ``(kernel name, LaunchConfig)``."""
    names = {"simple_gla.state": "_chunk_states_kernel", "simple_gla.output": "_chunk_output_kernel",
             "simple_gla.state_grad": "_chunk_state_grads_kernel", "simple_gla.dv": "_chunk_dv_kernel",
             "simple_gla.dqk": "_chunk_dqk_kernel"}
    for kernel, cfg in configs:
        for fn, args, kwargs in _captured(kernel, cfg):
            if fn.__name__ == names[kernel]:
                print(f"tessera {kernel:22s} {cfg.block_k:3d} {cfg.block_v:3d} w{cfg.num_warps} "
                      f"s{cfg.num_stages}  {_compile(fn, args, kwargs)}", flush=True)


def _jit(fn):
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def fla_rows(path: str) -> None:
    """fla 0.6's kernels with the tensors / flags of its simple_gla path (bf16 inputs, float32 gate)."""
    sys.path.insert(0, path)
    from fla.ops.common import chunk_h, chunk_o

    T, H, K, V, NT = 200, 2, 128, 128, 4
    bf, f32 = torch.bfloat16, torch.float32
    x = {n: torch.empty(1, T, H, 128, dtype=bf) for n in ("q", "k", "v", "do")}
    g = torch.empty(1, T, H, dtype=f32)
    common = dict(T=T, H=H, K=K, V=V, BT=64, g=g, g_gamma=None, cu_seqlens=None, IS_VARLEN=False,
                  USE_G=True, USE_G_GAMMA=False, STATE_V_FIRST=False)
    hk = dict(gk=None, gv=None, USE_GK=False, USE_GV=False, BS=64, split_offsets=None)

    def state(h_dtype):
        return torch.empty(1, NT, H, K, V, dtype=h_dtype)
    rows = []
    for BK, BV in ((64, 64), (64, 32), (32, 64), (32, 32)):
        for w, s in ((4, 3), (2, 3), (8, 2), (4, 2), (4, 4), (1, 3)):
            opts = dict(BK=BK, BV=BV, num_warps=w, num_stages=s)
            for h_dtype in (bf, f32):  # forward (bf16 states) and the backward's recompute (float32)
                rows.append((f"chunk_fwd_kernel_h h={h_dtype}", chunk_h.chunk_fwd_kernel_h, dict(
                    common, **hk, **opts, k=x["k"], v=x["v"], h=state(h_dtype), h0=None, ht=None,
                    USE_INITIAL_STATE=False, STORE_FINAL_STATE=False)))
            rows.append(("chunk_bwd_kernel_dh dh=fp32", chunk_h.chunk_bwd_kernel_dh, dict(
                common, **hk, **opts, q=x["q"], do=x["do"], dh=state(f32), dht=None, dh0=None, scale=0.1,
                HQ=H, NG=1, STORE_INITIAL_STATE_GRADIENT=False, USE_FINAL_STATE_GRADIENT=False)))
    for BK, BV, w, s in ((128, 128, 8, 3), (64, 64, 4, 3), (32, 32, 2, 3)):
        rows.append(("chunk_fwd_kernel_o", chunk_o.chunk_fwd_kernel_o, dict(
            common, q=x["q"], k=x["k"], v=x["v"], h=state(bf), o=x["v"], chunk_indices=None, scale=0.1, HV=H,
            BK=BK, BV=BV, num_warps=w, num_stages=s)))
    for w in (2, 4):
        for s in (2, 3, 4):
            opts = dict(BK=128, BV=128, num_warps=w, num_stages=s)
            rows.append(("chunk_bwd_kernel_dv dh=fp32", chunk_o.chunk_bwd_kernel_dv, dict(
                common, **opts, q=x["q"], k=x["k"], do=x["do"], dv=x["v"], dh=state(f32), chunk_indices=None,
                scale=0.1, HV=H)))
            rows.append(("chunk_bwd_kernel_dqkwg h,dh=fp32", chunk_o.chunk_bwd_kernel_dqkwg, dict(
                common, **opts, q=x["q"], k=x["k"], v=x["v"], h=state(f32), do=x["do"], dh=state(f32),
                dq=x["q"], dk=x["k"], dw=None, dv=None, dg=torch.empty(1, 1, T, H, dtype=f32), chunk_indices=None,
                scale=0.1, B=1, HV=H, USE_DW=False)))
    for name, fn, kwargs in rows:
        print(f"fla {name:34s} {kwargs['BK']:3d} {kwargs['BV']:3d} w{kwargs['num_warps']} s{kwargs['num_stages']}  "
              f"{_compile(_jit(fn), (), kwargs)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="*", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--config", nargs="*", default=[], metavar="KERNEL:BK,BV,WARPS,STAGES",
                        help="configurations to compile instead of the candidates, e.g. simple_gla.dqk:128,64,8,3")
    parser.add_argument("--fla", help="directory of an unpacked fla 0.6 wheel (fla/ops/...)")
    args = parser.parse_args()
    configs = [(k, cfg) for k in args.kernels for cfg in tuning.CANDIDATES[k]]
    if args.config:
        configs = [(spec.split(":")[0], tuning.LaunchConfig(*map(int, spec.split(":")[1].split(","))))
                   for spec in args.config]
    tessera_rows(configs)
    if args.fla:
        fla_rows(args.fla)
    return 0


if __name__ == "__main__":
    sys.exit(main())
