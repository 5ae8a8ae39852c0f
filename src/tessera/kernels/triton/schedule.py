"""Launch order of the flash kernels' programs: the plain grid, or longest first where one long
program would otherwise finish alone.

Each kernel runs one program per (batch, head, tile); the GPU starts programs in launch order as
SMs free up. The plain grid walks the tiles of one head before the next, so programs running
together share that head's keys and values (or queries) in L2. When a few programs are much
longer than the rest, one of them launched late keeps an SM busy after the others are idle: S2
strided's dk/dv pass, where a key block in a head's shard is seen by every later query, has
columns of up to a third of an SM's share of the work. There, launching programs by decreasing
work (longest-processing-time-first) removes the tail; elsewhere it loses more in L2 locality
than it gains (H200, ``benchmarks/gpu_schedule_ab.py``, results/tuning/2026-11-30-h200-schedule-
ab.json: strided dk/dv 3.96 -> 3.39 ms; random blocks 10% dk/dv 0.85 -> 1.11 ms, causal forward
4.72 -> 5.21 ms). So the order is longest-first only when the longest program holds at least
``TAIL_FRACTION`` of an SM's even share of the launch.

A ``Schedule`` is a permutation of *entries* ``head_entry * n_tiles + tile``; the kernel's
program ``pid`` takes entry ``order[pid // reps]`` and replica ``pid % reps`` (the batch and the
heads that share the entry's lists).
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

# Longest first when the longest program costs at least this fraction of total / SMs (the
# benchmark maps at 132 SMs: S2 strided dk/dv 0.35; every kernel of causal, windows, random blocks
# and Power at most 0.13).
TAIL_FRACTION = 0.25

# Set False (or TESSERA_LONGEST_FIRST=0) for the plain launch order everywhere (comparisons).
ENABLED = os.environ.get("TESSERA_LONGEST_FIRST", "1") != "0"

# SM count assumed off the GPU (interpreter): an H100's.
_DEFAULT_SMS = 132


@dataclass(frozen=True)
class Schedule:
    """``order`` int32 ``[heads * n_tiles]`` entries ``head_entry * n_tiles + tile``, most work
    first; ``heads``: the head entries it distinguishes (1 when every head shares the lists, else
    the kernel's heads: query heads for rows, key/value heads for columns); ``longest`` and
    ``total``: the largest and the summed entry cost."""

    order: torch.Tensor
    heads: int
    longest: float
    total: float

    def launch(self, batch: int, kernel_heads: int) -> tuple[tuple[int], int]:
        """``(grid, reps)`` of a kernel over ``batch`` x ``kernel_heads`` heads."""
        reps = batch * (kernel_heads // self.heads)
        return (self.order.numel() * reps,), reps

    def has_tail(self, batch: int, kernel_heads: int, sms: int) -> bool:
        """Whether the longest program is long against an SM's share of the whole launch."""
        reps = batch * (kernel_heads // self.heads)
        return self.longest >= TAIL_FRACTION * self.total * reps / sms


def _cost(lists: TileLists) -> torch.Tensor:
    return lists.full_count.float() + PARTIAL_TILE_COST * lists.part_count.float() + PROGRAM_COST


def _longest_first(lists: TileLists, group: int, reverse_ties: bool, heads: int) -> Optional[Schedule]:
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
    return Schedule(order.to(torch.int32).contiguous(), heads, float(cost.max().item()),
                    float(cost.sum().item()))


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return _DEFAULT_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def _chosen(found: Optional[Schedule], batch: int, kernel_heads: int, device) -> Optional[Schedule]:
    if found is None or not found.has_tail(batch, kernel_heads, _sms(device)):
        return None
    return found


def _in_plan(plan: KernelPlan, key: tuple, make):
    """``make()``, remembered in ``plan.schedules`` under ``key`` (None included)."""
    if key not in plan.schedules:
        plan.schedules[key] = make()
    return plan.schedules[key]


def _row_candidate(plan: KernelPlan) -> Optional[Schedule]:
    return _in_plan(plan, ("rows",), lambda: _longest_first(plan.rows, 1, True, plan.map_heads))


def _col_candidate(plan: KernelPlan, kv_heads: int) -> Optional[Schedule]:
    group = plan.map_heads // kv_heads if plan.map_heads > 1 else 1
    return _in_plan(plan, ("cols", kv_heads),
                    lambda: _longest_first(plan.cols, group, False, plan.map_heads // group))


def reorderable(plan: KernelPlan, kv_heads: Optional[int] = None) -> bool:
    """Whether launches over this plan's rows (``kv_heads`` None) or columns may take a
    longest-first order: their lists differ in length. Kernels over uniform maps (dense) are
    compiled without the run-time choice of order (the constexpr ``MAY_SCHEDULE``), which keeps
    the program ids out of the registers of their tile loops."""
    if not ENABLED:
        return False
    found = _row_candidate(plan) if kv_heads is None else _col_candidate(plan, kv_heads)
    return found is not None


def row_schedule(plan: KernelPlan, batch: int, heads: int) -> Optional[Schedule]:
    """The launch order of the forward and dq kernels (programs per query tile) over ``batch`` x
    ``heads`` query heads, or None for the plain grid. Ties go to later query tiles first (the
    causal-like order)."""
    if not ENABLED:
        return None
    return _chosen(_row_candidate(plan), batch, heads, plan.rows.full_count.device)


def col_schedule(plan: KernelPlan, batch: int, kv_heads: int) -> Optional[Schedule]:
    """The launch order of the dk/dv kernel (programs per key/value head and key tile, each
    walking the lists of its query heads) over ``batch`` x ``kv_heads``, or None for the plain
    grid."""
    if not ENABLED:
        return None
    return _chosen(_col_candidate(plan, kv_heads), batch, kv_heads, plan.cols.full_count.device)


@dataclass(frozen=True)
class Launch:
    """How a flash kernel is launched over a plan: ``grid``, and its ``program_ids`` arguments
    ``order`` (int32; any int32 tensor when not scheduled), ``reps``, ``heads`` (ORDER_HEADS),
    ``scheduled`` (0 or 1, run-time) and ``may_schedule`` (constexpr: ``reorderable``)."""

    grid: tuple
    order: torch.Tensor
    reps: int
    heads: int
    scheduled: int
    may_schedule: bool


def _launch(found: Optional[Schedule], lists: TileLists, n_tiles: int, batch: int,
            kernel_heads: int, may_schedule: bool) -> Launch:
    if found is None:
        return Launch((n_tiles, batch * kernel_heads), lists.full_count, 1, 1, 0, may_schedule)
    grid, reps = found.launch(batch, kernel_heads)
    return Launch(grid, found.order, reps, found.heads, 1, may_schedule)


def row_launch(plan: KernelPlan, batch: int, heads: int) -> Launch:
    """The launch of the forward or dq kernel over ``plan`` (``row_schedule``), remembered in
    the plan per batch, heads and ``ENABLED``."""
    return _in_plan(plan, ("row launch", batch, heads, ENABLED),
                    lambda: _launch(row_schedule(plan, batch, heads), plan.rows, plan.n_q_tiles, batch,
                                    heads, reorderable(plan)))


def col_launch(plan: KernelPlan, batch: int, kv_heads: int) -> Launch:
    """The launch of the dk/dv kernel over ``plan`` (``col_schedule``), remembered in the plan
    per batch, kv heads and ``ENABLED``."""
    return _in_plan(plan, ("col launch", batch, kv_heads, ENABLED),
                    lambda: _launch(col_schedule(plan, batch, kv_heads), plan.cols, plan.n_k_tiles, batch,
                                    kv_heads, reorderable(plan, kv_heads)))
