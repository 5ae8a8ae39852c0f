"""The Gluon backward kernels (``tessera.kernels.gluon.na_dq``, ``na_dkdv``) against the Triton dq
and dk/dv kernels on the same plan, tensors, lse and delta, one process, kernel CUDA time from
``torch.profiler`` (``cuda_kernel_ms``: the Triton kernels timed inside ``flash_bwd.backward``
with the Gluon routes off). GPU (Hopper) only.

    python benchmarks/gpu_gluon_backward.py --out DIR [--kernels dq dkdv] [--dims 128 64] [--cases 3-D ...]
        [--boxes-registers 0 168] [--dkdv-registers 128] [--query-tiles 2x4x8]

Cases: the N-D suite's 2-D 128 x 128 kernel 17, 3-D 16 x 48 x 48 kernel 5 x 13 x 13, 3-D
blocked 4 x 8 x 8 and 1-D 32768 window 2048 (``gpu_gluon_forward.CASES``), bf16, B = 1,
H = 16, tiled order, 64 x 64 tiles, the Triton kernels at (64, 64, 4, 2) for dq and (64, 64,
4, 3) for dk/dv (2 stages at D = 64) as tessera runs them there. Rows: case, dim, kernel, impl, ms, and the largest
difference of the gradients from the Triton kernel's (a smoke check; the float64 checks are
``tests/kernels/test_gluon_gpu.py::test_gluon_dq_against_float64`` and ``..._dkdv_...``).
Plans with key boxes also get dq rows of ``na_dq_boxes`` and dk/dv rows of ``na_dkdv_boxes``
(query boxes; both ``gluon boxes``), one per register cap of ``--boxes-registers`` (0: none),
and with ``--query-tiles`` on the plans of those tiled orders too (lse, delta and the
gradients stay in grid order). Writes ``gluon_backward.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from gpu_gluon_forward import CASES, case_plan
from tessera.bench.timing import cuda_kernel_ms, warm_up_gpu
from tessera.kernels.gluon import key_boxes
from tessera.kernels.gluon.na_dkdv import na_dkdv
from tessera.kernels.gluon.na_dkdv_boxes import na_dkdv_boxes
from tessera.kernels.gluon.na_dq import na_dq
from tessera.kernels.gluon.na_dq_boxes import na_dq_boxes
from tessera.kernels.triton import backward_route, flash_bwd, flash_fwd
from tessera.kernels.triton.row_dot import row_dot
from tessera.kernels.triton.tuning import KernelConfig

# Gluon variants per kernel: keyword arguments of na_dq / na_dkdv.
VARIANTS = {
    "dq": [dict(num_buffers=1, v_buffers=1), dict(num_buffers=2, v_buffers=1),
           dict(num_buffers=2, v_buffers=2), dict(num_buffers=1, v_buffers=1, max_registers=168)],
    "dkdv": [dict(num_buffers=n, pipeline=mode) for mode in (0, 1, 2) for n in (2, 3)],
}
TRITON_KERNEL = {"dq": "_attn_bwd_dq", "dkdv": "_attn_bwd_dkdv"}


def _kernel_ms(step, prefix: str) -> float:
    """CUDA ms per ``step`` of the kernels whose names start with ``prefix``."""
    return sum(ms for name, ms in cuda_kernel_ms(step).items() if name.startswith(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--kernels", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--dims", nargs="*", type=int, default=[128, 64])
    parser.add_argument("--cases", nargs="*", default=None,
                        help="case names containing any of these (default: all)")
    parser.add_argument("--boxes-registers", nargs="*", type=int, default=[0],
                        help="register caps of the na_dq_boxes rows (0: none)")
    parser.add_argument("--dkdv-registers", nargs="*", type=int, default=[],
                        help="register caps: na_dkdv rows at 2 and 3 ring slots in each loop under each")
    parser.add_argument("--query-tiles", nargs="*", default=[],
                        help="tile shapes such as 2x8x4: the box rows (na_dq_boxes, na_dkdv_boxes) "
                             "also on the plan of that tiled order")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_gluon_backward.py needs a CUDA GPU")
    device = torch.device("cuda")
    warm_up_gpu(device)
    for switch in ("GLUON_DQ_ENABLED", "GLUON_DKDV_ENABLED"):
        setattr(backward_route, switch, False)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    path = os.path.join(args.out, "gluon_backward.json")
    heads = 16
    for name, (grid, kernel, stride, *dilation) in CASES.items():
        if dilation:  # the folded backward is timed end to end by the suite's dil2 rows
            continue
        if args.cases and not any(part in name for part in args.cases):
            continue
        plan, seq = case_plan(grid, kernel, stride, heads, device)
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
            for kernel_name in args.kernels:
                config = dq_config if kernel_name == "dq" else dkdv_config
                runs = [(f"triton {kernel_name} {config}", triton_step, TRITON_KERNEL[kernel_name])]
                variants = list(VARIANTS[kernel_name])
                if kernel_name == "dkdv":
                    variants += [dict(num_buffers=n, pipeline=mode, max_registers=cap)
                                 for cap in args.dkdv_registers for mode in (0, 1, 2) for n in (2, 3)]
                for variant in variants:
                    text = " ".join(f"{key}={value}" for key, value in variant.items())
                    if kernel_name == "dq":
                        step = (lambda kw=variant: (na_dq(q, k, v, do, lse, delta, plan, scale=scale,
                                                          **kw),))
                    else:
                        step = (lambda kw=variant: na_dkdv(q, k, v, do, lse, delta, plan,
                                                           scale=scale, **kw))
                    runs.append((f"gluon {text}", step, f"_na_{kernel_name}"))
                box_plans = [("", plan)]
                for text in args.query_tiles:
                    shape = tuple(int(part) for part in text.split("x"))
                    if len(shape) == len(grid) and all(g % t == 0 for g, t in zip(grid, shape)):
                        box_plans.append((f" query_tile={text}",
                                          case_plan(grid, kernel, stride, heads, device, tile_shape=shape)[0]))
                for suffix, box_plan in box_plans:
                    boxes = (key_boxes.key_boxes(box_plan) if kernel_name == "dq"
                             else key_boxes.query_boxes(box_plan))
                    if boxes is None:
                        continue
                    for cap in args.boxes_registers:
                        text = f"gluon boxes{suffix} max_registers={cap or None} cost={boxes.cost():.2f}"
                        if kernel_name == "dq":
                            runs.append((text, lambda r=cap or None, p=box_plan: (na_dq_boxes(
                                q, k, v, do, lse, delta, p, scale=scale, max_registers=r),), "_na_dq_boxes"))
                        else:
                            runs.append((text, lambda r=cap or None, p=box_plan: na_dkdv_boxes(
                                q, k, v, do, lse, delta, p, scale=scale, max_registers=r), "_na_dkdv_boxes"))
                for impl, step, prefix in runs:
                    row = {"case": name, "dim": dim, "kernel": kernel_name, "impl": impl, "ms": None,
                           "max_diff": None, "error": None}
                    try:
                        out = step()
                        if kernel_name == "dq":
                            got, want = out[:1], ref[:1]
                        else:
                            got, want = ((out[1], out[2]) if len(out) > 2 else out), ref[1:3]
                        row["max_diff"] = max((a.float() - b.float()).abs().max().item()
                                              for a, b in zip(got, want))
                        row["ms"] = _kernel_ms(step, prefix)
                    except Exception as error:  # noqa: BLE001 - recorded; the other rows stand
                        row["error"] = repr(error)[:300]
                    print(json.dumps(row), flush=True)
                    result["rows"].append(row)
                    with open(path, "w") as f:
                        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
