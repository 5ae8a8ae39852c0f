"""GPU ms of grid patterns on the tiled route (``tiled_grid_patterns``) at small head dims under
kernel tile choices: the default choice, 64-row forward tiles, and 64 x 64 tiles in all three
kernels (``tuning.OVERRIDES``). Each pattern's tiled order puts 64-token grid tiles (shifted Swin:
its windows) together; 128-row tiles straddle two of them.

    python benchmarks/gpu_tiled_configs.py --out DIR   -> DIR/tiled_configs.json

ms from replayed CUDA graphs (no host time), bf16, forward and forward+backward.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import tessera
from tessera.bench.report import write_case_rows
from tessera.bench.timing import graph_replay_ms, warm_up_gpu
from tessera.kernels.triton import tuning
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
    n = pattern.size
    q, k, v = (torch.randn(batch, n, heads, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    do = torch.randn_like(q)

    def forward():
        with torch.no_grad():
            return tessera.attention(q, k, v, pattern=pattern)

    def forward_backward():
        return torch.autograd.grad(tessera.attention(q, k, v, pattern=pattern), (q, k, v), do)

    row = {}
    for name, overrides in CHOICES.items():
        tuning.OVERRIDES.clear()
        tuning.OVERRIDES.update(overrides)
        try:
            row[name] = {"fwd": round(graph_replay_ms(forward), 4),
                         "fwd+bwd": round(graph_replay_ms(forward_backward), 4)}
        finally:
            tuning.OVERRIDES.clear()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    warm_up_gpu(device)
    write_case_rows(Path(args.out) / "tiled_configs.json", device, CASES, case_times, choices={k: {n: repr(c) for n, c in v.items()} for k, v in CHOICES.items()})


if __name__ == "__main__":
    main()
