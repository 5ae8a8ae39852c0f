"""How much of the N-D suite's short forward+backward step is host time, and how much it varies.
GPU only.

    python benchmarks/gpu_step_jitter.py --out DIR [--cases "2-D 128x128 k17" ...] [--repeats 6]
                                         [--switch flash_bwd.DELTA_IN_DQ_ENABLED]

(underscores in case names stand for spaces, for shell-split arguments)

For each case (names of ``tessera.bench.attention.natten_cases``; tessera, bf16), one process:

- ``suite_ms``: the suite's own timing (``median_ms``: ``triton.testing.do_bench`` median, L2
  flushed) repeated ``--repeats`` times, as listed, with a module switch of
  ``tessera.kernels.triton`` on and then off (``--switch``; default ``streams.ENABLED``, the side
  stream allowed, ``flash_bwd.overlap_pays`` still deciding per call). Keys end in ``_on`` /
  ``_off`` after the switch's name in lower case, e.g. ``suite_ms_enabled_on``;
- ``samples``: every single timed call of one more do_bench-like loop (L2 flush, CUDA events
  around the call, no synchronisation in between), as percentiles, to tell a slow median from a
  bimodal distribution;
- ``host_ms``: host time per step with nothing synchronised in between;
- ``host_ms_gc_off``: host time per step with Python's garbage collector off (``host_ms_again``:
  on again, after it), and ``gc_objects``: objects the collector tracks at that point;
- ``graph_ms``: the step replayed from a CUDA graph (GPU time alone, no host in it; one stream,
  as the backward keeps its kernels on the current stream during a capture), or the error when
  the step cannot be captured.

Writes ``step_jitter.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time

import torch

from tessera.bench.attention import _Inputs, _impl_fn, natten_cases
from tessera.bench.switches import set_switch
from tessera.bench.timing import graph_replay_ms, host_seconds_per_call, median_ms, warm_up_gpu


def _percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
    return {"n": len(ordered), "p10": at(0.1), "p50": at(0.5), "p90": at(0.9),
            "min": ordered[0], "max": ordered[-1]}


def _event_samples(step, calls: int = 200) -> list[float]:
    """Per-call ms of ``step`` as ``do_bench`` times each call: an L2 flush before each, CUDA
    events around it, one synchronisation at the end (the host may run ahead of the GPU)."""
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda")
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(calls)]
    for begin, end in events:
        flush.zero_()
        begin.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [begin.elapsed_time(end) for begin, end in events]


def measure(case, repeats: int, switch: str = "streams.ENABLED") -> dict:
    device = torch.device("cuda")
    inp = _Inputs(case, device, torch.bfloat16)
    inp.require_grad(True)
    fn = _impl_fn("tessera", case, None, inp, device)

    def step():
        o = fn()
        torch.autograd.grad(o, inp.grad_leaves(), inp.do.view(o.shape))

    row = {"case": case.name, "switch": switch}
    for value in (True, False):
        set_switch(switch, value)
        label = f"{switch.rpartition('.')[2].lower()}_{'on' if value else 'off'}"
        row[f"suite_ms_{label}"] = [median_ms(step, device) for _ in range(repeats)]
        row[f"samples_{label}"] = _percentiles(_event_samples(step))
        row[f"host_ms_{label}"] = host_seconds_per_call(step, calls=50) * 1e3
    set_switch(switch, True)
    gc.collect()
    gc.disable()
    try:
        row["host_ms_gc_off"] = host_seconds_per_call(step, calls=50) * 1e3
    finally:
        gc.enable()
    row["host_ms_again"] = host_seconds_per_call(step, calls=50) * 1e3
    row["gc_objects"] = len(gc.get_objects())
    try:
        row["graph_ms"] = graph_replay_ms(step)
    except Exception as error:  # noqa: BLE001 - reported, not raised: the other numbers stand
        row["graph_ms"] = None
        row["graph_error"] = repr(error)[:300]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--cases", nargs="*", default=["2-D 128x128 k17", "2-D 128x128 k17 dil2", "2-D 128x128 k17 D=64"])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--switch", default="streams.ENABLED",
                        help="MODULE.ATTR of tessera.kernels.triton: a boolean timed on, then off")
    args = parser.parse_args()
    args.cases = [name.replace("_", " ") for name in args.cases]   # underscores for spaces
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_step_jitter.py needs a CUDA GPU")
    cases = {case.name: case for case in natten_cases()}
    unknown = [name for name in args.cases if name not in cases]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; known: {sorted(cases)}")
    warm_up_gpu(torch.device("cuda"))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    path = os.path.join(args.out, "step_jitter.json")
    for name in args.cases:
        row = measure(cases[name], args.repeats, args.switch)
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    for state in ("on", "off"):
        medians = [m for row in result["rows"] for key, values in row.items()
                   if key.startswith("suite_ms_") and key.endswith(f"_{state}") for m in values]
        print(f"suite medians, {args.switch} {state}: {statistics.median(medians):.3f} ms over {len(medians)}")


if __name__ == "__main__":
    main()
