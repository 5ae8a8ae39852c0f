"""Block sizes / warps / stages of the flash kernels per mask shape: per-kernel CUDA time (torch
profiler) of the forward, dq and dk/dv kernels at each candidate configuration, on the benchmark
cases of the kernel issue. GPU only.

    python benchmarks/gpu_config_sweep.py --out DIR [--cases window1024 power ...] [--kernels fwd dq dkdv] [--small]
        [--dim 128] [--configs 64,64,4,1 64,64,4,2] [--switches flash_fwd.O_BULK_ENABLED ...]

The N-D cases (``na2d-k17``, ``na3d-k5x13x13``, ``na3d-blocked``) run in grid order through the tiled
layout ``tessera.natten`` picks.

Each row: case, kernel, config (block_m, block_n, warps, stages), ms per call of that kernel
(median of --iters profiled fwd+bwd steps, summed over launches of the kernel), listed tiles of
the plan at that config. Written to ``config_sweep.json`` after every row. With ``--switches``
(booleans ``MODULE.ATTR`` of ``tessera.kernels.triton``, ``tessera.bench.switches``), every config
is timed at each on/off combination of them in turn, and rows carry the combination as
``switches``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from tessera.bench.switches import settings
from tessera.kernels.registry import AttentionCall
from tessera.kernels.triton import masks, tuning
from tessera.kernels.triton.backend import run
from tessera.kernels.triton.tuning import KernelConfig
from tessera.natten import _auto_layout
from tessera.patterns import Causal, Neighborhood, Permuted, Power, Strided, Window
from tessera.patterns.layout import GridLayout
from tessera.patterns.blocksparse import BlockSparse


def _tiled_neighborhood(grid, kernel, stride=1, tile=None):
    """The N-D suite's neighborhood in the tiled order ``tessera.natten`` picks on a GPU, or in
    ``tile``-shaped layout tiles (run in grid order, as natten runs undilated neighborhoods)."""
    pattern = Neighborhood(grid, kernel, stride=stride)
    layout = (GridLayout(pattern.grid, tile) if tile is not None else
              _auto_layout(pattern.grid, pattern.kernel, pattern.dilation, pattern.stride, pattern.causal))
    return Permuted(pattern, layout)


CASES = {
    "window1024": (16384, lambda s: Window(1023, 0)),
    "random10": (16384, lambda s: BlockSparse.random(s, 0.10, block=128, seed=0, device="cuda")),
    "random30": (16384, lambda s: BlockSparse.random(s, 0.30, block=128, seed=0, device="cuda")),
    "strided": (32768, lambda s: Strided(block=128, local_blocks=8, stride=8, causal=True)),
    "power": (32768, lambda s: Power(local=256, causal=True)),
    "causal": (16384, lambda s: Causal()),
    "na2d-k17": (16384, lambda s: _tiled_neighborhood((128, 128), (17, 17))),
    "na3d-k5x13x13": (36864, lambda s: _tiled_neighborhood((16, 48, 48), (5, 13, 13))),
    "na3d-blocked": (36864, lambda s: _tiled_neighborhood((16, 48, 48), (4, 8, 8), stride=(4, 8, 8))),
    # 128-token layout tiles: 128-row query tiles stay aligned (coordinates by shifts) and read
    # fewer K/V bytes per query (tile maps: 2.8 instead of 4.5 KB in 2-D, 10.2 instead of 17.8 KB
    # in 3-D), for 25% / 15% more masked keys; the 64-row forward moves about 4.5-5 TB/s of K/V.
    "na2d-k17-t16x8": (16384, lambda s: _tiled_neighborhood((128, 128), (17, 17), tile=(16, 8))),
    "na3d-k5x13x13-t2x8x8": (36864, lambda s: _tiled_neighborhood((16, 48, 48), (5, 13, 13), tile=(2, 8, 8))),
    # The same 64-row (1, 8, 8) kernel tiles as the auto layout, visited t-block by t-block: only
    # the order of the tiles (which programs run side by side) differs.
    "na3d-k5x13x13-t4x8x8": (36864, lambda s: _tiled_neighborhood((16, 48, 48), (5, 13, 13), tile=(4, 8, 8))),
    "na3d-k5x13x13-t16x8x8": (36864, lambda s: _tiled_neighborhood((16, 48, 48), (5, 13, 13), tile=(16, 8, 8))),
}
GRID_ORDER_CASES = {name for name in CASES if name.startswith("na")}

# (64, 64, 4, 1): no K/V double buffer, 49 KB of shared memory and 144-164 registers in the N-D
# cases (sm_90 offline), so three programs per SM hide each other's loads instead.
CONFIGS = {
    "fwd": [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3),
            (64, 64, 4, 2), (64, 128, 4, 3), (128, 64, 8, 2), (64, 128, 4, 2), (64, 32, 4, 3),
            (64, 64, 8, 2), (64, 64, 8, 3), (64, 64, 4, 1)],
    "dq": [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (64, 64, 4, 2),
           (64, 128, 4, 2), (128, 64, 4, 2)],
    "dkdv": [(64, 128, 8, 2), (64, 128, 8, 3), (64, 64, 4, 3), (64, 128, 4, 3), (32, 64, 4, 3),
             (128, 128, 8, 2), (32, 128, 4, 3)],
}

KERNEL_NAMES = {"fwd": "_attn_fwd", "dq": "_attn_bwd_dq", "dkdv": "_attn_bwd_dkdv"}


def per_kernel_ms(step, iters: int) -> dict:
    """Median per-step CUDA ms of each tessera kernel over ``iters`` profiled steps."""
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    samples = {name: [] for name in KERNEL_NAMES.values()}
    for _ in range(iters):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        totals = dict.fromkeys(samples, 0.0)
        for event in prof.events():
            if event.name in totals:
                totals[event.name] += event.device_time_total / 1e3
        for name, value in totals.items():
            samples[name].append(value)
    return {name: statistics.median(values) for name, values in samples.items() if values}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--kernels", nargs="*", default=list(CONFIGS))
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--dim", type=int, default=128, help="head dim (bf16, 16 heads)")
    parser.add_argument("--small", action="store_true",
                        help="only configs of at most 64 x 64 tiles (the N-D neighborhoods' range)")
    parser.add_argument("--configs", nargs="*", default=None,
                        help="these configs (block_m,block_n,warps,stages[,max_registers]) for every kernel swept, "
                             "instead of the candidate lists")
    parser.add_argument("--switches", nargs="*", default=[],
                        help="MODULE.ATTR booleans of tessera.kernels.triton: each config is timed "
                             "at every on/off combination")
    args = parser.parse_args()
    candidates = ({kernel: [tuple(int(x) for x in c.split(",")) for c in args.configs] for kernel in CONFIGS}
                  if args.configs else CONFIGS)
    configs_of = {kernel: [c for c in configs if not args.small or c[0] * c[1] <= 64 * 64]
                  for kernel, configs in candidates.items()}
    H, D = 16, args.dim
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "heads": H, "dim": D, "rows": []}
    path = os.path.join(args.out, "config_sweep.json")
    for case in args.cases:
        seq, make = CASES[case]
        pattern = make(seq)
        q, k, v, do = (torch.randn(1, seq, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_()

        def step():
            call = AttentionCall(q, k, v, pattern, False, D ** -0.5, "softmax", None, None, None, None, True)
            call.grid_order = case in GRID_ORDER_CASES
            o, _ = run(call)
            o.backward(do)
            q.grad = k.grad = v.grad = None

        width = max(len(configs_of[kernel]) for kernel in args.kernels)
        for i in range(width):
            tuning.OVERRIDES.clear()
            for kernel in args.kernels:
                configs = configs_of[kernel]
                tuning.OVERRIDES[kernel] = KernelConfig(*configs[i % len(configs)])
            for setting in settings(args.switches):
                try:
                    times = per_kernel_ms(step, args.iters)
                except Exception as exc:  # noqa: BLE001
                    times, error = {}, repr(exc)[:300]
                else:
                    error = None
                for kernel in args.kernels:
                    cfg = tuning.OVERRIDES[kernel]
                    plan = masks.get_plan(pattern, seq, seq, cfg.block_m, cfg.block_n, H, q.device)
                    row = {"case": case, "kernel": kernel,
                           "config": [cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages]
                           + ([cfg.max_registers] if cfg.max_registers else []),
                           "ms": times.get(KERNEL_NAMES[kernel]), "listed_tiles": plan.listed_pairs(),
                           "mask_mode": plan.mask_mode, "error": error}
                    if setting:
                        row["switches"] = setting
                    print(json.dumps(row), flush=True)
                    result["rows"].append(row)
            with open(path, "w") as f:
                json.dump(result, f, indent=1)
        tuning.OVERRIDES.clear()
        del q, k, v, do
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
