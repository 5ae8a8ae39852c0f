"""sm_90 compile statistics of the linear-attention kernels (and fla 0.6's equivalents), without a GPU.

    python benchmarks/linear_compile_check.py --op simple_gla|gla|delta_rule [--gated]
        [--all-candidates | --config KERNEL:BK,BV,WARPS,STAGES ...] [--only NAME ...] [--fla DIR]
        [--dump DIR] [--dims K V]

tessera: the op's forward and backward run on small CPU tensors (bf16, K = V = 128 or ``--dims``; simple GLA and GLA
gated, the delta rule ungated unless ``--gated``) with kernel launches recorded, once with the default
configurations, once per tuning candidate of the op's kernels (``--all-candidates``, forced through
``tuning.OVERRIDES`` with their ``PREREQUISITES``), or once per ``--config``; every distinct launch is
compiled for Hopper. fla: with ``--fla`` (a folder holding the unpacked ``fla`` package; it imports
``einops``), its simple GLA or delta-rule kernels are compiled at the block sizes fla uses on Hopper,
over a few of its autotune settings (with ``--gated``, its delta state passes gated). One line per
kernel: warps, stages, shared memory, registers per thread, stack bytes (spilled registers) and the PTX
instructions of the first loop's body (the recurrence of the state passes). ``--dump DIR`` also writes
each kernel's TTGIR, PTX and SASS there.
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

from tessera.bench.hopper_compile import LaunchRecorder, compile_distinct, jit_function, resources, sass
from tessera.linear import ops
from tessera.linear.triton import tuning

PREFIXES = {"simple_gla": "simple_gla.", "gla": "gla.", "delta_rule": "delta."}


def _run(op: str, gated: bool, K: int = 128, V: int = 128) -> None:
    """Forward and backward of ``op`` on CPU tensors (B = 1, T = 256, H = 2, head dims K and V, bf16)."""
    B, T, H = 1, 256, 2
    q, k = (torch.randn(B, T, H, K).to(torch.bfloat16).requires_grad_() for _ in range(2))
    v = torch.randn(B, T, H, V).to(torch.bfloat16).requires_grad_()
    g = F.logsigmoid(torch.randn(B, T, H)).requires_grad_()
    if op == "simple_gla":
        o, _ = ops.simple_gla(q, k, v, g, backend="triton")
    elif op == "gla":
        o, _ = ops.gla(q, k, v, F.logsigmoid(torch.randn(B, T, H, K)).requires_grad_(), backend="triton")
    else:
        beta = torch.rand(B, T, H).requires_grad_()
        if gated:
            o, _ = ops.gated_delta_rule(q, k, v, g, beta, backend="triton")
        else:
            o, _ = ops.delta_rule(q, k, v, beta, backend="triton")
    o.float().sum().backward()


def _recorded(op: str, gated: bool, overrides: dict, dims: tuple = (128, 128)) -> list:
    tuning.OVERRIDES.clear()
    tuning.OVERRIDES.update(overrides)
    try:
        with LaunchRecorder() as recorder:
            _run(op, gated, *dims)
    finally:
        tuning.OVERRIDES.clear()
    return recorder.launches


def loop_instructions(ptx: str) -> str:
    """PTX instructions of the first loop's body (its header label to the branch back), or ``-``."""
    lines = ptx.splitlines()
    header = next((i for i, line in enumerate(lines) if "Loop Header" in line), None)
    if header is None:
        return "-"
    label = next(lines[j].split(":")[0] for j in range(header, -1, -1) if re.match(r"^\$L__BB\d+_\d+:", lines[j]))
    end = max(i for i, line in enumerate(lines) if re.search(r"bra(\.uni)?\s+" + re.escape(label) + ";", line))
    body = [line.strip() for line in lines[header:end + 1]]
    return str(sum(1 for s in body if s and s not in "{}" and not s.startswith(("//", "$L", ".loc", ".reg"))))


def dump(folder: str, label: str, fn, options: dict, kernel) -> None:
    """Write the kernel's TTGIR, PTX and SASS (nvdisasm of the cubin) to ``folder``, named after the row."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", f"{label} {fn.__name__} w{options.get('num_warps', 4)} "
                                         f"s{options.get('num_stages', 3)}").strip("_")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name + ".ttgir"), "w") as f:
        f.write(kernel.asm["ttgir"])
    with open(os.path.join(folder, name + ".ptx"), "w") as f:
        f.write(kernel.asm["ptx"])
    with open(os.path.join(folder, name + ".sass"), "w") as f:
        f.write(sass(kernel))


def report(label: str, launches, seen: set, dump_to: str | None = None) -> None:
    """Compile each distinct kernel of ``launches`` once and print its statistics (and dump its code to
    ``dump_to``)."""
    for fn, options, kernel, error in compile_distinct(launches, seen):
        if error is not None:  # report and go on
            print(f"FAIL {label:34s} {fn.__name__:36s} {type(error).__name__}: {str(error).splitlines()[0][:160]}")
            continue
        regs, stack = resources(kernel)
        print(f"{label:34s} {fn.__name__:36s} w{options.get('num_warps', 4)} s{options.get('num_stages', 3)} "
              f"shared {math.ceil(kernel.metadata.shared / 1024):3d} KB regs {regs:3d} stack {stack:4d} B "
              f"loop {loop_instructions(kernel.asm['ptx']):>4s}", flush=True)
        if dump_to:
            dump(dump_to, label, fn, options, kernel)


def tessera_rows(op: str, gated: bool, runs: list, only, seen: set, dump_to: str | None,
                 dims: tuple = (128, 128)) -> None:
    for label, overrides in runs:
        launches = [launch for launch in _recorded(op, gated, overrides, dims)
                    if not only or any(s in launch[0].__name__ for s in only)]
        report(f"tessera {label}", launches, seen, dump_to)


def _runs(op: str, all_candidates: bool, configs: list) -> list:
    """``(label, overrides)`` per compile pass."""
    if configs:
        return [(f"{kernel} {tuple(vars(cfg).values())}", {**tuning.PREREQUISITES.get(kernel, {}), kernel: cfg})
                for kernel, cfg in configs]
    runs = [("default", {})]
    if all_candidates:
        runs += [(f"{name} {tuple(vars(cfg).values())}", {**tuning.PREREQUISITES.get(name, {}), name: cfg})
                 for name, cands in tuning.CANDIDATES.items() if name.startswith(PREFIXES[op]) for cfg in cands[1:]]
    return runs


def _simple_gla_fla() -> list:
    """fla 0.6's simple GLA kernels (``chunk_h``, ``chunk_o``) with the tensors of its path (bf16 inputs,
    float32 gate): ``(label, kernel, arguments and launch options)``."""
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
                rows.append((f"chunk_fwd_kernel_h {BK}x{BV} h={h_dtype}", chunk_h.chunk_fwd_kernel_h, dict(
                    common, **hk, **opts, k=x["k"], v=x["v"], h=state(h_dtype), h0=None, ht=None,
                    USE_INITIAL_STATE=False, STORE_FINAL_STATE=False)))
            rows.append((f"chunk_bwd_kernel_dh {BK}x{BV} dh=fp32", chunk_h.chunk_bwd_kernel_dh, dict(
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
    return rows


def _delta_rule_fla(gated: bool) -> list:
    """fla 0.6's delta-rule kernels at Hopper settings (B = 2, H = 16, K = V = 128, BT = 64, bf16; the
    state passes with a float32 log2 gate when ``gated``): ``(label, kernel, arguments and launch options)``."""
    from fla.ops.common import chunk_delta_h, chunk_o, chunk_scaled_dot_kkt
    from fla.ops.delta_rule import wy_fast
    solve_tril = __import__("fla.ops.utils.solve_tril", fromlist=["solve_tril"])
    bf, f32 = torch.empty(1, dtype=torch.bfloat16), torch.empty(1, dtype=torch.float32)
    dims = dict(H=16, K=128, V=128, BT=64, T=16384)
    hv = dict(dims, HV=16)
    gate = dict(g=f32, USE_G=True) if gated else {}
    none_g = dict(g=None, gk=None, g_gamma=None, cu_seqlens=None, chunk_indices=None, chunk_offsets=None,
                  USE_G=False, USE_GK=False, USE_G_GAMMA=False, IS_VARLEN=False, STATE_V_FIRST=False)

    def settings(*pairs):
        return [dict(num_warps=w, num_stages=s) for w, s in pairs]
    kernels = [
        ("kkt", chunk_scaled_dot_kkt.chunk_scaled_dot_kkt_fwd_kernel, dict(hv, **none_g, k=bf, beta=bf, A=f32, BK=64),
         settings((4, 3), (2, 3), (8, 2))),
        ("solve_tril (pointer loads)", solve_tril.merge_16x16_to_64x64_inverse_kernel,
         dict(dims, **none_g, A=f32, Ai=bf, DOT_PRECISION="tf32x3", USE_TMA=False), settings((2, 2), (4, 3), (8, 2))),
        ("recompute_w_u", wy_fast.recompute_w_u_fwd_kernel,
         dict(dims, **none_g, k=bf, v=bf, beta=bf, w=bf, u=bf, A=bf, BK=64, BV=64), settings((4, 3), (2, 3), (8, 2))),
    ] + [
        ("fwd_h", chunk_delta_h.chunk_gated_delta_rule_fwd_kernel_h_blockdim64,
         dict(hv, **{**none_g, **gate}, k=bf, v=bf, w=bf, v_new=bf, h=bf, h0=None, ht=None, BV=bv, USE_INITIAL_STATE=False,
              STORE_FINAL_STATE=False, SAVE_NEW_VALUE=True), settings((w, s)))
        for bv, w, s in ((32, 4, 2), (64, 4, 3), (32, 2, 3))
    ] + [
        ("bwd_dhu", chunk_delta_h.chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64,
         dict(hv, **{**none_g, **gate}, q=bf, k=bf, w=bf, dht=None, dh0=None, do=bf, dh=bf, dv=bf, dv2=bf, scale=0.1, BV=bv,
              USE_INITIAL_STATE=False, USE_FINAL_STATE_GRADIENT=False), settings((w, s)))
        for bv, w, s in ((32, 4, 2), (64, 4, 3), (32, 2, 3), (64, 2, 2))
    ] + [
        ("bwd_dv_local", chunk_o.chunk_bwd_kernel_dv_local,
         dict(hv, **none_g, q=bf, k=bf, A=None, do=bf, dv=bf, scale=0.1, BK=128, BV=128, USE_A=False),
         settings((4, 3), (2, 3), (4, 2))),
        ("bwd_dqkwg", chunk_o.chunk_bwd_kernel_dqkwg,
         dict(hv, **none_g, q=bf, k=bf, v=bf, h=bf, do=bf, dh=bf, dq=bf, dk=bf, dw=bf, dv=bf, dg=None, scale=0.1,
              B=2, BK=128, BV=128, USE_DW=True), settings((4, 3), (2, 3), (4, 2))),
        ("wy_bwd", wy_fast.prepare_wy_repr_bwd_kernel,
         dict(dims, **none_g, k=bf, v=bf, beta=bf, A=bf, dw=bf, du=bf, dk=bf, dv=bf, dbeta=bf, BK=64, BV=64),
         settings((2, 2), (2, 3), (2, 4))),
    ]
    return [(label, kernel, {**arguments, **options}) for label, kernel, arguments, option_list in kernels
            for options in option_list]


def fla_rows(op: str, gated: bool, path: str, only, seen: set, dump_to: str | None) -> None:
    sys.path.insert(0, path)
    if op == "gla":
        sys.exit("--fla: fla's GLA kernels are not listed here (simple_gla, delta_rule)")
    rows = _simple_gla_fla() if op == "simple_gla" else _delta_rule_fla(gated)
    for label, kernel, kwargs in rows:
        fn = jit_function(kernel)
        if not only or any(s in fn.__name__ or s in label for s in only):
            report(f"fla {label}", [(fn, (), kwargs)], seen, dump_to)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", choices=tuple(PREFIXES), required=True)
    parser.add_argument("--gated", action="store_true", help="gated delta rule (simple GLA is always gated)")
    parser.add_argument("--all-candidates", action="store_true", help="every tuning candidate of the op's kernels")
    parser.add_argument("--config", nargs="*", default=[], metavar="KERNEL:BK,BV,WARPS,STAGES",
                        help="configurations to compile instead, e.g. simple_gla.dqk:128,64,8,3")
    parser.add_argument("--only", nargs="*", help="kernels whose name contains one of these")
    parser.add_argument("--fla", metavar="DIR", help="folder holding the unpacked fla package: compile its kernels")
    parser.add_argument("--no-tessera", action="store_true")
    parser.add_argument("--dump", metavar="DIR", help="write each compiled kernel's TTGIR, PTX and SASS here")
    parser.add_argument("--dims", nargs=2, type=int, default=(128, 128), metavar=("K", "V"),
                        help="head dims of tessera's calls (default 128 128)")
    args = parser.parse_args()
    configs = [(spec.split(":")[0], tuning.LaunchConfig(*map(int, spec.split(":")[1].split(","))))
               for spec in args.config]
    seen = set()
    if not args.no_tessera:
        tessera_rows(args.op, args.gated, _runs(args.op, args.all_candidates, configs), args.only, seen, args.dump,
                     tuple(args.dims))
    if args.fla:
        fla_rows(args.op, args.gated, args.fla, args.only, seen, args.dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())
