"""Key boxes: each query tile's keys as grid boxes placed where its windows are, not on a tile grid.

A neighborhood's query tile (a grid box of 64 tokens) sees the keys of the union of its
queries' windows, itself a grid box: per axis, the interval from the first query's window
start to the last query's window end (windows are monotone along an axis). Key tiles fixed to
an 8 x 8 grid cover that box with 8-wide steps aligned to the grid: a 3-D 5 x 13 x 13 window
makes 20 x 20 boxes per frame that take 24 x 24 keys of aligned tiles. Here the box is
partitioned from its own corner into ``FULL_BOX`` boxes (one frame, 8 x 8 tokens, 64 keys)
and, where an axis leaves a remainder of at most half a box, half boxes (4 x 8 or 8 x 4, 32
keys): 20 x 20 takes 2 x 2 full boxes, 2 + 2 half boxes and one half box for the corner, 416
keys. The kernel (``na_forward_boxes``) masks each box with the neighborhood's penalty, so a
box may reach past the union, or past the grid (bulk copies fill zeros there, and those codes
lie outside every window).

Entries are int32, ``(((c0 * 1024 + c1) * 1024 + c2) * 4 + kind)`` with ``(c0, c1, c2)`` the
box's first token and ``kind`` one of ``FULL``, ``HALF_1`` (4 x 8: half along axis 1) and
``HALF_2`` (8 x 4: half along axis 2); so grid axes 1 and 2 hold at most 1024 tokens and axis 0
at most 512 (``fits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ...patterns import Neighborhood
from ..triton.flash_fwd import grid_box
from ..triton.masks import MASK_NEIGHBORHOOD

FULL, HALF_1, HALF_2 = 0, 1, 2
# Extents of a full box along grid axes 0, 1, 2, and the halves.
FULL_BOX = (1, 8, 8)
HALF_BOXES = {HALF_1: (1, 4, 8), HALF_2: (1, 8, 4)}
BOX_KEYS = {FULL: 64, HALF_1: 32, HALF_2: 32}
# Limits of the packed entries: grid extents along axes 0, 1, 2.
MAX_GRID = (512, 1024, 1024)
# Time of a half box in units of a full box's, for ``KeyBoxes.cost`` (64 x 32 tiles ran at 0.56
# of 64 x 64 ones per tile in ``results/tuning/2026-12-01-h200-gluon-forward-16-32-key.json``;
# taken higher for the branch between the two).
HALF_COST = 0.65


@dataclass(frozen=True)
class KeyBoxes:
    """Per query tile of a plan (map heads = 1): ``counts`` int32 ``[n_q_tiles]`` and ``entries``
    int32 ``[n_q_tiles, width]`` (packed as in the module docstring; full boxes first), on the
    plan's device."""

    counts: torch.Tensor
    entries: torch.Tensor
    full_boxes: int
    half_boxes: int

    @property
    def width(self) -> int:
        return self.entries.shape[1]

    def cost(self) -> float:
        """Boxes per query tile on average, a half box counted as ``HALF_COST`` full ones."""
        return (self.full_boxes + HALF_COST * self.half_boxes) / self.counts.numel()


def pack(kind: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Packed int32 entries of boxes of ``kind`` whose first tokens are ``(c0, c1, c2)``."""
    return ((((c0 * 1024 + c1) * 1024 + c2) * 4) + kind).to(torch.int32)


def unpack(entries: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(kind, c0, c1, c2)`` of packed entries (``pack`` inverted)."""
    e = entries.to(torch.int64)
    return e & 3, e >> 22, (e >> 12) & 1023, (e >> 2) & 1023


def box_extent(kind: int) -> tuple[int, int, int]:
    """Grid extents of a box of ``kind``."""
    return FULL_BOX if kind == FULL else HALF_BOXES[kind]


def _neighborhood(values: tuple) -> Neighborhood:
    """The padded 3-axis neighborhood of ``masks.neighborhood_params`` values."""
    def field(index: int) -> tuple:
        return tuple(values[3 * index:3 * index + 3])
    return Neighborhood(field(0), field(3), field(4), field(5), tuple(bool(c) for c in field(6)))


def fits(plan) -> bool:
    """Whether ``plan`` can run on key boxes: a masked, undilated neighborhood with one map
    head, 64-row query tiles that are grid boxes, and a grid the packed entries address whose
    axes 1 and 2 hold at least a full box."""
    values = plan.na_values
    if plan.mask_mode != MASK_NEIGHBORHOOD or not values or plan.map_heads != 1 or plan.block_m != 64:
        return False
    if grid_box(plan, plan.block_m) is None or any(d != 1 for d in values[12:15]):
        return False
    grid = values[0:3]
    return (all(g <= limit for g, limit in zip(grid, MAX_GRID))
            and grid[1] >= FULL_BOX[1] and grid[2] >= FULL_BOX[2])


def _segments(length: torch.Tensor, full: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per-tile segments covering ``length`` tokens from the start: ``(offset, is_half, present)``
    per segment slot; full segments of ``full`` tokens, the last one half when at most half of
    it is needed."""
    half = full // 2
    n_full = length // full
    rest = length - n_full * full
    last_half = (rest > 0) & (rest <= half)
    n_total = n_full + (rest > 0).to(length.dtype)
    slots = int(n_total.max())
    out = []
    for i in range(slots):
        present = i < n_total
        is_half = last_half & (i == n_total - 1)
        out.append((torch.full_like(length, i * full), is_half, present))
    return out


def build(plan) -> KeyBoxes:
    """The key boxes of ``plan`` (``fits`` must hold): per query tile, the union of its queries'
    windows partitioned into full and half boxes."""
    values = plan.na_values
    rule = _neighborhood(values)
    tile, tiles = values[3:6], values[6:9]
    q_box = grid_box(plan, plan.block_m)
    n_q = plan.n_q_tiles
    pos = torch.arange(n_q, dtype=torch.int64) * plan.block_m
    volume = tile[0] * tile[1] * tile[2]
    order_tile, inner = pos // volume, pos % volume
    j0 = order_tile // (tiles[1] * tiles[2])
    j1 = order_tile // tiles[2] % tiles[1]
    j2 = order_tile % tiles[2]
    i0 = inner // (tile[1] * tile[2])
    i1 = inner // tile[2] % tile[1]
    i2 = inner % tile[2]
    first = (j0 * tile[0] + i0, j1 * tile[1] + i1, j2 * tile[2] + i2)
    lo, hi = [], []
    for axis in range(3):
        a_lo, a_hi = rule.axis_key_range(axis, first[axis], first[axis] + q_box[axis] - 1, None)
        lo.append(a_lo)
        hi.append(a_hi + 1)
    frames = hi[0] - lo[0]
    seg1 = _segments(hi[1] - lo[1], FULL_BOX[1])
    seg2 = _segments(hi[2] - lo[2], FULL_BOX[2])
    entries, present_all, half_all = [], [], []
    for f in range(int(frames.max())):
        for off1, half1, ok1 in seg1:
            for off2, half2, ok2 in seg2:
                present = (f < frames) & ok1 & ok2
                # A box half along both axes is taken as half along axis 1 (its 8 x-positions
                # reach past the union, where the mask drops them).
                kind = torch.where(half1, HALF_1, torch.where(half2, HALF_2, FULL))
                entries.append(pack(kind, lo[0] + f, lo[1] + off1, lo[2] + off2))
                present_all.append(present)
                half_all.append(kind != FULL)
    entries = torch.stack(entries, 1)
    present = torch.stack(present_all, 1)
    half = torch.stack(half_all, 1)
    # Present entries first, full boxes before half ones, each group in cover order.
    rank = torch.where(present, half.to(torch.int64), 2) * entries.shape[1] + torch.arange(entries.shape[1])
    order = rank.argsort(1)
    entries = entries.gather(1, order)
    counts = present.sum(1).to(torch.int32)
    width = int(counts.max())
    entries = torch.where(torch.arange(width) < counts[:, None], entries[:, :width], 0).contiguous()
    device = plan.na_params.device
    return KeyBoxes(counts.to(device), entries.to(torch.int32).to(device),
                    int((present & ~half).sum()), int((present & half).sum()))


def key_boxes(plan) -> Optional[KeyBoxes]:
    """``build(plan)`` when ``fits(plan)``, else None; kept with the plan."""
    if ("key_boxes",) not in plan.schedules:
        plan.schedules[("key_boxes",)] = build(plan) if fits(plan) else None
    return plan.schedules[("key_boxes",)]
