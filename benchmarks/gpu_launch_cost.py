"""Where the host time of one Triton launch goes, for every launch of one window fwd+bwd
(bf16, H = 16, D = 128, S = 16384: the suite's host-bound case).

Each launch of one step is recorded (and run), then replayed with the same arguments and timed
on the host (no synchronisation inside a batch, microseconds per launch):

- ``jit``: ``kernel[grid](*args, **kwargs)``, Triton's whole path;
- ``launcher``: tessera's ``Launcher`` on a repeat launch (``launcher_key``: its key alone);
- ``binder``: Triton's argument binder and specializer alone;
- ``cache_key``: the binder plus its kernel-cache lookup;
- ``run``: ``CompiledKernel.run`` with the bound arguments (tensor maps filled per launch);
- ``tensor_maps``: filling the launch's tensor maps (``fill_tma_descriptor``) alone;
- ``descriptors``: building the launch's ``TensorDescriptor`` objects alone.

Plus the step's host time (and with every launch through Triton's path), the sum of its launches' ``jit`` times (the rest is the Python and
torch work around the launches), and ``segments``: host us per step inside each of a list of
functions (wrapped with timers while the step runs; nested segments overlap), and
``synchronizing_ops``: what ``torch.cuda.set_sync_debug_mode("warn")`` reports in one step.

    python benchmarks/gpu_launch_cost.py --out DIR [--case NAME]   -> DIR/launch_cost.json

``--case``: an attention case (default the causal window) or an N-D case of ``natten_cases``,
underscores standing for spaces.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import triton
from triton.backends.nvidia import driver as nvidia_driver
from triton.runtime.jit import JITFunction, compute_cache_key
from triton.tools.tensor_descriptor import TensorDescriptor

from tessera.bench.attention import _impl_fn, _Inputs, _tessera_fn, gpu_cases, natten_cases
from tessera.bench.host_parts import host_ms_per_part
from tessera.bench.timing import host_seconds_per_call, warm_up_gpu
from tessera.kernels.triton.launcher import Launcher, specialization_key


def _us(fn, calls: int = 50) -> float:
    return round(host_seconds_per_call(fn, calls) * 1e6, 2)


def _record(step):
    """Run ``step`` once, returning its launches as ``(launcher, grid, stream, args, kwargs)``."""
    launches = []
    original = Launcher._launch

    def launch(self, grid, stream, args, kwargs):
        launches.append((self, grid, stream, args, kwargs))
        return original(self, grid, stream, args, kwargs)

    Launcher._launch = launch
    try:
        step()
    finally:
        Launcher._launch = original
    torch.cuda.synchronize()
    return launches


def _launch_parts(launcher, grid, stream, args, kwargs) -> dict:
    fn = launcher.kernel
    compiled = launcher._launch(grid, stream, args, kwargs)
    device = torch.cuda.current_device()
    kernel_cache, key_cache, _, _, binder = fn.device_caches[device]
    bound, _, _ = binder(*args, **kwargs)
    values = tuple(bound.values())
    grid = tuple(grid) + (1,) * (3 - len(grid))
    raw_stream = torch.cuda.current_stream().cuda_stream
    descs = [a for a in values if isinstance(a, TensorDescriptor)]
    meta = getattr(compiled.metadata, "tensordesc_meta", None) or [None] * len(descs)

    def cache_key():
        _, specialization, options = binder(*args, **kwargs)
        return kernel_cache.get(compute_cache_key(key_cache, specialization, options))

    def run():
        compiled.run(grid[0], grid[1], grid[2], raw_stream, compiled.function, compiled.packed_metadata,
                     None, None, None, *values)

    def tensor_maps():
        for d, m in zip(descs, meta):
            nvidia_driver.make_tensordesc_arg(d, m)

    def descriptors():
        for d in descs:
            TensorDescriptor(d.base, list(d.shape), list(d.strides), list(d.block_shape))

    return {"kernel": fn.__name__, "args": len(values), "tensor_descriptors": len(descs),
            "jit": _us(lambda: fn[grid](*args, **kwargs)),
            "launcher": _us(lambda: launcher._launch(grid, stream, args, kwargs)),
            "launcher_key": _us(lambda: specialization_key(args, kwargs)),
            "binder": _us(lambda: binder(*args, **kwargs)),
            "cache_key": _us(cache_key), "run": _us(run), "tensor_maps": _us(tensor_maps),
            "descriptors": _us(descriptors)}


def _segments(step) -> dict:
    """Host us per step spent inside each function of ``SEGMENTS`` (timer wrappers)."""
    import tessera
    from tessera.kernels.triton import backend, flash_bwd, flash_fwd, row_dot, streams
    from tessera import natten
    targets = [(tessera, "attention"), (natten, "neighborhood_attention"), (natten, "_grid_order_run"),
               (backend, "_forward"), (torch.autograd, "grad"), (backend.FlashAttention, "forward"),
               (backend.FlashAttention, "backward"), (backend, "_configs"), (backend, "_plan"),
               (flash_fwd, "forward"), (flash_bwd, "backward"), (flash_bwd, "row_operands"),
               (flash_fwd, "row_operands"), (row_dot, "row_dot"), (flash_bwd, "row_dot"),
               (streams, "fork"), (streams, "join"), (Launcher, "_launch"), (JITFunction, "run"),
               (torch, "empty"), (torch, "empty_like")]
    parts = host_ms_per_part(step, calls=20, split_launches=False,
                             targets=[(owner, name, f"{getattr(owner, '__name__', owner)}.{name}")
                                      for owner, name in targets])
    return {"step": round(parts.pop("call") * 1e3, 2), **{k: round(v * 1e3, 2) for k, v in parts.items()}}


def _synchronizing_ops(step) -> list[str]:
    """Warnings of the operations of one step that synchronise the host with the GPU."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message)[:300] for w in caught]


def _triton_path_step_us(step) -> list[float]:
    """Host us per step with every launch going through Triton's own launch path."""
    original = Launcher._launch
    Launcher._launch = lambda self, grid, stream, args, kwargs: self._through_triton(grid, stream, args, kwargs)
    try:
        return [_us(step, 20) for _ in range(3)]
    finally:
        Launcher._launch = original


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--case", default="causal window 1024 S=16384")
    args = parser.parse_args()
    args.case = args.case.replace("_", " ")   # underscores for spaces, for shell-split arguments
    device = torch.device("cuda")
    warm_up_gpu(device)
    attention = {c.name: c for c in gpu_cases()}
    nd = {c.name: c for c in natten_cases()}
    if args.case in attention:
        case = attention[args.case]
        inp = _Inputs(case, device, torch.bfloat16)
        fn = _tessera_fn(case, case.pattern(device), inp, "triton")
    elif args.case in nd:
        case = nd[args.case]
        inp = _Inputs(case, device, torch.bfloat16)
        fn = _impl_fn("tessera", case, None, inp, device)
    else:
        raise SystemExit(f"--case: unknown {args.case!r}; known: {sorted(attention) + sorted(nd)}")
    inp.require_grad(True)

    def step():
        o = fn()
        torch.autograd.grad(o, inp.grad_leaves(), inp.do.view(o.shape))

    step()
    launches = _record(step)
    step_us = [_us(step, 20) for _ in range(3)]
    parts = [_launch_parts(*launch) for launch in launches]
    segments = [_segments(step) for _ in range(2)]
    synchronizing = _synchronizing_ops(step)
    triton_path = _triton_path_step_us(step)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "case": case.name, "unit": "us per call (host)",
              "step_us": step_us, "launch_jit_sum_us": round(sum(p["jit"] for p in parts), 2),
              "launches": parts, "segments": segments, "synchronizing_ops": synchronizing,
              "triton_path_step_us": triton_path}
    print(json.dumps(result, indent=1))
    with open(f"{args.out}/launch_cost.json", "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
