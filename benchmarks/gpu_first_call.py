"""Wall time of the first forward+backward call of a new pattern on a known shape class (the
kernel variants already compiled by a warm-up call with a sibling pattern), and of a known
pattern at a new length. GPU only; bf16, H = 16, D = 128, B = 1.

    python benchmarks/gpu_first_call.py --out DIR   -> DIR/first_call.json

Each row: the warm-up pattern, the new one, lengths, first-call seconds (plan build, any kernel
compilation, launch, synchronisation) and the steady-state seconds of the same call.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import tessera
from tessera.patterns import Causal, Power, Strided, Window
from tessera.patterns.blocksparse import BlockSparse

H, D = 16, 128


def _cases():
    def blocks(seq, density, seed):
        return BlockSparse.random(seq, density, block=128, num_heads=H, seed=seed, device="cuda")
    return [
        ("window 1023 -> window 767", (16384, Window(1023, 0)), (16384, Window(767, 0))),
        ("random 10% -> random 20% (new seed)", (16384, blocks(16384, 0.1, 0)),
         (16384, blocks(16384, 0.2, 1))),
        ("strided stride 8 -> stride 4", (32768, Strided(block=128, local_blocks=8, stride=8)),
         (32768, Strided(block=128, local_blocks=4, stride=4))),
        ("power local 256 -> local 512", (32768, Power(local=256, causal=True)),
         (32768, Power(local=512, causal=True))),
        ("causal S=16384 -> S=12000", (16384, Causal()), (12000, Causal())),
    ]


def _call(seq: int, pattern) -> float:
    q, k, v = (torch.randn(1, seq, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    torch.cuda.synchronize()
    start = time.perf_counter()
    o = tessera.attention(q, k, v, pattern=pattern, backend="triton")
    o.backward(torch.ones_like(o))
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "heads": H, "dim": D, "rows": []}
    for name, (warm_seq, warm), (new_seq, new) in _cases():
        warm_first = _call(warm_seq, warm)
        _call(warm_seq, warm)
        first = _call(new_seq, new)
        steady = min(_call(new_seq, new) for _ in range(3))
        row = {"case": name, "warm_up_first_s": round(warm_first, 3), "first_s": round(first, 3),
               "steady_s": round(steady, 4)}
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        with open(os.path.join(args.out, "first_call.json"), "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
