"""float32 inputs on the GPU: exact ("ieee") against three-TF32 ("tf32x3") products, default
kernel configs against smaller ones, side by side with SDPA in float32. GPU only.

Causal attention, B = 1, H = 8, D = 128, S = 4096: forward and forward+backward ms (``median_ms``),
and for each setting the largest error of o, dq, dk, dv against the float64 reference at S = 1024
(relative to the largest reference value). sm_90 compiles of the "ieee" kernels hold 32 registers
and spill about 7 KB per thread (``benchmarks/compile_check.py --only fp32``).

    python benchmarks/gpu_fp32_ab.py --out DIR

Writes ``fp32_ab.json`` (``rows``: precision, configs, direction, ms, or errors).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

import tessera
from tessera.bench.timing import median_ms
from tessera.kernels.triton import backend, tuning
from tessera.kernels.triton.tuning import KernelConfig

SMALL = {"fwd": KernelConfig(64, 32, 4, 2), "dq": KernelConfig(32, 64, 4, 2),
         "dkdv": KernelConfig(32, 64, 4, 2)}


def _inputs(seq: int, dtype, device, heads: int = 8, dim: int = 128):
    torch.manual_seed(0)
    return [torch.randn(1, seq, heads, dim, dtype=dtype, device=device).requires_grad_()
            for _ in range(3)]


def _run(q, k, v, backend_name: str = "triton"):
    return tessera.attention(q, k, v, causal=True, backend=backend_name)


def _errors(device) -> dict:
    q, k, v = _inputs(1024, torch.float32, device, heads=4)
    o = _run(q, k, v)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = _run(*leaves, backend_name="reference")
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    return {name: float((got.double() - want).abs().max() / want.abs().max())
            for name, got, want in zip(("o", "dq", "dk", "dv"), (o, *grads), (ref, *ref_grads))}


def _times(fn, q, k, v, device) -> dict:
    do = torch.randn_like(q)

    def step():
        o = fn(q, k, v)
        torch.autograd.grad(o, (q, k, v), do)

    with torch.no_grad():
        fwd = median_ms(lambda: fn(q, k, v), device)
    return {"fwd": fwd, "fwd+bwd": median_ms(step, device)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    device = torch.device("cuda")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    q, k, v = _inputs(4096, torch.float32, device)
    sdpa = _times(lambda a, b, c: F.scaled_dot_product_attention(
        a.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2), is_causal=True).transpose(1, 2),
        q, k, v, device)
    for direction, ms in sdpa.items():
        result["rows"].append({"impl": "sdpa", "direction": direction, "ms": ms})
    for precision in ("ieee", "tf32x3"):
        backend.FP32_PRECISION = precision
        for configs in ("default", "small"):
            tuning.OVERRIDES.clear()
            if configs == "small":
                tuning.OVERRIDES.update(SMALL)
            row = {"impl": "tessera", "precision": precision, "configs": configs}
            try:
                row["errors"] = _errors(device)
                for direction, ms in _times(_run, q, k, v, device).items():
                    result["rows"].append({**row, "direction": direction, "ms": ms})
            except Exception as exc:  # noqa: BLE001 (reported in the results)
                result["rows"].append({**row, "error": repr(exc)[:300]})
            print(json.dumps(result["rows"][-1]), flush=True)
    tuning.OVERRIDES.clear()
    with open(os.path.join(args.out, "fp32_ab.json"), "w") as f:
        json.dump(result, f, indent=1)
    for row in result["rows"]:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
