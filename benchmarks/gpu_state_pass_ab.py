"""Simple GLA's state pass against fla 0.6's ``chunk_fwd_h`` on the same tensors, kernel time only
(``torch.profiler``), alternating rounds in one process: is the gap the kernel code or its inputs?

Both read the same k, v (bf16, B = 2, H = 16, K = V = 128) and the same chunk-local cumulative gate
(ours in natural-log units, fla's the same values times 1 / ln 2, as fla's own cumsum scales them);
tessera runs every configuration given (default: its timed choice and fla's pick, 64 x 64 / 4 warps /
4 stages), fla its autotuned pick (recorded).

    python benchmarks/gpu_state_pass_ab.py --out DIR [--T 16384] [--rounds 3] [--configs 64,64,4,4 ...]
        [--tuned-from JSON ...]

Writes DIR/state_pass_ab.json: per round, kernel ms of each, and each tessera configuration's time by CUDA
graph replay (``graph``) and by ``do_bench`` (``do_bench``: with its L2 flush, host path included, as the
launch tuner times candidates): do these rank the configurations as the kernel times do?
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

import linear
from tessera.bench.environment import device_name
from tessera.bench.timing import cuda_kernel_ms, warm_up_gpu
from tessera.linear.triton import simple_gla as sg
from tessera.linear.triton import tuning


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--T", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", nargs="*", default=["64,64,4,4"], metavar="BK,BV,WARPS,STAGES")
    parser.add_argument("--tuned-from", nargs="+", default=[], metavar="JSON")
    args = parser.parse_args()
    for path in args.tuned_from:
        linear.preload_choices(path)
    from fla.ops.common import chunk_h

    device = torch.device("cuda")
    warm_up_gpu(device)
    q, k, v, extra = linear.make_inputs("simple_gla", args.T)
    B, T, H, K = k.shape
    packed = sg.packed_chunks(B, T, sg.CHUNK, device)
    k_flat, v_flat = k.reshape(B * T, H, K), v.reshape(B * T, H, v.shape[-1])
    gc = sg.chunk_local_cumsum(extra["g"].reshape(B * T, H).contiguous(), packed)
    gc_log2 = (gc / math.log(2)).reshape(B, T, H)

    def fla_state():
        chunk_h.chunk_fwd_h(k=k, v=v, g=gc_log2, g_gamma=None, gk=None, gv=None, h0=None,
                            output_final_state=False, chunk_size=sg.CHUNK, states_in_fp32=False)

    def ours(cfg):
        def run():
            with tuning.forced("simple_gla.state", cfg):
                sg.chunk_states(k_flat, v_flat, gc, None, False, packed)
        return run

    impls = {"fla chunk_fwd_h": fla_state, "tessera timed choice": lambda: sg.chunk_states(
        k_flat, v_flat, gc, None, False, packed)}
    for text in args.configs:
        cfg = tuning.LaunchConfig(*(int(x) for x in text.split(",")))
        impls[f"tessera {text}"] = ours(cfg)
    result = {"device": device_name(device), "torch": torch.__version__, "triton": triton.__version__,
              "date": datetime.date.today().isoformat(), "T": args.T, "rounds": []}
    for rnd in range(args.rounds):
        row = {}
        for name, fn in impls.items():
            row[name] = round(sum(cuda_kernel_ms(fn, iters=20).values()), 4)
        for text in args.configs:
            cfg = tuning.LaunchConfig(*(int(x) for x in text.split(",")))
            row[f"graph {text}"] = round(do_bench_cudagraph(ours(cfg), rep=20, return_mode="median"), 4)
            row[f"do_bench {text}"] = round(do_bench(ours(cfg), warmup=5, rep=20, return_mode="median"), 4)
        print(json.dumps(row), flush=True)
        result["rounds"].append(row)
        best = chunk_h.chunk_fwd_kernel_h
        while best is not None and not hasattr(best, "best_config"):
            best = getattr(best, "fn", None)
        result["fla_config"] = str(getattr(best, "best_config", None))
        result["tuned"] = tuning.chosen()
        with open(os.path.join(args.out, "state_pass_ab.json"), "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
