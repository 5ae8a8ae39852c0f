"""Which kernel runs a forward: the Gluon tiled-neighborhood forward
(``tessera.kernels.gluon.na_forward``) where it was measured faster than the Triton kernel, the
Triton kernel (``flash_fwd``) everywhere else.

Measured on an H200 (``benchmarks/gpu_gluon_forward.py``, kernel ms, bf16, H = 16), Gluon with
two K slots and one V slot (three programs per SM) against Triton, with tile coordinates divided
by reciprocals and computed once per key tile
(``results/tuning/2026-12-01-h200-gluon-forward-11-coords.json``; D = 64 from
``-gluon-forward-10-d64.json``, before the second change):

| case | D = 128 | D = 64 |
|---|---|---|
| 2-D 128 x 128, kernel 17 (9 key tiles per query tile) | 0.194 / 0.245 | 0.139 / 0.143 |
| 3-D 16 x 48 x 48, kernel 5 x 13 x 13 (35.6 tiles, all partial) | 1.59 / 1.79 | 1.19 / 1.08 |
| 3-D blocked 4 x 8 x 8 (4 full tiles, no mask) | 0.218 (128-row tiles) / 0.295 | 0.146 / 0.187 |
| 1-D 32768, window 2048 (mostly full tiles) | 1.35 / 1.37 | |

So Gluon takes full-tile (blocked) plans, and masked plans at D = 128 when their query tiles
list at most ``MAX_MASKED_TILES`` key tiles on average, where the tuned config has 64 x 64 tiles
(full tiles at D = 64 take 128-row tiles, so they stay on Triton; masked plans at D = 64 stay
there too: 3-D loses, 2-D wins by 3%). Calls with score modifiers (softcap, sinks, biases,
sigmoid) or a dilation fold stay on the Triton kernel, which has them.
"""

from __future__ import annotations

from typing import Optional

import torch

from .flash_fwd import _major_capability, grid_box
from .masks import MASK_NEIGHBORHOOD

# Off: every forward runs the Triton kernel (for A/B timing, ``tessera.bench.switches``).
GLUON_ENABLED = True
# Gluon ``na_forward`` arguments: sequential loop, two K slots, one V slot.
GLUON_VARIANT = {"overlap": False, "num_buffers": 2, "v_buffers": 1}
# Full-tile plans at D = 128 whose 128-row tiles are grid boxes run on 128-row query tiles (two
# warpgroups, two programs per SM at 128 registers): ``block_m`` asks the caller for that plan.
# Blocked 4 x 8 x 8: 0.247-0.249 ms against 0.253-0.261 on 64-row tiles
# (``benchmarks/results/tuning/2026-12-01-h200-gluon-forward-{4-128-rows,5-mask-hoist}.json``);
# two V slots: 0.250 against 0.261 for one in the same run (three K slots 0.249,
# ``-gluon-forward-7-blocked-128.json``).
GLUON_FULL_128 = {"overlap": False, "num_buffers": 2, "v_buffers": 2, "max_registers": 128,
                  "block_m": 128}
# Masked plans go to Gluon (at D = 128) when they list at most this many key tiles per query
# tile on average (the 3-D suite case lists 35.6; nothing above was measured).
MAX_MASKED_TILES = 40


def on_hopper(t: torch.Tensor) -> bool:
    """Whether ``t`` lives on a Hopper GPU (sm_90: Gluon's wgmma code runs nowhere else)."""
    return t.device.type == "cuda" and _major_capability(t.device.index) == 9


def few_listed_tiles(plan, limit: int) -> bool:
    """Whether ``plan`` lists at most ``limit`` key tiles per query tile on average."""
    return plan.listed_pairs() <= limit * plan.map_heads * plan.n_q_tiles


def gluon_variant(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan) -> Optional[dict]:
    """The ``na_forward`` arguments to run this grid-order forward with (``q [B, S, H_q, D]``,
    ``k``, ``v`` ``[B, S, H_kv, D]``, plain softmax, no fold) in Gluon, or None for the Triton
    kernel. Needs a Hopper GPU (Gluon's wgmma code is sm_90 only). A ``block_m`` entry, not an
    ``na_forward`` argument, asks for the plan at that many query rows per tile (same layout)."""
    if not GLUON_ENABLED or not on_hopper(q):
        return None
    from ..gluon import na_forward
    if plan.block_m != 64 or not na_forward.supports(q, k, v, plan):
        return None
    if plan.mask_mode == MASK_NEIGHBORHOOD:
        if q.shape[3] != 128:
            return None
        if not few_listed_tiles(plan, MAX_MASKED_TILES):
            return None
    elif q.shape[3] == 128 and grid_box(plan, 128) is not None:
        return dict(GLUON_FULL_128)
    return dict(GLUON_VARIANT)
