"""The N-D suite's neighborhood calls, repeated, for Nsight Compute (``ncu``) to profile their
kernels: what ``bash benchmarks/gpu_run.sh ncu`` runs under ``ncu``. GPU only.

    python benchmarks/gpu_ncu_cases.py --case blocked-fwd [--calls 4] [--max-masked-tiles N]

Cases (bf16, B = 1, H = 16, D = 128, through ``tessera.natten`` as the suite calls it):
``2d-fwd`` (128 x 128, kernel 17), ``3d-fwd`` / ``3d-bwd`` (16 x 48 x 48, kernel 5 x 13 x 13; the
backward case runs forward and backward), ``blocked-fwd`` / ``blocked-bwd`` (16 x 48 x 48, kernel
= stride = 4 x 8 x 8). The first call compiles; ``ncu --launch-skip`` leaves it out.
``--max-masked-tiles``: ``forward_route.MAX_MASKED_TILES`` and
``backward_route.DQ_MAX_MASKED_TILES`` for this process (36 sends the 3-D forward and dq to the
Gluon kernels).
"""

from __future__ import annotations

import argparse

import torch

from tessera.kernels.triton import backward_route, forward_route
from tessera.natten import na2d, na3d

CASES = {"2d": (na2d, (128, 128), 17, 1),
         "3d": (na3d, (16, 48, 48), (5, 13, 13), 1),
         "blocked": (na3d, (16, 48, 48), (4, 8, 8), (4, 8, 8))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True,
                        choices=[f"{name}-{d}" for name in CASES for d in ("fwd", "bwd")])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--max-masked-tiles", type=int, default=None)
    args = parser.parse_args()
    if args.max_masked_tiles is not None:
        forward_route.MAX_MASKED_TILES = args.max_masked_tiles
        backward_route.DQ_MAX_MASKED_TILES = args.max_masked_tiles
    name, direction = args.case.split("-")
    op, grid, kernel, stride = CASES[name]
    device = torch.device("cuda")
    q, k, v = (torch.randn(1, *grid, 16, 128, device=device, dtype=torch.bfloat16,
                           requires_grad=direction == "bwd") for _ in range(3))
    do = torch.randn_like(q)
    for _ in range(args.calls):
        out = op(q, k, v, kernel, stride=stride)
        if direction == "bwd":
            torch.autograd.grad(out, (q, k, v), do)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
