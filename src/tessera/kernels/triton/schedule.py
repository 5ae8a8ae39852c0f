"""Launch order of the flash kernels' programs: longest first.

Each kernel runs one program per (batch, head, tile), and the GPU starts programs in launch order
as SMs free up. When tiles list different numbers of tiles (causal, windows, block-sparse, S2
strided: a key block in a head's shard is seen by every later query), a long program launched
last keeps a few SMs busy after the rest are idle. Launching programs in decreasing order of
work (longest-processing-time-first list scheduling) bounds that tail by the shortest programs.
On the H100 benchmark maps the simulated gain is 8% for S2 strided's dk/dv pass (a long column
every ``stride`` key tiles), 2-4% on random block masks and windows, none on causal.

A ``Schedule`` is a permutation of *entries* ``head_entry * n_tiles + tile``; the kernel's
program ``pid`` takes entry ``order[pid // reps]`` and replica ``pid % reps`` (the batch and the
heads that share the entry's lists). Uniform maps (dense) keep the plain 2-D launch grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from .masks import KernelPlan, TileLists

# Cost of a program in full-tile units: listed tiles (partial ones dearer: they evaluate the
# mask) plus a fixed part (loading its tile, writing its outputs).
PARTIAL_TILE_COST = 1.25
PROGRAM_COST = 1.5

# Set False (or TESSERA_LONGEST_FIRST=0) for the plain launch order (comparisons).
ENABLED = os.environ.get("TESSERA_LONGEST_FIRST", "1") != "0"


@dataclass(frozen=True)
class Schedule:
    """``order`` int32 ``[heads * n_tiles]`` entries ``head_entry * n_tiles + tile``, most work
    first; ``heads``: the head entries it distinguishes (1 when every head shares the lists, else
    the kernel's heads: query heads for rows, key/value heads for columns)."""

    order: torch.Tensor
    heads: int

    def launch(self, batch: int, kernel_heads: int) -> tuple[tuple[int], int]:
        """``(grid, reps)`` of a kernel over ``batch`` x ``kernel_heads`` heads."""
        reps = batch * (kernel_heads // self.heads)
        return (self.order.numel() * reps,), reps


def _cost(lists: TileLists) -> torch.Tensor:
    return lists.full_count.float() + PARTIAL_TILE_COST * lists.part_count.float() + PROGRAM_COST


def _longest_first(lists: TileLists, group: int, reverse_ties: bool) -> Optional[torch.Tensor]:
    """Entries of the lists' heads (summed over groups of ``group`` consecutive heads) and tiles
    by decreasing cost (ties by increasing tile index, or decreasing with ``reverse_ties``); None
    when every entry lists as many tiles (dense maps, also with a cut-off last tile)."""
    counts = lists.full_count + lists.part_count
    if bool((counts == counts.flatten()[0]).all()):
        return None
    cost = _cost(lists)
    if group > 1:
        cost = cost.view(cost.shape[0] // group, group, -1).sum(1)
    n_tiles = cost.shape[1]
    keyed = cost.flip(1) if reverse_ties else cost
    order = torch.argsort(keyed.flatten(), descending=True, stable=True)
    if reverse_ties:
        order = (order // n_tiles) * n_tiles + (n_tiles - 1 - order % n_tiles)
    return order.to(torch.int32).contiguous()


def row_schedule(plan: KernelPlan) -> Optional[Schedule]:
    """The launch order of the forward and dq kernels (programs per query tile), or None for the
    plain order. Ties go to later query tiles first (the causal-like order)."""
    if not ENABLED:
        return None
    key = ("rows",)
    if key not in plan.schedules:
        order = _longest_first(plan.rows, 1, reverse_ties=True)
        plan.schedules[key] = None if order is None else Schedule(order, plan.map_heads)
    return plan.schedules[key]


def col_schedule(plan: KernelPlan, kv_heads: int) -> Optional[Schedule]:
    """The launch order of the dk/dv kernel (programs per key/value head and key tile, each
    walking the lists of its ``heads // kv_heads`` query heads), or None for the plain order."""
    if not ENABLED:
        return None
    key = ("cols", kv_heads)
    if key not in plan.schedules:
        group = plan.map_heads // kv_heads if plan.map_heads > 1 else 1
        order = _longest_first(plan.cols, group, reverse_ties=False)
        plan.schedules[key] = None if order is None else Schedule(order, plan.map_heads // group)
    return plan.schedules[key]
