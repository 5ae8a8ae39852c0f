"""Host (Python) time of one na2d call on the Triton backend, with kernel launches stubbed out, on
CPU tensors: the part of the host path this machine can measure without a GPU.

    OMP_NUM_THREADS=1 python benchmarks/cpu_host_path.py [--profile] [--dim 64]

Kernel launches (``Launcher._launch``) do nothing, the backend takes CPU tensors as if interpreted
(``backend.INTERPRETED``: interpreter tile configs, no TMA descriptors), so the numbers leave out
launch costs, CUDA allocations, streams and descriptor building; outputs are garbage. 2-D 128 x 128,
17 x 17, bf16, H = 16, D = 128 (or --dim), tiled 8 x 8. Prints ms per forward (no grad) and per fwd+bwd step;
``--profile`` adds a cProfile of 50 steps by internal time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import tessera.kernels.triton.backend as backend
import tessera.kernels.triton.launcher as launcher
from tessera.natten import na2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    launcher.Launcher._launch = lambda self, grid, stream, launch_args, kwargs: None
    backend.INTERPRETED = True
    shape = (1, 128, 128, 16, args.dim)
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(shape, dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            na2d(q, k, v, 17, layout=(8, 8), backend="triton")

    def step():
        o = na2d(q, k, v, 17, layout=(8, 8), backend="triton")
        torch.autograd.grad(o, (q, k, v), do)

    for fn in (fwd, step):
        for _ in range(5):
            fn()
        start = time.perf_counter()
        for _ in range(50):
            fn()
        print(f"{fn.__name__}: {(time.perf_counter() - start) / 50 * 1e3:.3f} ms host per call")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(50):
            step()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
