"""N-D neighborhood mask kinds on the GPU: the in-kernel neighborhood mask against packed bitmasks,
tessera only (the full comparison with Flex is benchmarks/natten.py), bf16, H = 16, D = 128.

    python benchmarks/gpu_natten_mask.py --out DIR [--profile] [--dkdv 64,64,4,3 32,64,4,3]
        [--only SUBSTRING ...] [--no-bits]

Writes ``natten_mask.json``: per case and mask kind, forward and forward+backward ms (medians of
``triton.testing.do_bench``) with the automatic tiled layout and the kernel configs it implies;
with ``--profile`` also the CUDA time of every kernel of one fwd+bwd step (torch.profiler, mean
of 5 steps) with the in-kernel mask, and the host time to queue one forward and one fwd+bwd step
(when it exceeds the kernels' time, the step is host-bound), also split per part (``host_parts``); with ``--dkdv`` forward+backward with each given dk/dv config forced.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from triton.testing import do_bench

from tessera.bench.host_parts import host_ms_per_part
from tessera.bench.timing import cuda_kernel_ms, host_seconds_per_call, warm_up_gpu
from tessera.kernels.triton import masks, tuning
from tessera.kernels.triton.tuning import KernelConfig
from tessera.natten import neighborhood_attention

# name: (grid, kernel, dilation, stride, batch)
CASES = {
    "2-D 128x128 k17": ((128, 128), (17, 17), 1, 1, 1),
    "3-D 16x48x48 k5x13x13": ((16, 48, 48), (5, 13, 13), 1, 1, 1),
    "3-D 16x48x48 blocked 4x8x8": ((16, 48, 48), (4, 8, 8), 1, (4, 8, 8), 1),
    "1-D 32768 window 2048": ((32768,), (2048,), 1, 1, 1),
    "2-D 128x128 k17 dil2": ((128, 128), (17, 17), 2, 1, 1),
    # The dilated case's four dilation groups as a batch, without the folding copies.
    "2-D 64x64 k17 B=4": ((64, 64), (17, 17), 1, 1, 4),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--dkdv", nargs="*", default=[], help="dk/dv configs to time, e.g. 64,64,4,3")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only cases whose name contains one of these (default: the first four)")
    parser.add_argument("--no-bits", action="store_true", help="skip the packed-bitmask mask kind")
    args = parser.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    warm_up_gpu(torch.device("cuda"))
    names = list(CASES)[:4] if args.only is None else [n for n in CASES if any(x in n for x in args.only)]
    for name in names:
        grid, kernel, dilation, stride, batch = CASES[name]
        shape = (batch, *grid, 16, 128)
        q, k, v, do = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_()

        def fwd():
            with torch.no_grad():
                return neighborhood_attention(q, k, v, kernel, dilation, stride, na_dim=len(grid))

        def fwd_bwd():
            neighborhood_attention(q, k, v, kernel, dilation, stride, na_dim=len(grid)).backward(do)

        def fwd_bwd_fresh():
            fwd_bwd()
            q.grad = k.grad = v.grad = None

        for analytic in (True,) if args.no_bits else (True, False):
            masks.ANALYTIC_NEIGHBORHOOD = analytic
            masks.clear_plan_cache()
            row = {"case": name, "mask": "neighborhood" if analytic else "bits"}
            try:
                row["fwd_ms"] = float(do_bench(fwd, warmup=10, rep=50, return_mode="median"))
                row["fwd_bwd_ms"] = float(do_bench(fwd_bwd, warmup=5, rep=30, grad_to_none=[q, k, v],
                                                   return_mode="median"))
            except Exception as exc:  # noqa: BLE001
                row["error"] = repr(exc)[:300]
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
            with open(os.path.join(args.out, "natten_mask.json"), "w") as f:
                json.dump(result, f, indent=1)
        masks.ANALYTIC_NEIGHBORHOOD = True
        masks.clear_plan_cache()
        for cfg in args.dkdv:
            tuning.OVERRIDES["dkdv"] = KernelConfig(*(int(x) for x in cfg.split(",")))
            row = {"case": name, "mask": "neighborhood", "dkdv": cfg}
            try:
                row["fwd_bwd_ms"] = float(do_bench(fwd_bwd, warmup=5, rep=30, grad_to_none=[q, k, v],
                                                   return_mode="median"))
            except Exception as exc:  # noqa: BLE001
                row["error"] = repr(exc)[:300]
            tuning.OVERRIDES.clear()
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
        if args.profile:
            row = {"case": name, "mask": "neighborhood", "kernels_ms": cuda_kernel_ms(fwd_bwd_fresh, iters=5),
                   "host_ms_fwd": 1e3 * host_seconds_per_call(fwd),
                   "host_ms_fwd_bwd": 1e3 * host_seconds_per_call(fwd_bwd_fresh),
                   "host_ms_per_part_fwd_bwd": host_ms_per_part(fwd_bwd_fresh)}
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
            with open(os.path.join(args.out, "natten_mask.json"), "w") as f:
                json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
