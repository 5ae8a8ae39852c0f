"""Host time of the autograd machinery alone on CUDA tensors, against the 2-D neighborhood step.
GPU only.

    python benchmarks/gpu_autograd_floor.py --out DIR   -> DIR/autograd_floor.json

Host microseconds per call (no synchronisation in between; median of three batches of 50) of
steps that share the natten step's autograd structure but do almost no work, so that what the
engine itself costs on the lent host (its device thread, node calls) is told apart from what
tessera's own code costs:

- ``mul``: ``y = x * 2`` and ``torch.autograd.grad(y, x, g)`` (one built-in node);
- ``function``: an ``autograd.Function`` whose forward and backward return their input;
- ``function_views``: the same between ``reshape`` views on both sides, as ``tessera.natten``
  flattens ``[B, X, Y, H, D]`` into ``[B, S, H, D]`` and back (three inputs, one output);
- ``natten_fwd`` / ``natten_step``: ``na2d`` itself (bf16, 128 x 128, kernel 17, H = 16, D = 64)
  without and with the backward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tessera.bench.timing import host_seconds_per_call, warm_up_gpu
from tessera.natten import na2d


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        return q.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def _us(step) -> float:
    return round(statistics.median(host_seconds_per_call(step, calls=50) for _ in range(3)) * 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_autograd_floor.py needs a CUDA GPU")
    device = torch.device("cuda")
    warm_up_gpu(device)
    shape = (1, 128, 128, 16, 64)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(shape, device=device, dtype=torch.bfloat16)
    small = torch.randn(64, device=device, requires_grad=True)
    g = torch.randn(64, device=device)

    def mul():
        torch.autograd.grad(small * 2, small, g)

    def function():
        torch.autograd.grad(_Identity.apply(small, small, small), small, g)

    def function_views():
        flat = [t.reshape(1, 128 * 128, 16, 64) for t in (q, k, v)]
        o = _Identity.apply(*flat).reshape(shape)
        torch.autograd.grad(o, (q, k, v), do, allow_unused=True)

    def natten_fwd():
        with torch.no_grad():
            na2d(q, k, v, 17)

    def natten_step():
        torch.autograd.grad(na2d(q, k, v, 17), (q, k, v), do)

    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "unit": "us per call (host)"}
    for name, step in (("mul", mul), ("function", function), ("function_views", function_views),
                       ("natten_fwd", natten_fwd), ("natten_step", natten_step)):
        step()
        result[name] = _us(step)
        print(name, result[name], flush=True)
    with open(f"{args.out}/autograd_floor.json", "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
