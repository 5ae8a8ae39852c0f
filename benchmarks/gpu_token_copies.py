"""GPU ms of the token reorders around routed grid patterns, moving whole token rows
(``patterns.token_copies.as_wide_rows``) against element by element (``WIDE_ROWS`` off): MaxViT
grid attention's swap into blocks (``MaxViTGrid.as_blocks``) and a ``GridLayout`` gather
(``permute``), each of q, k and v in one replayed CUDA graph (no host time), bf16.

    python benchmarks/gpu_token_copies.py --out DIR   -> DIR/token_copies.json

``effective_tbps``: bytes read and written (twice the three tensors) per second.
"""

from __future__ import annotations

import math

import torch

from tessera.bench.sweeps import sweep_main
from tessera.bench.timing import graph_replay_ms
from tessera.patterns import token_copies
from tessera.patterns.layout import GridLayout
from tessera.patterns.vision import MaxViTGrid

# name -> (grid, MaxViT grid size, GridLayout tile, batch, heads, head dim)
CASES = {
    "56x56 g7 B64 H2 D32": ((56, 56), 7, (8, 8), 64, 2, 32),
    "64x64 g8 B32 H4 D32": ((64, 64), 8, (8, 8), 32, 4, 32),
    "28x28 g7 B64 H4 D64": ((28, 28), 7, (4, 16), 64, 4, 64),
    "16x48x48 g(4,8,8) B1 H16 D128": ((16, 48, 48), (4, 8, 8), (2, 8, 4), 1, 16, 128),
}


def case_times(grid, size, tile, batch, heads, dim, device) -> dict:
    qkv = [torch.randn(batch, math.prod(grid), heads, dim, device=device, dtype=torch.bfloat16) for _ in range(3)]
    maxvit, layout = MaxViTGrid(grid, size), GridLayout(grid, tile)
    moved_bytes = 2 * sum(t.numel() * t.element_size() for t in qkv)
    row = {}
    for wide in (True, False):
        token_copies.WIDE_ROWS = wide
        for name, copy in (("maxvit_as_blocks", maxvit.as_blocks), ("layout_permute", layout.permute)):
            ms = graph_replay_ms(lambda: [copy(t, 1) for t in qkv])
            key = f"{name}_{'wide' if wide else 'elementwise'}"
            row[key] = {"ms": round(ms, 4), "effective_tbps": round(moved_bytes / ms / 1e9, 3)}
    token_copies.WIDE_ROWS = True
    return row


def main() -> None:
    sweep_main(__doc__, "token_copies.json", CASES, case_times)


if __name__ == "__main__":
    main()
