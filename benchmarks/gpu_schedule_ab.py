"""Longest-first launch order (``kernels/triton/schedule.py``) on and off, and the S2 strided
case's tile sizes per kernel. GPU only; bf16, H = 16, D = 128.

    python benchmarks/gpu_schedule_ab.py --out DIR [--cases strided ...] [--no-sweep] [--no-flex]
        -> DIR/schedule_ab.json

Rows: ``{"case", "longest_first", "direction", "ms"}`` (alternating rounds, do_bench median),
``{"case", "longest_first", "kernels": {name: ms}}`` (profiler, per kernel), ``{"case", "kernel",
"config", "ms"}`` (strided, one kernel forced to a config, the others at their defaults) and
``{"case", "impl": "flex", "direction", "ms"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from triton.testing import do_bench

from tessera.bench.timing import cuda_kernel_ms
from tessera.kernels.registry import AttentionCall
from tessera.kernels.triton import schedule, tuning
from tessera.kernels.triton.backend import run
from tessera.kernels.triton.tuning import KernelConfig
from tessera.patterns import Causal, Power, Strided, Window, to_flex
from tessera.patterns.blocksparse import BlockSparse

CASES = {
    "strided (S2) S=32768": (1, 32768, lambda: Strided(block=128, local_blocks=8, stride=8, causal=True)),
    "random blocks 10% S=16384": (1, 16384, lambda: BlockSparse.random(16384, 0.10, block=128, num_heads=16,
                                                                       seed=0, device="cuda")),
    "random blocks 30% S=16384": (1, 16384, lambda: BlockSparse.random(16384, 0.30, block=128, num_heads=16,
                                                                       seed=0, device="cuda")),
    "causal window 1024 S=16384": (1, 16384, lambda: Window(1023, 0)),
    "power local 256 S=32768": (1, 32768, lambda: Power(local=256, causal=True)),
    "causal S=16384 B=2": (2, 16384, lambda: Causal()),
}

STRIDED_CONFIGS = {
    "fwd": [(128, 128, 8, 3), (64, 64, 4, 2), (128, 64, 8, 3)],
    "dq": [(64, 64, 4, 2), (128, 64, 8, 2), (128, 128, 8, 2)],
    "dkdv": [(64, 64, 4, 3), (64, 128, 8, 2), (32, 64, 4, 3), (128, 128, 8, 2), (64, 128, 8, 3)],
}

H, D = 16, 128


def _inputs(batch: int, seq: int):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(batch, seq, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(4))
    return q, k, v, do


def _steps(pattern, q, k, v, do):
    def forward():
        with torch.no_grad():
            run(AttentionCall(q, k, v, pattern, False, D ** -0.5, "softmax", None, None, None, None, True))

    def forward_backward():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        o, _ = run(AttentionCall(*leaves, pattern, False, D ** -0.5, "softmax", None, None, None, None, True))
        torch.autograd.grad(o, leaves, do)
    return forward, forward_backward


def _flex_steps(pattern, q, k, v, do):
    from torch.nn.attention.flex_attention import flex_attention
    torch._dynamo.reset()
    flex = torch.compile(flex_attention, dynamic=False)
    _, block_mask = to_flex(pattern, q.shape[1], k.shape[1], num_heads=H, block_size=128, device=q.device)
    qt, kt, vt, dot = (t.transpose(1, 2) for t in (q, k, v, do))

    def forward():
        with torch.no_grad():
            flex(qt, kt, vt, block_mask=block_mask)

    def forward_backward():
        leaves = [t.detach().requires_grad_() for t in (qt, kt, vt)]
        o = flex(*leaves, block_mask=block_mask)
        torch.autograd.grad(o, leaves, dot)
    return forward, forward_backward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--cases", nargs="*", default=None)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-flex", action="store_true")
    args = parser.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "heads": H, "dim": D, "rows": []}
    path = os.path.join(args.out, "schedule_ab.json")

    def emit(row):
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)

    for name, (batch, seq, make) in CASES.items():
        if args.cases and not any(c in name for c in args.cases):
            continue
        pattern = make()
        q, k, v, do = _inputs(batch, seq)
        forward, forward_backward = _steps(pattern, q, k, v, do)
        for enabled in (True, False, True, False):
            schedule.ENABLED = enabled
            for direction, step in (("fwd", forward), ("fwd+bwd", forward_backward)):
                ms = float(do_bench(step, warmup=25, rep=100, return_mode="median"))
                emit({"case": name, "longest_first": enabled, "direction": direction, "ms": ms})
        for enabled in (True, False):
            schedule.ENABLED = enabled
            kernels = {key: ms for key, ms in cuda_kernel_ms(forward_backward, iters=5).items()
                       if "_attn" in key or "row_dot" in key}
            emit({"case": name, "longest_first": enabled, "kernels": kernels})
        schedule.ENABLED = True
        if name.startswith("strided") and not args.no_sweep:
            for kernel, configs in STRIDED_CONFIGS.items():
                for config in configs:
                    tuning.OVERRIDES.clear()
                    tuning.OVERRIDES[kernel] = KernelConfig(*config)
                    try:
                        kernels = cuda_kernel_ms(forward_backward, iters=5)
                        name = "_attn_fwd" if kernel == "fwd" else f"_attn_bwd_{kernel}"
                        ms = sum(t for key, t in kernels.items() if name in key)
                    except Exception as exc:  # a config that does not fit must not end the sweep
                        print(f"{kernel} {config}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                        ms = None
                    emit({"case": name, "kernel": kernel, "config": list(config), "ms": ms})
            tuning.OVERRIDES.clear()
        if not args.no_flex and name.startswith("strided"):
            flex_fwd, flex_fwd_bwd = _flex_steps(pattern, q, k, v, do)
            for direction, step in (("fwd", flex_fwd), ("fwd+bwd", flex_fwd_bwd)):
                ms = float(do_bench(step, warmup=25, rep=100, return_mode="median"))
                emit({"case": name, "impl": "flex", "direction": direction, "ms": ms})
            schedule.ENABLED = True
            for direction, step in (("fwd", forward), ("fwd+bwd", forward_backward)):
                ms = float(do_bench(step, warmup=25, rep=100, return_mode="median"))
                emit({"case": name, "impl": "tessera", "direction": direction, "ms": ms})
        del q, k, v, do
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
