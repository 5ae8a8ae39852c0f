"""Is a short attention call bound by the GPU or by the host? For the suite's short sparse cases
(bf16, H = 16, D = 128, B = 1) this measures, forward+backward:

- ``bench_ms``: the suite's timing (``median_ms``: CUDA events, L2 flushed);
- ``host_ms``: host time per call to queue the work (20 calls, no synchronisation in between);
- ``kernel_ms``: the CUDA time of the kernels the call launches (``torch.profiler``);
- the host functions costing most (``cProfile``, cumulative ms per call).

Run in a fresh process, before and after FlexAttention compiles (the suite's first case is
measured right after Flex's forward compile); then the window case with the side stream off,
with tensor descriptors off, with garbage collection frozen; Flex's own host time; and the host
time of each part of the window call (forward with and without autograd, backward, one launch).

    python benchmarks/gpu_host_overhead.py --out DIR   -> DIR/host_overhead.json
    python benchmarks/gpu_host_overhead.py --out DIR --breakdown-only   -> DIR/host_breakdown.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tessera.bench.attention import _flex_fn, _Inputs, _measure, _tessera_fn, gpu_cases
from tessera.bench.timing import cuda_kernel_ms, host_seconds_per_call, top_host_functions, warm_up_gpu


def _fwd_bwd(fn, inp):
    def step():
        o = fn()
        torch.autograd.grad(o, inp.grad_leaves(), inp.do)
    return step


def _host_ms(step, calls: int = 20) -> float:
    """Host ms per call of ``step`` (after one untimed call: compiles and tuning stay out)."""
    return host_seconds_per_call(step, calls) * 1e3


def _measure_case(case, device, label: str) -> dict:
    inp = _Inputs(case, device, torch.bfloat16)
    pattern = case.pattern(device)
    fn = _tessera_fn(case, pattern, inp, "triton")
    inp.require_grad(True)
    step = _fwd_bwd(fn, inp)
    step()
    torch.cuda.synchronize()
    row = {"case": case.name, "when": label,
           "bench_ms": [round(_measure(fn, inp, "fwd+bwd", device), 4) for _ in range(3)],
           "host_ms": [round(_host_ms(step), 4) for _ in range(3)],
           "kernel_ms": cuda_kernel_ms(step)}
    row["kernel_sum_ms"] = round(sum(row["kernel_ms"].values()), 4)
    row["host_top"] = top_host_functions(step)
    return row


def _variants(case, device) -> list[dict]:
    """The window case again with one host-side change at a time: no side stream, no tensor
    descriptors, garbage collection frozen."""
    import gc
    from tessera.kernels.triton import flash_fwd, streams
    rows = []
    for label, setting in (("side stream off", (streams, "ENABLED", False)),
                           ("tensor descriptors off", (flash_fwd, "TMA_ENABLED", False))):
        module, name, value = setting
        before = getattr(module, name)
        setattr(module, name, value)
        try:
            rows.append(_measure_case(case, device, label))
        finally:
            setattr(module, name, before)
    gc.collect()
    gc.freeze()
    rows.append(_measure_case(case, device, "gc frozen"))
    gc.unfreeze()
    return rows


def _breakdown(case, device) -> dict:
    """Host ms per call of the parts of one window fwd+bwd: the forward without and with autograd,
    the backward alone (graph kept), one delta (row_dot) launch, one bare forward-kernel launch."""
    from tessera.kernels.triton import backend, flash_fwd
    from tessera.kernels.triton.row_dot import row_dot
    inp = _Inputs(case, device, torch.bfloat16)
    fn = _tessera_fn(case, case.pattern(device), inp, "triton")
    parts = {}
    inp.require_grad(False)
    with torch.no_grad():
        parts["forward, no autograd"] = _host_ms(fn)
    inp.require_grad(True)
    parts["forward, autograd node"] = _host_ms(fn)
    o = fn()
    parts["backward alone"] = _host_ms(lambda: torch.autograd.grad(o, inp.grad_leaves(), inp.do,
                                                                   retain_graph=True))
    parts["row_dot launch"] = _host_ms(lambda: row_dot(o, inp.do))
    q, k, v = (t.detach() for t in (inp.q, inp.k, inp.v))
    config = backend.kernel_config("fwd", 128, q.dtype, False, backend._mask_shape(
        case.pattern(device), case.seq, case.seq, case.heads, device))
    plan = backend.get_plan(case.pattern(device), case.seq, case.seq, config.block_m, config.block_n,
                            case.heads, device)
    parts["forward kernel launch (flash_fwd.forward)"] = _host_ms(
        lambda: flash_fwd.forward(q, k, v, plan, scale=128 ** -0.5, config=config))
    return {"case": case.name, "when": "host ms per part", "parts": {k: round(v, 4) for k, v in parts.items()}}


def _flex_host(case, device) -> dict:
    inp = _Inputs(case, device, torch.bfloat16)
    fn = _flex_fn(case, case.pattern(device), inp)
    inp.require_grad(True)
    step = _fwd_bwd(fn, inp)
    step()
    torch.cuda.synchronize()
    row = {"case": case.name, "when": "flex", "bench_ms": [round(_measure(fn, inp, "fwd+bwd", device), 4)],
           "host_ms": [round(_host_ms(step), 4) for _ in range(3)], "kernel_ms": cuda_kernel_ms(step)}
    row["kernel_sum_ms"] = round(sum(row["kernel_ms"].values()), 4)
    row["host_top"] = []
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--breakdown-only", action="store_true", help="only the per-part host times")
    args = parser.parse_args()
    device = torch.device("cuda")
    cases = {c.name: c for c in gpu_cases()}
    names = ["causal window 1024 S=16384", "random blocks 10% S=16384"]
    warm_up_gpu(device)
    if args.breakdown_only:
        breakdown = _breakdown(cases[names[0]], device)
        print(json.dumps(breakdown))
        with open(f"{args.out}/host_breakdown.json", "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d %H:%M:%S"), "breakdown": breakdown}, f, indent=1)
        return
    rows = [_measure_case(cases[n], device, "fresh process") for n in names]
    window = cases[names[0]]
    inp = _Inputs(window, device, torch.bfloat16)
    flex_ms = _measure(_flex_fn(window, window.pattern(device), inp), inp, "fwd+bwd", device)
    rows += [_measure_case(cases[n], device, "after flex compiled") for n in names]
    rows += _variants(window, device)
    rows.append(_flex_host(window, device))
    breakdown = _breakdown(window, device)
    print(json.dumps(breakdown))
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "host_top"}))
        print("\n".join(row["host_top"][:12]))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "flex_window_fwd_bwd_ms": flex_ms, "rows": rows,
              "breakdown": breakdown}
    with open(f"{args.out}/host_overhead.json", "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
