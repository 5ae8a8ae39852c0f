"""GPU ms of grid patterns on the tiled route (``tiled_grid_patterns``) at small head dims under
kernel tile choices: the default choice, 64-row forward tiles, and 64 x 64 tiles in all three
kernels (``tuning.OVERRIDES``). Each pattern's tiled order puts 64-token grid tiles (shifted Swin:
its windows) together; 128-row tiles straddle two of them.

    python benchmarks/gpu_tiled_configs.py --out DIR   -> DIR/tiled_configs.json

ms from replayed CUDA graphs (no host time), bf16, forward and forward+backward.
"""

from __future__ import annotations

from tessera.bench.sweeps import attention_steps, override_times, sweep_main
from tessera.kernels.triton.tuning import KernelConfig
from tessera.patterns.vision import CSWin, CrissCross, Swin

# name -> (pattern, batch, heads, head dim)
CASES = {
    "Swin 64x64 w8 shifted D32": (Swin((64, 64), 8, shifted=True), 32, 4, 32),
    "Swin 64x64 w8 shifted D64": (Swin((64, 64), 8, shifted=True), 16, 8, 64),
    "Swin 8x32x32 w2x8x8 shifted D64": (Swin((8, 32, 32), (2, 8, 8), shifted=True), 4, 8, 64),
    "CSWin 64x64 s8 D32": (CSWin((64, 64), 8, 4), 32, 4, 32),
    "criss-cross 64x64 D32": (CrissCross((64, 64)), 32, 4, 32),
}

CHOICES = {
    "default": {},
    "fwd-64": {"fwd": KernelConfig(64, 64, 4, 3)},
    "all-64": {"fwd": KernelConfig(64, 64, 4, 3), "dq": KernelConfig(64, 64, 4, 2),
               "dkdv": KernelConfig(64, 64, 4, 3)},
}


def case_times(pattern, batch, heads, dim, device) -> dict:
    steps = attention_steps(pattern, batch, heads, dim, device)
    return {name: override_times(steps, overrides) for name, overrides in CHOICES.items()}


def main() -> None:
    sweep_main(__doc__, "tiled_configs.json", CASES, case_times,
               choices={k: {n: repr(c) for n, c in v.items()} for k, v in CHOICES.items()})


if __name__ == "__main__":
    main()
