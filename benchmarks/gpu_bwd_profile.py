"""Where forward+backward time goes: per-kernel CUDA time of tessera's Triton kernels and of
compiled FlexAttention on the same mask (torch.profiler), for the sparse cases whose fwd+bwd is
below Flex. GPU only.

    python benchmarks/gpu_bwd_profile.py --out DIR [--cases window1024 random10 ...]

Writes ``bwd_profile.json``: per case and implementation, the CUDA time of each kernel name summed
over ``--iters`` fwd+bwd iterations and divided by the iteration count (ms per iteration).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from tessera.bench.timing import cuda_kernel_ms
from tessera.kernels.registry import AttentionCall
from tessera.kernels.triton.backend import run
from tessera.patterns import Causal, Window
from tessera.patterns.blocksparse import BlockSparse
from tessera.patterns.flex import to_flex

CASES = {
    "window1024": lambda s: Window(1023, 0),
    "random10": lambda s: BlockSparse.random(s, 0.10, block=128, seed=0, device="cuda"),
    "causal": lambda s: Causal(),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    from torch.nn.attention.flex_attention import flex_attention
    S, H, D = args.seq, 16, 128
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seq": S, "cases": {}}
    q, k, v, do = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    qh, kh, vh, doh = (t.detach().transpose(1, 2).contiguous() for t in (q, k, v, do))
    for t in (qh, kh, vh):
        t.requires_grad_()
    for name in args.cases:
        pattern = CASES[name](S)

        def tessera_step():
            o, _ = run(AttentionCall(q, k, v, pattern, False, D ** -0.5, "softmax", None, None,
                                     None, None, True))
            o.backward(do)
            q.grad = k.grad = v.grad = None

        torch._dynamo.reset()
        flex = torch.compile(flex_attention)
        _, block_mask = to_flex(pattern, S, S, 1, device="cuda")

        def flex_step():
            o = flex(qh, kh, vh, block_mask=block_mask)
            o.backward(doh)
            qh.grad = kh.grad = vh.grad = None

        entry = {}
        for impl, fn in (("tessera", tessera_step), ("flex", flex_step)):
            try:
                entry[impl] = cuda_kernel_ms(fn, args.iters)
            except Exception as exc:  # noqa: BLE001
                entry[impl] = {"error": repr(exc)[:300]}
            print(name, impl, json.dumps(entry[impl], indent=1), flush=True)
        result["cases"][name] = entry
        with open(os.path.join(args.out, "bwd_profile.json"), "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
