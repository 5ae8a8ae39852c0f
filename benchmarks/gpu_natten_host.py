"""Host cost of the N-D suite's neighborhood forward+backward steps, where eager timings trail
CUDA-graph replays (2-D kernel 17: 1.29 against 0.78 ms at D = 128, 1.61 against 0.54 at D = 64
in ``results/2026-12-01-h200-natten-8.json``). One process, bf16, B = 1, H = 16, per case:

- ``bench_ms``: the suite's timing of one step (``median_ms``: CUDA events, L2 flushed);
- ``host_ms``: host time per step to queue it (``host_seconds_per_call``);
- ``syncs``: the host-device synchronizations one step makes (CUDA's sync debug mode, which
  warns on each), with the first few warnings;
- ``top``: the host functions costing most (``cProfile``, cumulative ms per step);

each with the Gluon launches bound (``launcher.BIND_LAUNCHES``: only the tensors filled in per
call) and the encoded tensor maps reused (``launcher.CACHE_TENSOR_MAPS``), then with binding off,
then with both off (no ``top`` for these two). With ``--backward-ab`` instead: bound and cached,
with the Gluon dq and dk/dv routes on, then off (``backward_route.GLUON_DQ_ENABLED``,
``GLUON_DKDV_ENABLED``), the Triton kernels taking the backward. ``--bound-only`` keeps the
first variant only; ``--trace`` adds torch.profiler's operator table (CPU and CUDA time) per row.

    python benchmarks/gpu_natten_host.py --out DIR [--cases dil2 ...] [--backward-ab] [--bound-only] [--trace]
        -> DIR/natten_host.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import torch

from tessera.bench.timing import host_seconds_per_call, median_ms, top_host_functions, warm_up_gpu
from tessera.kernels.triton import backward_route, launcher
from tessera.natten import na2d, na3d

# name: (op, grid, kernel, stride, dilation, head dim)
CASES = {"2-D 128x128 k17 D=128": (na2d, (128, 128), 17, 1, 1, 128),
         "2-D 128x128 k17 D=64": (na2d, (128, 128), 17, 1, 1, 64),
         "2-D 128x128 k17 dil2 D=128": (na2d, (128, 128), 17, 1, 2, 128),
         "3-D 16x48x48 blocked 4x8x8 D=128": (na3d, (16, 48, 48), (4, 8, 8), (4, 8, 8), 1, 128),
         # Grids no tile shape divides, run padded to whole tiles (the suite's padded cases).
         "2-D 100x100 k17 padded D=128": (na2d, (100, 100), 17, 1, 1, 128),
         "3-D 21x30x52 k5x13x13 padded D=128": (na3d, (21, 30, 52), (5, 13, 13), 1, 1, 128)}


def sync_warnings(step) -> list[str]:
    """Messages of the synchronizations one call of ``step`` makes."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return [str(w.message)[:200] for w in caught if "synchroniz" in str(w.message).lower()]


def profiler_table(step, calls: int = 10) -> str:
    """torch.profiler's operator table for ``calls`` calls of ``step``, by total CUDA time."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--cases", nargs="*", default=None, help="case names containing any of these")
    parser.add_argument("--backward-ab", action="store_true",
                        help="Gluon dq and dk/dv routes on, then off, instead of the binding variants")
    parser.add_argument("--bound-only", action="store_true",
                        help="only the first variant (bound launches, cached tensor maps, Gluon backward)")
    parser.add_argument("--trace", action="store_true",
                        help="also print torch.profiler's per-operator CPU and CUDA times over 10 calls")
    args = parser.parse_args()
    device = torch.device("cuda")
    warm_up_gpu(device)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    variants = ([(True, True, True), (True, True, False)] if args.backward_ab
                else [(True, True, True), (False, True, True), (False, False, True)])
    if args.bound_only:
        variants = variants[:1]
    for name, (op, grid, kernel, stride, dilation, dim) in CASES.items():
        if args.cases and not any(part in name for part in args.cases):
            continue
        q, k, v, do = (torch.randn(1, *grid, 16, dim, device=device, dtype=torch.bfloat16) for _ in range(4))
        leaves = [t.requires_grad_() for t in (q, k, v)]

        def step():
            o = op(q, k, v, kernel, dilation, stride=stride)
            torch.autograd.grad(o, leaves, do)
        for bind, cache, gluon_backward in variants:
            launcher.BIND_LAUNCHES, launcher.CACHE_TENSOR_MAPS = bind, cache
            backward_route.GLUON_DQ_ENABLED = backward_route.GLUON_DKDV_ENABLED = gluon_backward
            step()
            torch.cuda.synchronize()
            syncs = sync_warnings(step)
            row = {"case": name, "bound_launches": bind, "tensor_map_cache": cache,
                   "gluon_backward": gluon_backward,
                   "host_ms": host_seconds_per_call(step, calls=30) * 1e3,
                   "bench_ms": median_ms(step, device), "syncs": len(syncs), "sync_messages": syncs[:5],
                   "top": top_host_functions(step, calls=30, top=30) if bind else []}
            print(json.dumps({key: value for key, value in row.items() if key != "top"}), flush=True)
            for entry in row["top"]:
                print("    " + entry)
            if args.trace:
                row["trace"] = profiler_table(step)
                print(row["trace"], flush=True)
            result["rows"].append(row)
        launcher.BIND_LAUNCHES, launcher.CACHE_TENSOR_MAPS = True, True
        backward_route.GLUON_DQ_ENABLED = backward_route.GLUON_DKDV_ENABLED = True
    with open(os.path.join(args.out, "natten_host.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
