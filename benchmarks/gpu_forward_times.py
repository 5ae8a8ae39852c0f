"""Forward time of ``tessera.natten.na2d`` (kernel 17, B = 1, H = 16, bf16, layout "auto", no grad)
over given grids, eager and replayed from a CUDA graph: ``triton.testing.do_bench`` medians (warmup
50, rep 300), ms. GPU only. For quick A/B and bisect runs; the suite's own timing is
``benchmarks/natten.py``.

    python benchmarks/gpu_forward_times.py [--grids 100x100 128x128] [--dims 128 64] [--max-registers N]
        [--padded-max-registers N] [--label TEXT]

``--max-registers N`` caps every masked Gluon forward (``forward_route.GLUON_MASKED``) at N
registers per thread; ``--padded-max-registers N`` sets the padded plans' cap
(``forward_route.PADDED_MAX_REGISTERS``; 0: none). Prints one ``RESULT`` line per grid and head dim. A bisect runs it with
``PYTHONPATH`` pointing at each commit's ``src`` (``git archive <commit> src``).
"""

from __future__ import annotations

import argparse

import torch
import triton

from tessera.kernels.triton import forward_route
from tessera.natten import na2d


def forward_ms(grid: tuple, dim: int) -> tuple[float, float]:
    """``(eager, graph)`` ms of one forward over ``grid`` at head dim ``dim``."""
    q, k, v = (torch.randn(1, *grid, 16, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def forward():
        return na2d(q, k, v, 17)
    with torch.no_grad():
        for _ in range(3):
            forward()
        torch.cuda.synchronize()
        eager = triton.testing.do_bench(forward, warmup=50, rep=300, return_mode="median")
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            forward()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            forward()
        replay = triton.testing.do_bench(graph.replay, warmup=50, rep=300, return_mode="median")
    return eager, replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", nargs="*", default=["100x100", "128x128"])
    parser.add_argument("--dims", nargs="*", type=int, default=[128])
    parser.add_argument("--max-registers", type=int, default=None)
    parser.add_argument("--padded-max-registers", type=int, default=None)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    if args.max_registers:
        forward_route.GLUON_MASKED["max_registers"] = args.max_registers
    if args.padded_max_registers is not None:
        forward_route.PADDED_MAX_REGISTERS = args.padded_max_registers or None
    for text in args.grids:
        grid = tuple(int(n) for n in text.split("x"))
        for dim in args.dims:
            eager, graph = forward_ms(grid, dim)
            print(f"RESULT {args.label} cap={args.max_registers} padded cap={forward_route.PADDED_MAX_REGISTERS} "
                  f"grid={grid} D={dim} fwd eager {eager:.4f} graph {graph:.4f}", flush=True)


if __name__ == "__main__":
    main()
