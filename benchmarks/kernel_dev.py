"""Kernel development bench: tessera's Triton flash kernels vs FlexAttention (compiled, same mask)
vs SDPA, and sweeps of block sizes / warps / stages.

    python benchmarks/kernel_dev.py --compare --sweep --out results.json

Times are medians of ``triton.testing.do_bench``; mask / block-mask creation is not timed (tessera
plans are cached after the first call, Flex block masks are built once). TFLOP/s counts allowed
(query, key) pairs only: 4 * B * H * pairs * D forward, 3.5x that forward + backward.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback

import torch
import torch.nn.functional as F

from tessera.kernels.registry import AttentionCall
from tessera.kernels.triton import flash_fwd, tuning
from tessera.kernels.triton.backend import run
from tessera.kernels.triton.tuning import KernelConfig
from tessera.patterns import Causal, Window
from tessera.patterns.blocksparse import BlockSparse


def bench(fn, grad_to_none=None) -> float:
    from triton.testing import do_bench
    return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median"))


def workload(name: str, seq: int):
    """(tessera pattern, flex mask_mod or None, sdpa is_causal or None when SDPA cannot express it)."""
    if name == "dense":
        return None, None, False
    if name == "causal":
        return Causal(), (lambda b, h, q, kv: q >= kv), True
    if name.startswith("window"):
        w = int(name[len("window"):])
        return Window(w - 1, 0), (lambda b, h, q, kv: (q >= kv) & (q - kv < w)), None
    if name.startswith("random"):
        density = int(name[len("random"):]) / 100
        pattern = BlockSparse.random(seq, density, block=128, seed=0)
        layout = pattern.layout[0].cuda()
        return pattern, (lambda b, h, q, kv: layout[q // 128, kv // 128]), None
    raise ValueError(name)


def pairs_of(pattern, seq: int) -> float:
    return float(seq * seq) if pattern is None else pattern.density(seq, seq) * seq * seq


def tessera_fns(q, k, v, do, pattern, scale):
    def call():
        return AttentionCall(q, k, v, pattern, False, scale, "softmax", None, None, None, None, True)

    def fwd():
        with torch.no_grad():
            return run(call())[0]

    def fwd_bwd():
        o = run(call())[0]
        o.backward(do)

    return fwd, fwd_bwd


def flex_fns(qh, kh, vh, doh, mask_mod, seq):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex = torch.compile(flex_attention, dynamic=False)
    block_mask = None
    if mask_mod is not None:
        block_mask = create_block_mask(mask_mod, None, None, seq, seq, device="cuda")

    def fwd():
        with torch.no_grad():
            return flex(qh, kh, vh, block_mask=block_mask)

    def fwd_bwd():
        flex(qh, kh, vh, block_mask=block_mask).backward(doh)

    return fwd, fwd_bwd


def sdpa_fns(qh, kh, vh, doh, is_causal, backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    chosen = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]

    def fwd():
        with torch.no_grad(), sdpa_kernel(chosen):
            return F.scaled_dot_product_attention(qh, kh, vh, is_causal=is_causal)

    def fwd_bwd():
        with sdpa_kernel(chosen):
            F.scaled_dot_product_attention(qh, kh, vh, is_causal=is_causal).backward(doh)

    return fwd, fwd_bwd


def inputs(batch, seq, heads, dim, dtype):
    q, k, v, do = (torch.randn(batch, seq, heads, dim, device="cuda", dtype=dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    bhsd = [t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad) for t in (q, k, v)]
    return q, k, v, do, bhsd, do.transpose(1, 2).contiguous()


def compare(case: dict, modes=("fwd", "fwd_bwd"), others=("flex", "cudnn", "flash")) -> list[dict]:
    """Time one workload on every implementation; returns result rows."""
    seq, heads, batch, dim = case["seq"], case["heads"], case["batch"], case["dim"]
    dtype = getattr(torch, case.get("dtype", "bfloat16"))
    pattern, mask_mod, is_causal = workload(case["workload"], seq)
    q, k, v, do, (qh, kh, vh), doh = inputs(batch, seq, heads, dim, dtype)
    pairs = pairs_of(pattern, seq)
    impls = {"tessera": lambda: tessera_fns(q, k, v, do, pattern, 1 / math.sqrt(dim))}
    if "flex" in others:
        impls["flex"] = lambda: flex_fns(qh, kh, vh, doh, mask_mod, seq)
    if is_causal is not None:
        for b in ("cudnn", "flash"):
            if b in others:
                impls[f"sdpa_{b}"] = lambda b=b: sdpa_fns(qh, kh, vh, doh, is_causal, b)
    rows = []
    for impl, make in impls.items():
        try:
            fns = dict(zip(("fwd", "fwd_bwd"), make()))
        except Exception as exc:  # noqa: BLE001
            rows.append({**case, "impl": impl, "error": repr(exc)[:300]})
            continue
        for mode in modes:
            grads = [q, k, v] if impl == "tessera" else [qh, kh, vh]
            try:
                ms = bench(fns[mode], grad_to_none=grads if mode == "fwd_bwd" else None)
            except Exception as exc:  # noqa: BLE001
                rows.append({**case, "impl": impl, "mode": mode, "error": repr(exc)[:300]})
                traceback.print_exc()
                continue
            flops = 4 * batch * heads * pairs * dim * (3.5 if mode == "fwd_bwd" else 1.0)
            rows.append({**case, "impl": impl, "mode": mode, "ms": ms,
                         "tflops": flops / ms / 1e9, "density": pairs / seq / seq})
            print(f"{case['workload']:>10} S={seq} {impl:>12} {mode:>7}: {ms:8.3f} ms "
                  f"{flops / ms / 1e9:6.0f} TFLOP/s", flush=True)
    return rows


def check_against_sdpa(seq=4096, heads=8, dim=128):
    """Quick correctness guard before timing: tessera vs SDPA (bf16) on causal."""
    q, k, v, do, (qh, kh, vh), doh = inputs(1, seq, heads, dim, torch.bfloat16)
    o = run(AttentionCall(q, k, v, Causal(), True, dim ** -0.5, "softmax", None, None, None, None, True))[0]
    o.backward(do)
    ref = F.scaled_dot_product_attention(qh.double(), kh.double(), vh.double(), is_causal=True)
    ref.backward(doh.double())
    err = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
    out = {"o": err(o.transpose(1, 2), ref), "dq": err(q.grad.transpose(1, 2), qh.grad),
           "dk": err(k.grad.transpose(1, 2), kh.grad), "dv": err(v.grad.transpose(1, 2), vh.grad)}
    print("check vs float64 SDPA (bf16 causal):", out, flush=True)
    return out


# Sweep 1 (pointer loads, H200) also tried fwd (128,64,4,3) (128,128,4,3) (64,128,4,3) (64,64,4,4),
# dkdv (32,128,4,3) (128,128,8,2), dq (64,64,4,3) (64,128,8,2): all slower (results/).
# Sweep 2 (tensor-descriptor loads): fwd (128,128,8,3) > (128,128,8,2) > (128,64,8,2|3); dkdv
# (64,64,4,3) > (64,128,8,2|3) > (32,64,4,4) > (64,64,8,3); dq (128,128,8,2) > (128,64,8,2|3).
FWD_CONFIGS = [(128, 128, 8, 3), (128, 128, 8, 2)]
DKDV_CONFIGS = [(64, 64, 4, 3), (32, 64, 4, 4), (64, 64, 4, 2)]
DQ_CONFIGS = [(128, 128, 8, 2), (128, 64, 4, 3)]


def sweep(workloads=("dense", "window1024"), seq=16384, heads=16, dim=128) -> list[dict]:
    rows = []
    q, k, v, do, _, _ = inputs(1, seq, heads, dim, torch.bfloat16)
    for name in workloads:
        pattern = workload(name, seq)[0]
        pairs = pairs_of(pattern, seq)
        fwd, fwd_bwd = tessera_fns(q, k, v, do, pattern, dim ** -0.5)
        tuning.OVERRIDES.clear()
        for cfg in FWD_CONFIGS:
            tuning.OVERRIDES["fwd"] = KernelConfig(*cfg)
            rows.append(_timed(name, "fwd", cfg, fwd, None, 4 * heads * pairs * dim))
        best = min((r for r in rows if r["workload"] == name and r["kernel"] == "fwd" and "ms" in r),
                   key=lambda r: r["ms"])
        tuning.OVERRIDES["fwd"] = KernelConfig(*best["config"])
        flash_fwd.TMA_ENABLED = False
        rows.append(_timed(name, "fwd_no_tma", best["config"], fwd, None, 4 * heads * pairs * dim))
        rows.append(_timed(name, "fwd_bwd_no_tma", best["config"], fwd_bwd, [q, k, v],
                           14 * heads * pairs * dim))
        flash_fwd.TMA_ENABLED = True
        for cfg in DKDV_CONFIGS:
            tuning.OVERRIDES["dkdv"] = KernelConfig(*cfg)
            rows.append(_timed(name, "dkdv", cfg, fwd_bwd, [q, k, v], 14 * heads * pairs * dim))
        best = min((r for r in rows if r["workload"] == name and r["kernel"] == "dkdv" and "ms" in r),
                   key=lambda r: r["ms"])
        tuning.OVERRIDES["dkdv"] = KernelConfig(*best["config"])
        for cfg in DQ_CONFIGS:
            tuning.OVERRIDES["dq"] = KernelConfig(*cfg)
            rows.append(_timed(name, "dq", cfg, fwd_bwd, [q, k, v], 14 * heads * pairs * dim))
        tuning.OVERRIDES.clear()
    return rows


def _timed(name, kernel, cfg, fn, grads, flops):
    try:
        start = time.time()
        fn()
        torch.cuda.synchronize()
        compile_s = time.time() - start
        ms = bench(fn, grad_to_none=grads)
    except Exception as exc:  # noqa: BLE001
        print(f"sweep {name} {kernel} {cfg}: {type(exc).__name__}", flush=True)
        return {"workload": name, "kernel": kernel, "config": list(cfg), "error": repr(exc)[:200]}
    print(f"sweep {name:>10} {kernel:>5} {cfg}: {ms:8.3f} ms {flops / ms / 1e9:6.0f} TFLOP/s "
          f"(first call {compile_s:.1f} s)", flush=True)
    return {"workload": name, "kernel": kernel, "config": list(cfg), "ms": ms,
            "tflops": flops / ms / 1e9}


CASES = [
    {"workload": "dense", "seq": 16384, "heads": 16, "batch": 1, "dim": 128},
    {"workload": "causal", "seq": 16384, "heads": 16, "batch": 1, "dim": 128},
    {"workload": "window1024", "seq": 16384, "heads": 16, "batch": 1, "dim": 128},
    {"workload": "random10", "seq": 16384, "heads": 16, "batch": 1, "dim": 128},
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--out", default="kernel_dev.json")
    args = parser.parse_args()
    import triton
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": triton.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.check:
        result["check"] = check_against_sdpa()
    if args.sweep:
        result["sweep"] = sweep()
        json.dump(result, open(args.out, "w"), indent=1)
    if args.compare:
        others = ("cudnn", "flash") if args.no_flex else ("flex", "cudnn", "flash")
        result["compare"] = []
        for case in CASES:
            result["compare"] += compare(case, others=others)
            json.dump(result, open(args.out, "w"), indent=1)
        print("\nworkload      impl          fwd ms   fwd+bwd ms")
        table = {}
        for r in result["compare"]:
            if "ms" in r:
                table.setdefault((r["workload"], r["impl"]), {})[r["mode"]] = r["ms"]
        for (w, impl), t in table.items():
            print(f"{w:>12} {impl:>12} {t.get('fwd', float('nan')):8.3f} {t.get('fwd_bwd', float('nan')):10.3f}")
    json.dump(result, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
