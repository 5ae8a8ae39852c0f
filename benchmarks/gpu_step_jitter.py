"""How much of the N-D suite's short forward+backward step is host time, and how much it varies.
GPU only.

    python benchmarks/gpu_step_jitter.py --out DIR [--cases "2-D 128x128 k17" ...] [--repeats 6]

(underscores in case names stand for spaces, for shell-split arguments)

For each case (names of ``tessera.bench.attention.natten_cases``; tessera, bf16), one process:

- ``suite_ms``: the suite's own timing (``median_ms``: ``triton.testing.do_bench`` median, L2
  flushed) repeated ``--repeats`` times, as listed, with the side stream allowed (``streams.ENABLED``;
  ``flash_bwd.overlap_pays`` still decides per call) and then off;
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
from tessera.bench.timing import graph_replay_ms, host_seconds_per_call, median_ms, warm_up_gpu
from tessera.kernels.triton import streams


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


def measure(case, repeats: int) -> dict:
    device = torch.device("cuda")
    inp = _Inputs(case, device, torch.bfloat16)
    inp.require_grad(True)
    fn = _impl_fn("tessera", case, None, inp, device)

    def step():
        o = fn()
        torch.autograd.grad(o, inp.grad_leaves(), inp.do.view(o.shape))

    row = {"case": case.name}
    for side_stream in (True, False):
        streams.ENABLED = side_stream
        label = "streams_on" if side_stream else "streams_off"
        row[f"suite_ms_{label}"] = [median_ms(step, device) for _ in range(repeats)]
        row[f"samples_{label}"] = _percentiles(_event_samples(step))
        row[f"host_ms_{label}"] = host_seconds_per_call(step, calls=50) * 1e3
    streams.ENABLED = True
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
        row = measure(cases[name], args.repeats)
        print(json.dumps(row), flush=True)
        result["rows"].append(row)
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    medians = [m for row in result["rows"] for m in row["suite_ms_streams_on"]]
    print(f"suite medians, side stream allowed: {statistics.median(medians):.3f} ms over {len(medians)}")


if __name__ == "__main__":
    main()
