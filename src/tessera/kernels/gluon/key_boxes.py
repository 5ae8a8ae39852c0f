"""Key boxes: each query tile's keys as grid boxes placed where its windows are, not on a tile grid.

A neighborhood's query tile (a grid box of 64 tokens) sees the keys of the union of its
queries' windows, itself a grid box: per axis, the interval from the first query's window
start to the last query's window end (windows are monotone along an axis). Key tiles fixed to
an 8 x 8 grid cover that box with 8-wide steps aligned to the grid: a 3-D 5 x 13 x 13 window
makes 20 x 20 boxes per frame that take 24 x 24 keys of aligned tiles. Here each frame of the
box is partitioned from its own corner (``_frame_boxes``) into full boxes (8 x 8 tokens, 64
keys) and, where an axis leaves a remainder of at most 4, a strip 4 wide along it: in 4 x 16
(``WIDE``) and 16 x 4 (``TALL``) boxes of 64 keys, and 4 x 8 / 8 x 4 half boxes (32 keys)
for what is left. 20 x 20 takes 2 x 2 full boxes, one wide, one tall and a 4 x 8 half box at
the corner: 416 keys in 7 boxes. The kernel (``na_forward_boxes``) masks each box with the
neighborhood's penalty, so a box may reach past the union, or past the grid (bulk copies
fill zeros there, and those codes lie outside every window).

The backward's dk/dv takes the transposed walk (``query_boxes``, ``na_dkdv_boxes``): per key
tile, the queries that see some key of it form a grid box (per axis, from the first query whose
window reaches the tile to the last), partitioned the same way into boxes of queries.

The kernels read and write every tensor in grid order, so a plan's boxes may run on other tiles
than its token order's: ``box_plan`` takes, of the plan's own, (1, 8, 8) and (2, 8, 4), those
with the cheapest boxes (``QUERY_TILES``).

Entries are int32, ``(((c0 * 1024 + c1) * 1024 + c2) * 8 + kind)`` with ``(c0, c1, c2)`` the
box's first token and ``kind`` one of ``EXTENTS``; so grid axes 1 and 2 hold at most 1024
tokens and axis 0 at most 256 (``fits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ...patterns.neighborhood import Neighborhood, PaddedNeighborhood
from ...patterns.layout import GridLayout, Permuted
from ..triton.flash_fwd import grid_box
from ..triton.masks import MASK_NEIGHBORHOOD, get_plan

FULL, HALF_1, HALF_2, WIDE, TALL = 0, 1, 2, 3, 4
# Extents of each kind of box along grid axes 0, 1, 2 (a full box first).
EXTENTS = {FULL: (1, 8, 8), HALF_1: (1, 4, 8), HALF_2: (1, 8, 4), WIDE: (1, 4, 16), TALL: (1, 16, 4)}
FULL_BOX = EXTENTS[FULL]
BOX_KEYS = {kind: extent[1] * extent[2] for kind, extent in EXTENTS.items()}
# Limits of the packed entries: grid extents along axes 0, 1, 2.
MAX_GRID = (256, 1024, 1024)
# Time of a 32-key box in units of a 64-key one's, for ``KeyBoxes.cost`` (0.67 measured: the
# 3-D suite case, 20 full and 15.6 half boxes in 1.308 ms against 35.6 tiles in 1.526,
# ``results/tuning/2026-12-01-h200-gluon-forward-18-boxes.json``).
HALF_COST = 0.67
# A plan whose query tiles span more than one frame evaluates the penalty's axis-0 term on
# every box: its boxes count this much more when query tiles are compared (``box_plan``). At
# D = 64 the 3-D suite case took 0.0305 ms per box on (2, 8, 4) and (4, 4, 4) query tiles
# against 0.0300 on (1, 8, 8); at D = 128 0.0466 against 0.0469
# (``results/tuning/2026-12-02-h200-gluon-forward-21-query-tiles.json``).
DEEP_QUERY_COST = 1.02
# Query tiles (extents along grid axes 0, 1, 2) the key-box kernels may take in place of a
# plan's own (``box_plan``). The 3-D suite case (5 x 13 x 13 over 16 x 48 x 48) takes (2, 8, 4):
# 26.8 boxes per query tile against 28.2 on (1, 8, 8), whose window unions of 20 x 20 keys per
# frame become 20 x 16; 1.248 ms against 1.320 at D = 128. (2, 4, 8) tiles, with as many boxes
# but a 16 x 4 one per frame where (2, 8, 4) has a 4 x 16 one, took 1.279 (the same file).
QUERY_TILES = ((1, 8, 8), (2, 8, 4))


@dataclass(frozen=True)
class KeyBoxes:
    """Per query tile of a plan (map heads = 1; per key tile for ``query_boxes``): ``counts``
    int32 ``[n_tiles]`` and ``entries`` int32 ``[n_tiles, width]`` (packed as in the module
    docstring; 64-token boxes first), on the plan's device; ``boxes_64`` and ``boxes_32``: how
    many boxes of 64 and 32 tokens in all."""

    counts: torch.Tensor
    entries: torch.Tensor
    boxes_64: int
    boxes_32: int

    @property
    def width(self) -> int:
        return self.entries.shape[1]

    def cost(self) -> float:
        """Boxes per query tile on average, a 32-key box counted as ``HALF_COST`` 64-key ones."""
        return (self.boxes_64 + HALF_COST * self.boxes_32) / self.counts.numel()


def pack(kind: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Packed int32 entries of boxes of ``kind`` whose first tokens are ``(c0, c1, c2)``."""
    return ((((c0 * 1024 + c1) * 1024 + c2) * 8) + kind).to(torch.int32)


def unpack(entries: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(kind, c0, c1, c2)`` of packed entries (``pack`` inverted)."""
    e = entries.to(torch.int64)
    return e & 7, e >> 23, (e >> 13) & 1023, (e >> 3) & 1023


def _neighborhood(values: tuple) -> Neighborhood:
    """The 3-axis neighborhood (leading axes of extent 1 added) of ``masks.neighborhood_params``
    values: a ``PaddedNeighborhood`` where the extent is less than the grid."""
    def field(index: int) -> tuple:
        return tuple(values[3 * index:3 * index + 3])
    grid, extent, causal = field(0), field(9), tuple(bool(c) for c in field(6))
    if extent != grid:
        return PaddedNeighborhood(grid, extent, field(3), field(5), causal)
    return Neighborhood(grid, field(3), field(4), field(5), causal)


def fits(plan) -> bool:
    """Whether ``plan`` can run on key boxes: a masked, undilated neighborhood with one map
    head, 64-row query tiles that are grid boxes, and a grid the packed entries address whose
    axes 1 and 2 hold the longest box (16 tokens: no box is longer than its tensor dim)."""
    values = plan.na_values
    if plan.mask_mode != MASK_NEIGHBORHOOD or not values or plan.map_heads != 1 or plan.block_m != 64:
        return False
    if grid_box(plan, plan.block_m) is None or any(d != 1 for d in values[12:15]):
        return False
    grid = values[0:3]
    longest = max(max(extent[1], extent[2]) for extent in EXTENTS.values())
    return all(g <= limit for g, limit in zip(grid, MAX_GRID)) and min(grid[1], grid[2]) >= longest


def _frame_boxes(length1: int, length2: int) -> list[tuple[int, int, int]]:
    """``(kind, offset1, offset2)`` of the boxes partitioning one frame of a window union of
    ``length1 x length2`` tokens from its corner: full 8 x 8 boxes, and where an axis leaves at
    most 4 tokens, a strip of 4 along it, in 4 x 16 (``WIDE``) or 16 x 4 (``TALL``) boxes
    where the strip is 16 long, else half boxes (the corner: a 4 x 8 half box)."""
    full1, full2 = FULL_BOX[1], FULL_BOX[2]
    n1, rest1 = divmod(length1, full1)
    n2, rest2 = divmod(length2, full2)
    strip1 = 0 < rest1 <= full1 // 2
    strip2 = 0 < rest2 <= full2 // 2
    n1 += int(rest1 > 0 and not strip1)
    n2 += int(rest2 > 0 and not strip2)
    boxes = [(FULL, full1 * i, full2 * j) for i in range(n1) for j in range(n2)]
    if strip1:
        row = full1 * n1
        pairs = n2 // 2
        boxes += [(WIDE, row, 2 * full2 * p) for p in range(pairs)]
        boxes += [(HALF_1, row, full2 * j) for j in range(2 * pairs, n2 + int(strip2))]
    if strip2:
        col = full2 * n2
        pairs = n1 // 2
        boxes += [(TALL, 2 * full1 * p, col) for p in range(pairs)]
        boxes += [(HALF_2, full1 * i, col) for i in range(2 * pairs, n1)]
    return boxes


def _tile_firsts(plan, count: int, block: int) -> tuple[torch.Tensor, ...]:
    """Grid coordinates (axes 0, 1, 2; int64 ``[count]`` each) of the first token of each of the
    ``count`` kernel tiles of ``block`` tokens in ``plan``'s tiled order."""
    values = plan.na_values
    tile, tiles = values[3:6], values[6:9]
    pos = torch.arange(count, dtype=torch.int64) * block
    volume = tile[0] * tile[1] * tile[2]
    order_tile, inner = pos // volume, pos % volume
    j0 = order_tile // (tiles[1] * tiles[2])
    j1 = order_tile // tiles[2] % tiles[1]
    j2 = order_tile % tiles[2]
    i0 = inner // (tile[1] * tile[2])
    i1 = inner // tile[2] % tile[1]
    i2 = inner % tile[2]
    return j0 * tile[0] + i0, j1 * tile[1] + i1, j2 * tile[2] + i2


def _partition(lo: list, lengths: list, device) -> KeyBoxes:
    """Boxes of unions whose per-axis starts and lengths (3 int64 ``[n]`` tensors each) are
    ``lo`` and ``lengths``, each partitioned frame by frame (``_frame_boxes``)."""
    shapes, which = torch.unique(torch.stack(lengths, 1), dim=0, return_inverse=True)
    lists = []
    for frames, length1, length2 in shapes.tolist():
        frame = _frame_boxes(length1, length2)
        # Full-size boxes first (the same step code runs back to back).
        frame.sort(key=lambda box: BOX_KEYS[box[0]] != 64)
        lists.append(torch.tensor([(kind, f, o1, o2) for kind, o1, o2 in frame for f in range(frames)],
                                  dtype=torch.int64).view(-1, 4))
    width = max(len(boxes) for boxes in lists)
    relative = torch.zeros(len(lists), width, 4, dtype=torch.int64)
    counts_of = torch.tensor([len(boxes) for boxes in lists], dtype=torch.int32)
    for i, boxes in enumerate(lists):
        relative[i, :len(boxes)] = boxes
    rel = relative[which]
    counts = counts_of[which]
    present = torch.arange(width) < counts[:, None].to(torch.int64)
    entries = pack(rel[..., 0], lo[0][:, None] + rel[..., 1], lo[1][:, None] + rel[..., 2],
                   lo[2][:, None] + rel[..., 3])
    entries = torch.where(present, entries, 0).contiguous()
    half = torch.tensor([BOX_KEYS[int(k)] == 32 for k in range(len(BOX_KEYS))])[rel[..., 0]]
    return KeyBoxes(counts.to(device), entries.to(device), int((present & ~half).sum()),
                    int((present & half).sum()))


def build(plan) -> KeyBoxes:
    """The key boxes of ``plan`` (``fits`` must hold): per query tile, the union of its queries'
    windows partitioned frame by frame (``_frame_boxes``)."""
    rule = _neighborhood(plan.na_values)
    q_box = grid_box(plan, plan.block_m)
    first = _tile_firsts(plan, plan.n_q_tiles, plan.block_m)
    lo, lengths = [], []
    for axis in range(3):
        a_lo, a_hi = rule.axis_key_range(axis, first[axis], first[axis] + q_box[axis] - 1, None)
        lo.append(a_lo)
        lengths.append(a_hi + 1 - a_lo)
    return _partition(lo, lengths, plan.na_params.device)


def _axis_query_range(rule: Neighborhood, axis: int, y0: torch.Tensor, y1: torch.Tensor):
    """``(lo, hi)``: the queries (coordinates along ``axis`` of the undilated ``rule``) whose
    windows meet the keys ``[y0, y1]``, inclusive: from the first whose window ends past ``y0``
    to the last whose window starts at or before ``y1`` (starts and ends do not decrease). Of a
    ``PaddedNeighborhood`` only the queries inside the extent count (the padding queries'
    output gradients are zero), so keys past it have none (``hi = lo - 1``)."""
    n = rule._group_length(axis, 0)
    start, end = rule._window(axis, torch.arange(n), torch.tensor(n))
    return torch.searchsorted(end, y0, right=True), torch.searchsorted(start, y1, right=True) - 1


def build_query_boxes(plan) -> KeyBoxes:
    """The query boxes of ``plan`` (``fits`` must hold, 64-key tiles): per key tile, the union of
    the queries that see its keys, partitioned frame by frame (``_frame_boxes``) into boxes of
    64 and 32 queries; ``counts`` and ``entries`` per key tile."""
    rule = _neighborhood(plan.na_values)
    k_box = grid_box(plan, plan.block_n)
    first = _tile_firsts(plan, plan.n_k_tiles, plan.block_n)
    lo, lengths = [], []
    for axis in range(3):
        a_lo, a_hi = _axis_query_range(rule, axis, first[axis], first[axis] + k_box[axis] - 1)
        lo.append(a_lo)
        lengths.append(a_hi + 1 - a_lo)
    return _partition(lo, lengths, plan.na_params.device)


def key_boxes(plan) -> Optional[KeyBoxes]:
    """``build(plan)`` when ``fits(plan)``, else None; kept with the plan."""
    if ("key_boxes",) not in plan.schedules:
        plan.schedules[("key_boxes",)] = build(plan) if fits(plan) else None
    return plan.schedules[("key_boxes",)]


def query_boxes(plan) -> Optional[KeyBoxes]:
    """``build_query_boxes(plan)`` when ``fits(plan)`` with 64-key tiles, else None; kept with
    the plan."""
    if ("query_boxes",) not in plan.schedules:
        fit = fits(plan) and plan.block_n == 64 and grid_box(plan, 64) is not None
        plan.schedules[("query_boxes",)] = build_query_boxes(plan) if fit else None
    return plan.schedules[("query_boxes",)]


def comparable_cost(plan, boxes_of=key_boxes) -> float:
    """``KeyBoxes.cost`` of ``plan``'s boxes (``boxes_of``: ``key_boxes`` or ``query_boxes``;
    ``fits`` must hold), times ``DEEP_QUERY_COST`` where its tiles span more than one frame."""
    deep = grid_box(plan, plan.block_m)[0] > 1
    return boxes_of(plan).cost() * (DEEP_QUERY_COST if deep else 1.0)


def box_plan(plan, boxes_of=key_boxes):
    """The plan whose tiles the box kernels take for ``plan``'s calls (``boxes_of``:
    ``key_boxes``, the forward's and dq's query tiles over key boxes, or ``query_boxes``, dk/dv's
    key tiles over query boxes), or None when ``plan`` has no such boxes: of ``plan`` and the
    same neighborhood's plans in the tiled orders of ``QUERY_TILES`` that tile its grid, the one
    whose boxes have the lowest ``comparable_cost`` (``plan`` on ties); kept with ``plan``. The
    kernels read and write every tensor in grid order, so every such plan gives the same
    results."""
    key = ("box_plan", boxes_of.__name__)
    if key in plan.schedules:
        return plan.schedules[key]
    chosen = None
    if boxes_of(plan) is not None:
        chosen, lowest = plan, comparable_cost(plan, boxes_of)
        values = plan.na_values
        grid = tuple(values[0:3])
        own = grid_box(plan, plan.block_m)
        rule = _neighborhood(values)
        for shape in QUERY_TILES:
            if shape == own or any(g % t for g, t in zip(grid, shape)):
                continue
            other = get_plan(Permuted(rule, GridLayout(grid, shape)), plan.q_len, plan.k_len,
                             plan.block_m, plan.block_n, 1, plan.na_params.device)
            if boxes_of(other) is not None and comparable_cost(other, boxes_of) < lowest:
                chosen, lowest = other, comparable_cost(other, boxes_of)
    plan.schedules[key] = chosen
    return chosen


def predicted_speedup(plan) -> Optional[float]:
    """Analytic speedup over dense attention of the key-box kernels on ``plan``'s problem, or
    None when ``plan`` does not ``fit``: the dense key tiles per query tile (``plan``'s key
    length in 64-key tiles) over the ``comparable_cost`` of the boxes ``box_plan`` picks, each
    64-key box priced as a dense tile (``patterns.predicted_speedup``'s counterpart, which
    prices the plan's listed tiles)."""
    chosen = box_plan(plan)
    if chosen is None:
        return None
    return -(-plan.k_len // 64) / comparable_cost(chosen)
