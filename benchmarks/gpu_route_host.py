"""Host cost of a neighborhood forward with the Gluon route on and off
(``tessera.kernels.triton.forward_route.GLUON_ENABLED``), one process, bf16, B = 1, H = 16:

- ``bench_ms``: the suite's timing (``median_ms``: CUDA events, L2 flushed), which shows host
  time where it exceeds the GPU's;
- ``host_ms``: host time per call to queue the forward (``host_seconds_per_call``);
- ``top``: the host functions costing most (``cProfile``, cumulative ms per call).

    python benchmarks/gpu_route_host.py --out DIR   -> DIR/route_host.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from tessera.bench.timing import host_seconds_per_call, median_ms, top_host_functions, warm_up_gpu
from tessera.kernels.triton import forward_route
from tessera.natten import na2d, na3d

CASES = {"2-D 128x128 k17 D=128": (na2d, (128, 128), 17, 1, 128),
         "2-D 128x128 k17 D=64": (na2d, (128, 128), 17, 1, 64),
         "3-D 16x48x48 blocked 4x8x8 D=128": (na3d, (16, 48, 48), (4, 8, 8), (4, 8, 8), 128)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    device = torch.device("cuda")
    warm_up_gpu(device)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    for name, (op, grid, kernel, stride, dim) in CASES.items():
        q, k, v = (torch.randn(1, *grid, 16, dim, device=device, dtype=torch.bfloat16) for _ in range(3))
        for route in (True, False):
            forward_route.GLUON_ENABLED = route

            def fn():
                return op(q, k, v, kernel, stride=stride)
            fn()
            torch.cuda.synchronize()
            row = {"case": name, "gluon_route": route,
                   "host_ms": host_seconds_per_call(fn, calls=50) * 1e3,
                   "bench_ms": median_ms(fn, device), "top": top_host_functions(fn, calls=50, top=14)}
            print(json.dumps({key: value for key, value in row.items() if key != "top"}), flush=True)
            for entry in row["top"]:
                print("    " + entry)
            result["rows"].append(row)
        forward_route.GLUON_ENABLED = True
    with open(os.path.join(args.out, "route_host.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
