"""Which kernels compute dq and dk/dv: the Gluon tiled-neighborhood kernels
(``tessera.kernels.gluon.na_dq``, ``na_dkdv``) where they are measured faster than the Triton
ones, the Triton kernels everywhere else.

dk/dv measured on an H200 (``benchmarks/gpu_gluon_dkdv.py``, now ``gpu_gluon_backward.py``,
``results/tuning/2026-12-01-h200-gluon-dkdv-1.json``, kernel ms, Triton -> Gluon): D = 128 2-D
k17 0.465 -> 0.363, 3-D 5x13x13 3.47 -> 2.94, blocked 4x8x8 0.554 -> 0.465; D = 64 0.305 ->
0.280, 2.43 -> 2.25 (three slots; two: 2.31), 0.385 -> 0.345. The Gluon kernel wins on every
shape in its scope (grid-order plans whose 64-token tiles are grid boxes, 16-bit, D in {64,
128}, plain softmax), on Hopper, so the route takes all of it.

dq measured the same way (``gpu_gluon_backward.py``,
``results/tuning/2026-12-01-h200-gluon-backward-1.json``), Triton -> Gluon with two K and two V
slots: D = 128 2-D k17 0.297 -> 0.257, blocked 0.447 -> 0.284, but 3-D 5x13x13 2.00 -> 2.12;
D = 64 0.182 -> 0.171, 0.215 -> 0.157 (blocked D = 64 runs 128-row dq tiles, outside the
scope), 3-D 1.26 -> 1.54. With tile coordinates by reciprocals (``-gluon-backward-4-recip.json``)
D = 128: 2-D 0.296 -> 0.235, blocked 0.443 -> 0.265, 3-D 1.76 -> 1.83 (still loses). With each
key tile's grid coordinates computed once per step (``-gluon-backward-5-coords.json``), D = 128:
2-D 0.293 -> 0.219, blocked 0.436 -> 0.263, 3-D 1.75 -> 1.68, but 1-D window 2048 (mostly
full tiles) 1.38 -> 1.42; D = 64: 2-D 0.167 -> 0.140, 3-D 1.08 -> 1.11, 1-D 0.69 -> 0.95. So
Gluon takes dq on full-tile plans; on masked plans when they list at most
``DQ_MAX_MASKED_TILES`` key tiles per query tile (2-D k17 lists 9), or at D = 128 when at least
``DQ_MIN_PARTIAL`` of the listed tiles are partial (3-D 5 x 13 x 13: all 35.6 are; 1-D window
2048: 2 of 33).

dq on key boxes (``na_dq_boxes``: each query tile over its own full and half key boxes,
``gluon.key_boxes``), ``results/tuning/2026-12-01-h200-gluon-backward-6-boxes.json``: 3-D
5x13x13 D = 128 1.369 ms against 1.688 (Gluon on tiles, two K and two V slots) and 1.759
(Triton); D = 64 0.911 at 168 registers (1.025 without a cap) against 1.088 (Triton); 2-D k17,
whose boxes cost 0.96 of its tiles, 0.223 against 0.218. So dq runs on key boxes wherever the
forward does (``forward_route.cheaper_on_boxes``), at both head dims, on the query tiles the
forward takes (``key_boxes.box_plan``): 3-D 5x13x13 on (2, 8, 4) tiles 1.316 ms against 1.372
on (1, 8, 8) at D = 128, 0.855 against 0.902 at D = 64
(``results/tuning/2026-12-02-h200-gluon-backward-7-query-tiles.json``); 3-D 3x7x7 on (1, 8, 8)
tiles 0.553 against 0.654 on natten's (1, 4, 16) (``-gluon-backward-8-k3x7x7.json``).

dk/dv on query boxes (``na_dkdv_boxes``: each key tile over the boxes of the queries that see it,
``key_boxes.query_boxes``), ``-gluon-backward-9-dkdv-boxes.json``, D = 128 / 64: 3-D 3x7x7 on
(1, 8, 8) key tiles (10.3 boxes against 19.8 listed tiles on natten's (1, 4, 16)) 0.950 / 0.760
ms against 1.529 / 1.153 on the tiles; the suite's 3-D 5x13x13, whose border keys are seen by
wide query ranges (31.7 boxes against 35.6 tiles), 2.737 / 2.180 against 2.644 / 2.043. A box
step takes 16-19% longer than a tile step, so dk/dv runs on query boxes where they cost at most
``DKDV_BOXES_MAX_COST`` of the listed tiles (``dkdv_on_boxes``).
"""

from __future__ import annotations

import torch

from . import forward_route
from .flash_fwd import bulk_aligned
from .masks import MASK_NEIGHBORHOOD

# On: the backward runs na_dkdv wherever ``routes`` allows it (off for A/B timing through
# ``tessera.bench.switches``).
GLUON_DKDV_ENABLED = True
# On: the backward runs na_dq wherever ``routes`` allows it (off for A/B timing).
GLUON_DQ_ENABLED = True
# na_dq's K and V ring slots where it runs.
DQ_VARIANT = dict(num_buffers=2, v_buffers=2)
# On: dq runs on key boxes (na_dq_boxes) where ``dq_on_boxes`` says (off for A/B timing).
DQ_BOXES_ENABLED = True
# na_dq_boxes' register cap per head dim (None: the compiler's choice; two programs per SM at D
# = 128 by shared memory either way, three at D = 64 under the cap, four at D = 32: 3-D 3 x 7 x 7
# 0.284 against 0.297 ms uncapped, ``results/tuning/2026-12-02-h200-gluon-backward-10-head-dim-32.json``).
DQ_BOXES_REGISTERS = {128: None, 64: 168, 32: 128}
# On: dk/dv runs on query boxes (na_dkdv_boxes) where ``dkdv_on_boxes`` says (off for A/B timing).
DKDV_BOXES_ENABLED = True
# dk/dv takes query boxes when they cost at most this fraction of the plan's listed key tiles
# (``key_boxes.comparable_cost`` of ``query_boxes`` on the tiles ``key_boxes.box_plan`` picks): a
# box step took 16-19% longer than a tile step
# (``results/tuning/2026-12-02-h200-gluon-backward-9-dkdv-boxes.json``).
DKDV_BOXES_MAX_COST = 0.8
# Masked plans take na_dq when they list at most this many key tiles per query tile on average,
DQ_MAX_MASKED_TILES = 16
# or at D = 128 when at least this fraction of the listed tiles is partial.
DQ_MIN_PARTIAL = 0.5


def dkdv_variant(dim: int, masked: bool) -> dict:
    """``na_dkdv``'s keyword arguments at head dim ``dim`` on a masked plan or on full tiles only:
    its q/dO ring slots, loop and register cap.

    Ring slots: two at D = 128 (three take 128 KB of shared memory, one program per SM: 4.34
    against 2.94 ms in 3-D), three below. Loop and cap, measured on an H200
    (``results/tuning/2026-12-04-h200-gluon-backward-11-dkdv-pipeline.json`` and
    ``-12-dkdv-pipeline-registers.json``, kernel ms of the sequential loop -> the chosen one):
    at D = 64 the masked plans take ``EARLY_DP`` (2-D k17 0.260 -> 0.242, 3-D 5x13x13 2.015 ->
    1.897) and the full-tile plans the sequential loop under 168 registers, three programs per SM
    instead of two (blocked 4x8x8 0.327 -> 0.259; ``EARLY_DP`` there 0.319, and under the cap
    0.319, masked plans under the cap 0.270-0.281). At D = 128 ``DEFER_DK`` (0.343 -> 0.363) and
    ``EARLY_DP`` (spills, 0.731) lose, at D = 32 both lose (2-D 0.183 -> 0.184 / 0.214): the
    sequential loop stays."""
    from ..gluon.na_dkdv import EARLY_DP, SEQUENTIAL
    if dim > 64:
        return dict(num_buffers=2, pipeline=SEQUENTIAL)
    if dim == 64:
        if masked:
            return dict(num_buffers=3, pipeline=EARLY_DP)
        return dict(num_buffers=3, pipeline=SEQUENTIAL, max_registers=168)
    return dict(num_buffers=3, pipeline=SEQUENTIAL)


def _in_scope(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, plan,
              fold=None) -> bool:
    """A Hopper GPU, 64 x 64 tiles and the Gluon kernels' scope: ``na_forward.supports`` for q,
    k, v (under ``fold``, a ``masks.DilationFold``, where given), and do laid out as q (what
    ``supports(do, k, v, plan, fold)`` then finds, at one check's host cost)."""
    if (plan.block_m, plan.block_n) != (64, 64) or not forward_route.on_hopper(q):
        return False
    from ..gluon import na_forward
    return (do.dtype == q.dtype and do.shape == q.shape and do.stride() == q.stride()
            and bulk_aligned(do) and na_forward.supports(q, k, v, plan, fold))


def dq_on_boxes(plan) -> bool:
    """Whether a Gluon dq over ``plan`` (in the kernels' scope) runs on key boxes: a masked plan
    whose boxes cost at most ``forward_route.BOXES_MAX_COST`` of its listed tiles."""
    return (DQ_BOXES_ENABLED and plan.mask_mode == MASK_NEIGHBORHOOD
            and forward_route.cheaper_on_boxes(plan))


def dkdv_on_boxes(plan) -> bool:
    """Whether a Gluon dk/dv over ``plan`` (in the kernels' scope) runs on query boxes: a masked
    plan whose query boxes cost at most ``DKDV_BOXES_MAX_COST`` of its listed tiles (kept with
    the plan)."""
    if not DKDV_BOXES_ENABLED or plan.mask_mode != MASK_NEIGHBORHOOD:
        return False
    key = ("dkdv_on_boxes", DKDV_BOXES_MAX_COST)
    if key not in plan.schedules:
        from ..gluon import key_boxes
        chosen = key_boxes.box_plan(plan, key_boxes.query_boxes)
        plan.schedules[key] = (chosen is not None
                               and key_boxes.comparable_cost(chosen, key_boxes.query_boxes)
                               <= DKDV_BOXES_MAX_COST * plan.listed_pairs() / plan.n_k_tiles)
    return plan.schedules[key]


def routes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, dq_plan,
           dkdv_plan, fold=None) -> tuple[bool, bool]:
    """``(dq from na_dq, dk and dv from na_dkdv)`` for this grid-order backward (plain softmax:
    the caller checks) over ``dq_plan`` and ``dkdv_plan``, every group of ``fold`` (a
    ``masks.DilationFold``) where given. Each needs its switch, a Hopper GPU, 64 x 64 tiles and
    the kernels' scope; dq also full tiles, key boxes (``dq_on_boxes``, not under a fold), at
    most ``DQ_MAX_MASKED_TILES`` listed key tiles per query tile, or D = 128 with at least
    ``DQ_MIN_PARTIAL`` of them partial (``na_dq`` reads delta: the caller computes it first).
    Both kernels then run with ``scope_checked``."""
    dkdv = GLUON_DKDV_ENABLED and _in_scope(q, k, v, do, dkdv_plan, fold)
    dq = GLUON_DQ_ENABLED and (dkdv if dq_plan is dkdv_plan and GLUON_DKDV_ENABLED
                               else _in_scope(q, k, v, do, dq_plan, fold))
    if dq and dq_plan.mask_mode == MASK_NEIGHBORHOOD:
        dq = ((fold is None and dq_on_boxes(dq_plan))
              or forward_route.few_listed_tiles(dq_plan, DQ_MAX_MASKED_TILES)
              or (q.shape[3] == 128 and dq_plan.partial_fraction() >= DQ_MIN_PARTIAL))
    return dq, dkdv
