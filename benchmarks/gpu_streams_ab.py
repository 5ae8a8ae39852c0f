"""Backward with and without the dk/dv side stream (``kernels/triton/streams.py``): tessera
forward+backward ms on the kernel issue's sparse cases, both settings alternated in one process.
GPU only.

    python benchmarks/gpu_streams_ab.py --out DIR [--cases SUBSTRING ...]  -> DIR/streams_ab.json
    python benchmarks/gpu_streams_ab.py --verdict DIR/streams_ab.json      -> prints 1 or 0

The verdict is 1 (side stream on) when the summed per-case best times are lower with it.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from triton.testing import do_bench

from tessera.kernels.registry import AttentionCall
from tessera.kernels.triton import streams
from tessera.kernels.triton.backend import run
from tessera.patterns import Causal, Power, Strided, Window
from tessera.patterns.blocksparse import BlockSparse

CASES = {
    "causal window 1024 S=16384": (16384, lambda: Window(1023, 0)),
    "random blocks 10% S=16384": (16384, lambda: BlockSparse.random(16384, 0.10, block=128, seed=0, device="cuda")),
    "strided (S2) S=32768": (32768, lambda: Strided(block=128, local_blocks=8, stride=8, causal=True)),
    "power local 256 S=32768": (32768, lambda: Power(local=256, causal=True)),
    "causal S=16384": (16384, lambda: Causal()),
}


def verdict(path: str) -> int:
    """1 if the side stream made the cases faster in total (best of the rounds per case), else 0."""
    rows = json.load(open(path))["rows"]
    best = {}
    for r in rows:
        key = (r["case"], r["side_stream"])
        best[key] = min(best.get(key, float("inf")), r["fwd_bwd_ms"])
    cases = {case for case, _ in best if (case, True) in best and (case, False) in best}
    on = sum(best[(c, True)] for c in cases)
    off = sum(best[(c, False)] for c in cases)
    return int(bool(cases) and on < off)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--cases", nargs="*", default=None)
    parser.add_argument("--verdict", default=None, help="print the verdict of a results file and exit")
    args = parser.parse_args()
    if args.verdict:
        try:
            print(verdict(args.verdict))
        except (OSError, ValueError, KeyError):
            print(1)
        return
    H, D = 16, 128
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    for name, (seq, make) in CASES.items():
        if args.cases and not any(c in name for c in args.cases):
            continue
        pattern = make()
        q, k, v, do = (torch.randn(1, seq, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_()

        def step():
            o, _ = run(AttentionCall(q, k, v, pattern, False, D ** -0.5, "softmax", None, None,
                                     None, None, True))
            o.backward(do)

        for enabled in (True, False, True, False):
            streams.ENABLED = enabled
            ms = float(do_bench(step, warmup=10, rep=60, grad_to_none=[q, k, v], return_mode="median"))
            row = {"case": name, "side_stream": enabled, "fwd_bwd_ms": ms}
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
        streams.ENABLED = True
        with open(os.path.join(args.out, "streams_ab.json"), "w") as f:
            json.dump(result, f, indent=1)
        del q, k, v, do
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
