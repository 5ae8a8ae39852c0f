"""cProfile of the 2-D neighborhood fwd+bwd step in both threads it runs on. GPU only.

    python benchmarks/gpu_backward_profile.py --out DIR [--dim 64] [--steps 50]
        -> DIR/backward_profile.txt

On CUDA tensors the autograd engine runs the backward on its own device thread. From Python
3.12 cProfile (on ``sys.monitoring``) sees every thread, so one profiler lists both; before
3.12 it sees only the thread that enabled it, so a second profiler is switched on inside the
device thread (from a wrapper around ``FlashAttention.backward``, on its first call there) and
off again after ``--steps`` steps. Internal time, with cProfile's own overhead. Steps of
``na2d`` (bf16, 128 x 128, kernel 17, H = 16).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import threading

import torch

from tessera.bench.timing import warm_up_gpu
from tessera.kernels.triton import backend
from tessera.natten import na2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_backward_profile.py needs a CUDA GPU")
    device = torch.device("cuda")
    warm_up_gpu(device)
    shape = (1, 128, 128, 16, args.dim)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn(shape, device=device, dtype=torch.bfloat16)

    def step():
        torch.autograd.grad(na2d(q, k, v, 17), (q, k, v), do)

    for _ in range(20):
        step()
    torch.cuda.synchronize()

    profilers: dict[int, cProfile.Profile] = {}
    state = {"on": True}
    original = backend.FlashAttention.backward

    def profiled_backward(ctx, *grads):
        me = threading.get_ident()
        if sys.version_info >= (3, 12):
            pass                                    # the calling thread's profiler sees this one
        elif state["on"] and me not in profilers:
            profilers[me] = cProfile.Profile()
            profilers[me].enable()
        elif not state["on"] and me in profilers:
            profilers[me].disable()
        return original(ctx, *grads)

    backend.FlashAttention.backward = staticmethod(profiled_backward)
    main_profile = cProfile.Profile()
    try:
        main_profile.enable()
        for _ in range(args.steps):
            step()
        main_profile.disable()
        state["on"] = False
        step()                  # switches the device thread's profiler off
        torch.cuda.synchronize()
    finally:
        backend.FlashAttention.backward = staticmethod(original)

    out = io.StringIO()
    out.write(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, D = {args.dim}, "
              f"{args.steps} steps\n\n== calling thread\n")
    pstats.Stats(main_profile, stream=out).sort_stats("tottime").print_stats(30)
    for ident, profile in profilers.items():
        if ident == threading.get_ident():
            continue
        out.write(f"\n== device thread {ident} (from its first backward call)\n")
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(40)
    text = out.getvalue()
    print(text)
    with open(f"{args.out}/backward_profile.txt", "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
