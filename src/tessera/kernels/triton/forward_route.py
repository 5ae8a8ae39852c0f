"""Which kernel runs a forward: the Gluon tiled-neighborhood forward
(``tessera.kernels.gluon.na_forward``) where it was measured faster than the Triton kernel, the
Triton kernel (``flash_fwd``) everywhere else.

Measured on an H200 (``benchmarks/gpu_gluon_forward.py``, kernel ms, bf16, H = 16), Gluon
against Triton (``results/tuning/2026-12-01-h200-gluon-forward-14-lazy-vote.json``). Masked
plans: the ``defer_pv`` loop (one K slot, two V slots, each P @ V in flight under the next
tile's QK^T) with ``lazy_rescale=8`` (the running output rescaled only in warps where a row max
grew past 2^8); full-tile plans: as noted.

| case | D = 128 | D = 64 |
|---|---|---|
| 2-D 128 x 128, kernel 17 (9 key tiles per query tile, 86% partial) | 0.185 / 0.243 | 0.126 / 0.142 |
| 3-D 16 x 48 x 48, kernel 5 x 13 x 13 (35.6 tiles, all partial) | 1.52 / 1.78 | 1.01 / 1.07 |
| 1-D 32768, window 2048 (32.9 tiles, 6% partial; ``na1d`` runs row-major, off this route) | 1.25 / 1.37 | 0.86 / 0.75 |
| 3-D blocked 4 x 8 x 8 (4 full tiles, no mask) | 0.221 (128-row tiles) / 0.291 | |
| 2-D kernel 17, dilation 2 (four groups through a dilation fold; ``-15-fold.json``) | 0.196 / 0.324 | |

So Gluon takes full-tile (blocked) plans, and masked plans that list at most
``MAX_MASKED_TILES`` key tiles per query tile on average: all of them at D = 128, at D = 64
those with at least ``MIN_PARTIAL_D64`` of their listed tiles partial (the Triton kernel skips
the mask on full tiles, which Gluon's penalty does not), where the tuned config has 64 x 64
tiles. Full-tile plans at D = 64, whose tuned config has 128 x 64 tiles, run on 64-row Gluon
tiles (``GLUON_VARIANT``; blocked 4 x 8 x 8: 0.138 ms against 0.189 for the Triton kernel on 64 x
64 tiles, ``-gluon-forward-17-blocked-d64.json``; in the suite 0.132 ms against 0.192 on the
Triton kernel's 128-row tiles, CUDA graphs, ``results/2026-12-01-h200-natten-12.json`` and
``-11.json``). Masked plans whose key boxes (``gluon.key_boxes``: each query
tile's window union partitioned from its corner into 64- and 32-key grid boxes) cost at most
``BOXES_MAX_COST`` of their listed tiles run ``na_forward_boxes``: 3-D 5 x 13 x 13 (1,778 keys
per query tile against 2,276) 1.298 ms against 1.532 for the masked variant above at D = 128,
0.844 against 0.998 at D = 64 (``-gluon-forward-20-box-prefetch.json``). The boxes run on the
query tiles ``key_boxes.box_plan`` picks (the plan's own, (1, 8, 8) or (2, 8, 4), whichever
has the cheapest boxes; the kernels address the grid, so the plan's token order stays the
backward's): 3-D 5 x 13 x 13 on (2, 8, 4) tiles 1.248 ms against 1.320 on (1, 8, 8)
(``-gluon-forward-21-query-tiles.json``), in the suite 1.249 ms, 5.29x Flex
(``results/2026-12-02-h200-natten-2.json``); 3-D 3 x 7 x 7, which natten orders in (1, 4, 16)
tiles, on (1, 8, 8) tiles 0.518 ms against 0.598 (``-gluon-forward-22-k3x7x7.json``). Dilated
neighborhoods run through a dilation fold (``masks.DilationFold``: every group's plan at once)
on 64-row tiles; calls with score modifiers (softcap, sinks, biases, sigmoid) stay on the
Triton kernel, which has them.
"""

from __future__ import annotations

from typing import Optional

import torch

from .flash_fwd import _major_capability, grid_box
from .masks import MASK_NEIGHBORHOOD, NA_PADDED_BIT

# Off: every forward runs the Triton kernel (for A/B timing, ``tessera.bench.switches``).
GLUON_ENABLED = True
# Off: masked plans never run on key boxes (``na_forward_boxes``).
BOXES_ENABLED = True
# Gluon ``na_forward`` arguments for masked plans (the measurements above) and for full-tile
# plans on 64-row tiles (two K slots, one V slot; 0.137 against 0.147 ms without the lazy
# rescale, blocked at D = 64, same file).
GLUON_MASKED = {"overlap": False, "num_buffers": 1, "v_buffers": 2, "defer_pv": True,
                "lazy_rescale": 8.0}
GLUON_VARIANT = {"overlap": False, "num_buffers": 2, "v_buffers": 1, "lazy_rescale": 8.0}
# Full-tile plans at D = 128 whose 128-row tiles are grid boxes run on 128-row query tiles (two
# warpgroups, two programs per SM at 128 registers): ``block_m`` asks the caller for that plan.
# Blocked 4 x 8 x 8: 0.247-0.249 ms against 0.253-0.261 on 64-row tiles
# (``benchmarks/results/tuning/2026-12-01-h200-gluon-forward-{4-128-rows,5-mask-hoist}.json``);
# two V slots: 0.250 against 0.261 for one in the same run (three K slots 0.249,
# ``-gluon-forward-7-blocked-128.json``).
GLUON_FULL_128 = {"overlap": False, "num_buffers": 2, "v_buffers": 2, "max_registers": 128,
                  "block_m": 128}
# Masked plans go to Gluon when they list at most this many key tiles per query tile on average
# (the 3-D suite case lists 35.6; nothing above was measured),
MAX_MASKED_TILES = 40
# and at D = 64 only when at least this fraction of the listed tiles is partial.
MIN_PARTIAL_D64 = 0.5
# Such a plan runs on key boxes (``gluon.key_boxes``: each query tile's window union partitioned
# into 64- and 32-key boxes from its corner) when the boxes, on the query tiles
# ``key_boxes.box_plan`` picks, cost at most this fraction of its listed key tiles
# (``key_boxes.comparable_cost``, a 32-key box counted as ``key_boxes.HALF_COST``): the 3-D
# suite case, 27.4 against 35.6, does; 2-D kernel 17, 8.7 against 9, does not.
BOXES_MAX_COST = 0.9
GLUON_BOXES = {"boxes": True, "lazy_rescale": 8.0}
# Masked plans over a padded grid (``na_mask.NA_PADDED``: windows clamp at the extent) at
# D = 128 compile to 175 registers, two programs per SM; capped at 168 (no spills, three
# programs) the 2-D kernel-17 forward over 100 x 100 ran 0.153 -> 0.130 ms on an H200 (do_bench
# medians, ``results/logs/2026-12-03-h200-s31-5-padded-register-cap.log``). Unpadded plans take
# 149 uncapped and lose 1-2% under the cap (ptxas then takes all 168), so only padded ones get it.
PADDED_MAX_REGISTERS = 168


def on_hopper(t: torch.Tensor) -> bool:
    """Whether ``t`` lives on a Hopper GPU (sm_90: Gluon's wgmma code runs nowhere else)."""
    return t.device.type == "cuda" and _major_capability(t.device.index) == 9


def few_listed_tiles(plan, limit: int) -> bool:
    """Whether ``plan`` lists at most ``limit`` key tiles per query tile on average."""
    return plan.listed_pairs() <= limit * plan.map_heads * plan.n_q_tiles


def cheaper_on_boxes(plan) -> bool:
    """Whether ``plan`` has key boxes (``key_boxes.fits``) whose cost, on the query tiles
    ``key_boxes.box_plan`` picks, is at most ``BOXES_MAX_COST`` of its listed key tiles (kept
    with the plan)."""
    key = ("cheaper_on_boxes", BOXES_MAX_COST)
    if key not in plan.schedules:
        from ..gluon import key_boxes
        chosen = key_boxes.box_plan(plan)
        plan.schedules[key] = (chosen is not None and key_boxes.comparable_cost(chosen)
                               <= BOXES_MAX_COST * plan.listed_pairs() / plan.n_q_tiles)
    return plan.schedules[key]


def gluon_variant(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan,
                  fold=None) -> Optional[dict]:
    """The ``na_forward`` arguments to run this grid-order forward with (``q [B, S, H_q, D]``,
    ``k``, ``v`` ``[B, S, H_kv, D]``, plain softmax; ``fold``: a ``masks.DilationFold`` or None)
    in Gluon, or None for the Triton kernel. Needs a Hopper GPU (Gluon's wgmma code is sm_90
    only). A ``block_m`` entry, not an ``na_forward`` argument, asks for the plan at that many
    query rows per tile (same layout; the caller checks ``na_forward.supports`` on it when it
    differs from ``plan``'s). Full-tile plans at 128 x 64 (the tuned config at D = 64) take
    64-row Gluon tiles. A ``boxes`` entry asks for ``na_forward_boxes`` (key boxes) with the
    other entries as its arguments."""
    if not GLUON_ENABLED or not on_hopper(q):
        return None
    from ..gluon import na_forward
    if plan.block_n != 64 or plan.block_m not in (64, 128) or not na_forward.supports(q, k, v, plan, fold):
        return None
    if plan.mask_mode == MASK_NEIGHBORHOOD:
        if plan.block_m != 64 or not few_listed_tiles(plan, MAX_MASKED_TILES):
            return None
        if q.shape[3] != 128 and plan.partial_fraction() < MIN_PARTIAL_D64:
            return None
        if BOXES_ENABLED and fold is None and cheaper_on_boxes(plan):
            return dict(GLUON_BOXES)
        if q.shape[3] == 128 and plan.na_static & NA_PADDED_BIT:
            return dict(GLUON_MASKED, max_registers=PADDED_MAX_REGISTERS)
        return dict(GLUON_MASKED)
    if q.shape[3] == 128 and fold is None and grid_box(plan, 128) is not None:
        return dict(GLUON_FULL_128)
    return dict(GLUON_VARIANT, block_m=64)
