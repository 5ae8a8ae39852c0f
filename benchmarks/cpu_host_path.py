"""Host (Python) time of one neighborhood call on the Triton backend, with kernel launches stubbed
out, on CPU tensors: the part of the host path this machine can measure without a GPU.

    OMP_NUM_THREADS=1 python benchmarks/cpu_host_path.py [--profile] [--dim 64] [--hopper]
        [--case 2-d|blocked|padded|swin|shifted-swin|maxvit-grid]

Kernel launches (``Launcher._launch``) do nothing (``hopper_compile.stubbed_launches``), the
backend takes CPU tensors as if interpreted (``backend.INTERPRETED``: interpreter tile configs, no
TMA descriptors), so the numbers leave out
launch costs, CUDA allocations, streams and descriptor building; outputs are garbage. Cases: 2-D
128 x 128, 17 x 17, tiled 8 x 8 (default), 3-D 16 x 48 x 48 blocked 4 x 8 x 8, or 2-D 100 x 100 padded to 104 x 104; bf16, H = 16,
D = 128 (or --dim); ``swin``: ``tessera.attention`` with 8 x 8 Swin windows over 64 x 64 tokens,
B = 32, H = 4, routed to the blocked neighborhood path; ``shifted-swin``: shifted 8 x 8 windows over
64 x 64 tokens, B = 1, H = 1, on the tiled route (the rolled grid; addressed in-kernel, or gathered
with ``TESSERA_TILED_IN_KERNEL=0``); ``maxvit-grid``: MaxViT grid attention 7 x 7
over 56 x 56 tokens, B = 1, H = 2. ``--hopper``: the GPU's tile configs, and the routes act as on a Hopper GPU
(``forward_route.on_hopper``), so the Gluon paths run up to their (stubbed) launches, descriptors
included. Prints ms per forward (no grad) and per fwd+bwd step; ``--profile`` adds a cProfile of
50 steps by internal time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

import tessera.natten as natten
from tessera.bench.hopper_compile import stubbed_launches
from tessera.natten import _auto_layout, na2d, na3d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--case", default="2-d",
                        choices=("2-d", "blocked", "padded", "swin", "shifted-swin", "maxvit-grid"))
    parser.add_argument("--hopper", action="store_true",
                        help="GPU tile configs, and the Gluon routes as on a Hopper GPU")
    args = parser.parse_args()
    with stubbed_launches(as_hopper=args.hopper, record=False):
        time_calls(args)


def time_calls(args) -> None:
    """Prints the host time per forward and per fwd+bwd step of ``args.case`` (launches stubbed)."""
    if args.case == "2-d":
        shape, attend = (1, 128, 128, 16, args.dim), lambda: na2d(q, k, v, 17, layout=(8, 8),
                                                                  backend="triton")
    elif args.case == "padded":
        # 100 x 100 in (8, 8) tiles of a 104 x 104 grid (the suite's padded 2-D case).
        shape, attend = (1, 100, 100, 16, args.dim), lambda: na2d(q, k, v, 17, layout=(8, 8),
                                                                  backend="triton")
    elif args.case == "swin":
        # tessera.attention with Swin windows 8 x 8 over 64 x 64 tokens (routed to natten's
        # blocked path), the vision suite's shape: B = 32, H = 4 (D = --dim).
        from tessera import attention
        from tessera.patterns import Swin
        pattern = Swin((64, 64), 8)
        layout = _auto_layout((64, 64), (8, 8), (1, 1), (8, 8), (False, False))
        natten._resolve_layout = lambda *a, **kw: layout
        shape, attend = (32, 4096, 4, args.dim), lambda: attention(q, k, v, pattern=pattern, backend="triton")
    elif args.case == "shifted-swin":
        # tessera.attention with shifted 8 x 8 Swin windows over 64 x 64 tokens on the tiled route,
        # B = 1, H = 1: host time without the copies' CPU time.
        from tessera import attention
        from tessera.patterns import Swin
        pattern = Swin((64, 64), 8, shifted=True)
        shape, attend = (1, 4096, 1, args.dim), lambda: attention(q, k, v, pattern=pattern, backend="triton")
    elif args.case == "maxvit-grid":
        # tessera.attention with MaxViT grid attention 7 x 7 over 56 x 56 tokens (natten's
        # dilation fold; swapped into blocks on natten's blocked path with TESSERA_NATTEN_FOLD=0),
        # B = 1, H = 2: host time without the copies' CPU time.
        from tessera import attention
        from tessera.patterns import MaxViTGrid
        pattern = MaxViTGrid((56, 56), 7)
        if not natten.DILATION_FOLD_IN_KERNEL:
            layout = _auto_layout((56, 56), (7, 7), (1, 1), (7, 7), (False, False))
            natten._resolve_layout = lambda *a, **kw: layout
        shape, attend = (1, 3136, 2, args.dim), lambda: attention(q, k, v, pattern=pattern, backend="triton")
    else:
        # The layout "auto" would pick on a GPU (on CPU "auto" keeps the row-major order).
        layout = _auto_layout((16, 48, 48), (4, 8, 8), (1, 1, 1), (4, 8, 8), (False,) * 3)
        shape, attend = (1, 16, 48, 48, 16, args.dim), lambda: na3d(q, k, v, (4, 8, 8), stride=(4, 8, 8),
                                                                    layout=layout, backend="triton")
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(shape, dtype=torch.bfloat16)

    def fwd():
        with torch.no_grad():
            attend()

    def step():
        o = attend()
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
