"""torch.profiler tables of one fwd+bwd step of a suite case, eager and under torch.compile
(default and ``reduce-overhead``), to see where the compiled step's time goes. GPU only.

    python benchmarks/gpu_natten_compile_profile.py [--case "2-D 128x128 k17 D=32"]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from natten_compile import _attention
from tessera.bench.attention import _Inputs, natten_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="2-D 128x128 k17 D=32")
    args = parser.parse_args()
    case = next(c for c in natten_cases() if c.name == args.case)
    device = torch.device("cuda")
    inp = _Inputs(case, device, torch.bfloat16)
    inp.require_grad(True)
    leaves = (inp.q, inp.k, inp.v)
    attend = _attention(case)
    for name, mode in (("eager", "eager"), ("compiled", None), ("reduce-overhead", "reduce-overhead")):
        torch._dynamo.reset()
        fn = attend if mode == "eager" else torch.compile(attend, fullgraph=True, mode=mode)

        def step():
            o = fn(*leaves)
            torch.autograd.grad(o, leaves, inp.do)
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        print(f"===== {case.name}: {name} (5 steps)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=22, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
