"""Why the N-D suite's eager fwd+bwd of a case can trail ``gpu_natten_host.py``'s timing of the
same step: one process times the step standalone (``na2d`` on grid-shaped leaves), then runs the
suite's ``run_case`` on it (eager and CUDA-graph rows, FlexAttention included), then times the
standalone step again, printing the launch-hook state, the settings generation and the
host time per step at each point.

    python benchmarks/gpu_suite_host_gap.py --out DIR [--case "2-D 128x128 k17 D=64"]
        -> DIR/suite_host_gap.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from tessera.bench.attention import natten_cases, run_case
from tessera.bench.timing import host_seconds_per_call, median_ms, top_host_functions, warm_up_gpu
from tessera.kernels.triton import launcher, route_settings
from tessera.natten import neighborhood_attention


def standalone(case, device, profile: bool = False) -> dict:
    na = case.na
    shape = (case.batch, *na["grid"], case.heads, case.head_dim)
    q, k, v, do = (torch.randn(shape, device=device, dtype=torch.bfloat16) for _ in range(4))
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def step():
        o = neighborhood_attention(q, k, v, na["kernel"], na["dilation"], na["stride"], na_dim=len(na["grid"]),
                                   layout=na["layout"])
        torch.autograd.grad(o, leaves, do)
    step()
    torch.cuda.synchronize()
    return {"hooks_set": launcher._hooks_set(), "generation": route_settings.generation(),
            "host_ms": host_seconds_per_call(step, calls=30) * 1e3, "bench_ms": median_ms(step, device),
            "top": top_host_functions(step, calls=30, top=30) if profile else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--case", default="2-D 128x128 k17 D=64")
    args = parser.parse_args()
    device = torch.device("cuda")
    warm_up_gpu(device)
    case = next(c for c in natten_cases() if c.name == args.case)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "case": case.name}
    result["before"] = standalone(case, device)
    print("before", result["before"], flush=True)
    records = run_case(case, device, torch.bfloat16, graph=True)
    result["suite"] = [{key: r[key] for key in ("case", "impl", "direction", "ms")} for r in records]
    for r in result["suite"]:
        print(r, flush=True)
    result["after"] = standalone(case, device, profile=True)
    print("after", {key: value for key, value in result["after"].items() if key != "top"}, flush=True)
    for line in result["after"]["top"]:
        print("    " + line)
    with open(os.path.join(args.out, "suite_host_gap.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
