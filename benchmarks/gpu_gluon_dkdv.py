"""The Gluon dk/dv kernel (``tessera.kernels.gluon.na_dkdv``) against the Triton dk/dv kernel on
the same plan, tensors, lse and delta, one process, kernel CUDA time from ``torch.profiler``
(``cuda_kernel_ms``: the Triton kernel timed inside ``flash_bwd.backward``, which also runs dq).
GPU (Hopper) only.

    python benchmarks/gpu_gluon_dkdv.py --out DIR [--dims 128 64] [--cases 3-D ...]

Cases: the N-D suite's 2-D 128 x 128 kernel 17, 3-D 16 x 48 x 48 kernel 5 x 13 x 13 and 3-D
blocked 4 x 8 x 8 (``gpu_gluon_forward.CASES``), bf16, B = 1, H = 16, tiled order, 64 x 64
tiles, the Triton dk/dv at (64, 64, 4, 3) as tessera runs it there. Rows: case, dim, impl, ms,
and the largest difference of dk and dv from the Triton kernel's (a smoke check; the float64
check is ``tests/kernels/test_gluon_gpu.py::test_gluon_dkdv_against_float64``). Writes
``gluon_dkdv.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from gpu_gluon_forward import CASES
from tessera.bench.timing import cuda_kernel_ms, warm_up_gpu
from tessera.kernels.gluon.na_dkdv import na_dkdv
from tessera.kernels.triton import flash_bwd, flash_fwd, masks
from tessera.kernels.triton.row_dot import row_dot
from tessera.kernels.triton.tuning import KernelConfig
from tessera.natten import _auto_layout
from tessera.patterns import Neighborhood, Permuted

BUFFERS = (2, 3)


def _kernel_ms(step, prefix: str) -> float:
    """CUDA ms per ``step`` of the kernels whose names start with ``prefix``."""
    return sum(ms for name, ms in cuda_kernel_ms(step).items() if name.startswith(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--dims", nargs="*", type=int, default=[128, 64])
    parser.add_argument("--cases", nargs="*", default=None,
                        help="case names containing any of these (default: all)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_gluon_dkdv.py needs a CUDA GPU")
    device = torch.device("cuda")
    warm_up_gpu(device)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    path = os.path.join(args.out, "gluon_dkdv.json")
    heads = 16
    for name, (grid, kernel, stride) in CASES.items():
        if args.cases and not any(part in name for part in args.cases):
            continue
        rule = Neighborhood(grid, kernel, stride=stride)
        layout = _auto_layout(rule.grid, rule.kernel, rule.dilation, rule.stride, rule.causal)
        seq = 1
        for g in grid:
            seq *= g
        plan = masks.get_plan(Permuted(rule, layout), seq, seq, 64, 64, heads, device)
        for dim in args.dims:
            q, k, v, do = (torch.randn(1, seq, heads, dim, device=device, dtype=torch.bfloat16)
                           for _ in range(4))
            scale = dim ** -0.5
            o, lse = flash_fwd.forward(q, k, v, plan, scale=scale, config=KernelConfig(64, 64, 4, 1),
                                       grid_order=True)
            delta = row_dot(o, do)
            dq_config = KernelConfig(64, 64, 4, 2)
            dkdv_config = KernelConfig(64, 64, 4, 3 if dim > 64 else 2)

            def triton_step():
                return flash_bwd.backward(do, q, k, v, o, lse, plan, plan, scale=scale,
                                          dq_config=dq_config, dkdv_config=dkdv_config,
                                          grid_order=True)
            ref = triton_step()
            runs = [(f"triton dkdv {dkdv_config}", triton_step, "_attn_bwd_dkdv")]
            for buffers in BUFFERS:
                runs.append((f"gluon num_buffers={buffers}",
                             lambda n=buffers: na_dkdv(q, k, v, do, lse, delta, plan, scale=scale,
                                                       num_buffers=n), "_na_dkdv"))
            for impl, step, kernel_name in runs:
                row = {"case": name, "dim": dim, "impl": impl, "ms": None, "max_diff": None,
                       "error": None}
                try:
                    out = step()
                    dk, dv = (out[1], out[2]) if len(out) > 2 else out
                    row["max_diff"] = max((dk.float() - ref[1].float()).abs().max().item(),
                                          (dv.float() - ref[2].float()).abs().max().item())
                    row["ms"] = _kernel_ms(step, kernel_name)
                except Exception as error:  # noqa: BLE001 - recorded; the other rows stand
                    row["error"] = repr(error)[:300]
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
                with open(path, "w") as f:
                    json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
