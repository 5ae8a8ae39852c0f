"""Is a linear op's measured time its kernels' or its host's? tessera and fla side by side on
benchmarks/linear.py's inputs (bf16, B = 2, H = 16, D = 128): per op, T, impl and direction, the
median ms (``do_bench``, as linear.py times it), the CUDA time of every kernel of one call
(``torch.profiler``) and the host time to queue one call (``host_seconds_per_call``); when the host
time reaches the kernels' time, the measurement follows the host.

    python benchmarks/gpu_linear_host.py --out DIR [--ops simple_gla delta_rule gla] [--T 16384]
        [--directions fwd fwd+bwd] [--tuned-from JSON ...]

Writes DIR/linear_host.json: ``{"device", "torch", "triton", "date", "rows": [...]}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import torch
import triton

import linear
from tessera.bench.environment import device_name
from tessera.bench.timing import cuda_kernel_ms, host_seconds_per_call, warm_up_gpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ops", nargs="+", default=["simple_gla", "delta_rule", "gla"])
    parser.add_argument("--T", type=int, nargs="+", default=[16384])
    parser.add_argument("--directions", nargs="+", default=["fwd", "fwd+bwd"])
    parser.add_argument("--tuned-from", nargs="+", default=[], metavar="JSON")
    args = parser.parse_args()
    for path in args.tuned_from:
        linear.preload_choices(path)
    linear.lift_fla_hopper_guard()
    warm_up_gpu(torch.device("cuda"))
    result = {"device": device_name(torch.device("cuda")), "torch": torch.__version__,
              "triton": triton.__version__, "date": datetime.date.today().isoformat(), "rows": []}
    for op in args.ops:
        for T in args.T:
            for direction in args.directions:
                for impl, fn in (("tessera", linear.tessera_fn(op)), ("fla", linear.fla_fn(op))):
                    row = {"op": op, "T": T, "direction": direction, "impl": impl}
                    if isinstance(fn, str):
                        row["error"] = fn
                    else:
                        q, k, v, extra = linear.make_inputs(op, T)
                        try:
                            row["ms"] = linear.time_fn(fn, q, k, v, extra, direction)
                            step, leaves = linear.make_step(fn, q, k, v, extra, direction)
                            kernels = cuda_kernel_ms(step, iters=5)
                            row["kernel_ms"] = round(sum(kernels.values()), 4)
                            row["kernels"] = kernels
                            row["host_ms"] = 1e3 * host_seconds_per_call(step)
                            linear.release(leaves)
                        except Exception as exc:  # noqa: BLE001 (recorded, the run goes on)
                            row["error"] = repr(exc)[:300]
                    print(json.dumps({n: x for n, x in row.items() if n != "kernels"}), flush=True)
                    result["rows"].append(row)
                    with open(os.path.join(args.out, "linear_host.json"), "w") as f:
                        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
