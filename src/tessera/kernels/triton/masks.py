"""Kernel plans: a pattern's tile map, split for the flash kernels, and how partial tiles are masked.

A ``KernelPlan`` holds, for one ``(pattern, q_len, k_len, block_m, block_n, heads, device)``:
  * per (head, query tile) two CSR lists of key tiles: *full* tiles (every pair allowed, every row
    and column inside the sequences: the kernel skips all masking) and *partial* tiles (masked);
  * the same two lists transposed (per key tile, the query tiles that list it) for the dk/dv pass;
  * the mask kind of partial tiles: ``MASK_NONE`` (bounds only: dense), ``MASK_BAND`` (the offset
    band ``band_lo <= q_pos - k_pos <= band_hi`` evaluated in-kernel: causal, windows and their
    intersections, and patterns whose partial tiles all follow one band, such as the causal
    diagonal tiles of S2 ``Strided`` or of a causal block-sparse mask), ``MASK_TILE_BAND`` (up to
    ``MAX_TILE_BANDS`` offset bands per partial tile: offset patterns with several intervals that
    meet each partial tile in a few of them, such as a band plus a few diagonals: Power,
    Window | Power), ``MASK_NEIGHBORHOOD`` (N-D neighborhood
    attention evaluated in-kernel from the grid coordinates of each token: ``Neighborhood``, or
    ``Permuted(Neighborhood, GridLayout)`` with a tile shape dividing the grid) or ``MASK_BITS``
    (a packed bitmask per partial tile, built once on the device by evaluating ``pattern.mask``
    inside the partial tiles only).

Tiles cut by the end of a sequence (last query tile when ``q_len % block_m``, last key tile when
``k_len % block_n``) are always listed as partial, so the full path needs no bounds checks.

Bitmask layout: int32 ``[n_partial, block_m, block_n // 32]``; bit ``c % 32`` of word
``[t, r, c // 32]`` says whether row ``r`` may see column ``c`` of partial tile ``t``. Each
partial list entry carries ``t``. Per-tile bands: int32 ``[n_partial, bands_per_tile, 2]``, the
``(lo, hi)`` bands of tile ``t`` (clipped to the tile's offset range; unused slots hold the empty
band ``(1, 0)``), addressed by the same ``t``; ``bands_per_tile`` is 1, 2 or 4. Neighborhood
parameters: int32 ``[NA_FIELDS * 3 + 3]`` (``neighborhood_params``), the same for every tile, and
their compile-time switches ``na_static`` (``neighborhood_switches``): set for every plan of an N-D
neighborhood the in-kernel mask can evaluate (also when no tile is partial), 0 for other patterns.

Plans are cached in a small LRU keyed by the pattern's identity (its ``repr`` for patterns that
hold no tensors, the object itself otherwise), lengths, tile sizes, heads and device.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import torch

from ...patterns.base import Dense, Pattern
from ...patterns.layout import Permuted
from ...patterns.neighborhood import Neighborhood, PaddedNeighborhood
from ...patterns.tilemap import FULL, PARTIAL, cdiv

MASK_NONE, MASK_BAND, MASK_BITS, MASK_TILE_BAND, MASK_NEIGHBORHOOD = 0, 1, 2, 3, 4

# Fields of the neighborhood parameters, in the order of na_mask.NA_GRID ... NA_EXTENT.
NA_FIELD_NAMES = ("grid", "tile", "tiles", "kernel", "dilation", "stride", "causal", "shift", "recip",
                  "extent")
# ``recip``: ceil(2 ** RECIP_BITS / tiles) per axis, so that the kernels divide a tile index by a
# tile count as a product and a shift (na_mask.na_tile_coords); exact for every dividend below
# 2 ** RECIP_BITS / tiles.
RECIP_BITS = 30
NA_RECIP_BIT = 1 << 24      # na_mask.NA_RECIP_FIELD
NA_PADDED_BIT = 1 << 28     # na_mask.NA_PADDED

# Band ends beyond this are unbounded for any sequence a kernel can index (int32 arguments).
BAND_LIMIT = 1 << 30

# Elements of [partial tiles, block_m, block_n] evaluated at once when building bitmasks.
_BITMASK_CHUNK = 1 << 24

PLAN_CACHE_SIZE = 64

# False: N-D neighborhoods take bitmasks (comparisons; clear the plan cache after changing it).
ANALYTIC_NEIGHBORHOOD = True

# Most offset bands one partial tile may meet for MASK_TILE_BAND (beyond: bitmasks).
MAX_TILE_BANDS = 4


@dataclass(frozen=True)
class TileLists:
    """Full and partial tile lists for one direction (rows are query tiles, or key tiles when
    transposed). All int32, contiguous; ``[Ht, n_rows]`` counts, ``[Ht, n_rows, width]`` entries."""

    full_count: torch.Tensor
    full_index: torch.Tensor
    part_count: torch.Tensor
    part_index: torch.Tensor
    part_bits: torch.Tensor

    @property
    def full_width(self) -> int:
        return self.full_index.shape[-1]

    @property
    def part_width(self) -> int:
        return self.part_index.shape[-1]


@dataclass
class KernelPlan:
    """Everything a kernel launch needs from the pattern (see the module docstring)."""

    q_len: int
    k_len: int
    block_m: int
    block_n: int
    map_heads: int
    mask_mode: int
    band_lo: int
    band_hi: int
    rows: TileLists
    bits: torch.Tensor
    tile_band: torch.Tensor
    bands_per_tile: int
    na_params: torch.Tensor
    na_static: int
    _states: torch.Tensor = field(repr=False)
    _part_id: torch.Tensor = field(repr=False)
    _cols: Optional[TileLists] = field(default=None, repr=False)
    _partial_fraction: Optional[float] = field(default=None, repr=False)
    _listed: Optional[int] = field(default=None, repr=False)
    # Launch orders built for this plan (schedule.py), by kernel direction and heads.
    schedules: dict = field(default_factory=dict, repr=False)
    # ``na_params`` as Python ints (empty when the plan has none).
    na_values: tuple = ()

    @property
    def n_q_tiles(self) -> int:
        return cdiv(self.q_len, self.block_m)

    @property
    def n_k_tiles(self) -> int:
        return cdiv(self.k_len, self.block_n)

    @property
    def cols(self) -> TileLists:
        """Transposed lists: per (head, key tile) the query tiles listing it (built on first use)."""
        if self._cols is None:
            self._cols = _lists(self._states.transpose(1, 2), self._part_id.transpose(1, 2))
        return self._cols

    def listed_pairs(self) -> int:
        """Number of listed (head, query tile, key tile) triples; computed once."""
        if self._listed is None:
            self._listed = int(self.rows.full_count.sum().item() + self.rows.part_count.sum().item())
        return self._listed

    def partial_fraction(self) -> float:
        """Partial tiles over listed tiles (0 when nothing is listed); computed once."""
        if self._partial_fraction is None:
            listed = self.listed_pairs()
            partial = int(self.rows.part_count.sum().item())
            self._partial_fraction = partial / listed if listed else 0.0
        return self._partial_fraction


def _csr(selected: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pack ``values`` where ``selected`` along the last axis: (count, entries)."""
    count = selected.sum(-1, dtype=torch.int32)
    width = max(int(count.max().item()) if count.numel() else 0, 1)
    slot = torch.where(selected, selected.cumsum(-1) - 1, width)
    shape = (*selected.shape[:-1], width + 1)
    out = torch.zeros(shape, dtype=torch.int32, device=selected.device)
    out.scatter_(-1, slot, values.expand(selected.shape).to(torch.int32))
    return count.contiguous(), out[..., :width].contiguous()


def _lists(states: torch.Tensor, part_id: torch.Tensor) -> TileLists:
    cols = torch.arange(states.shape[-1], device=states.device, dtype=torch.int32)
    full_count, full_index = _csr(states == FULL, cols)
    part = states == PARTIAL
    part_count, part_index = _csr(part, cols)
    _, part_bits = _csr(part, part_id)
    return TileLists(full_count, full_index, part_count, part_index, part_bits)


# Pattern cache key (repr-described patterns only) -> offset_band's answer.
_BANDS: dict = {}


def offset_band(pattern: Optional[Pattern], key=None) -> Optional[tuple[int, int]]:
    """``(lo, hi)`` when ``pattern`` allows exactly the pairs with ``lo <= q_pos - k_pos <= hi``
    (ends clamped to +-BAND_LIMIT), else None. Dense (or None) gives the unbounded band.
    Answers are remembered per pattern (building an offset set costs tens of microseconds, and
    every kernel call asks). ``key``: the pattern's ``pattern_key``, when the caller has it."""
    if pattern is None or isinstance(pattern, Dense):
        return (-BAND_LIMIT, BAND_LIMIT)
    if key is None:
        key = pattern_key(pattern)
    return remembered(_BANDS, key, lambda: _offset_band(pattern))


def remembered(cache: dict, key, compute, *extra):
    """``compute()``, kept in ``cache`` under ``(key, *extra)`` when ``key`` (a ``pattern_key``,
    None for no pattern) describes the pattern by value; an id-based key may later name another
    object, so those compute every time. The cache starts over past ``4 * PLAN_CACHE_SIZE``."""
    if key is not None and key[0] != "repr":
        return compute()
    entry = (key, *extra)
    if entry not in cache:
        if len(cache) >= 4 * PLAN_CACHE_SIZE:
            cache.clear()
        cache[entry] = compute()
    return cache[entry]


def _offset_band(pattern: Pattern) -> Optional[tuple[int, int]]:
    offsets = getattr(pattern, "offsets", None)
    if offsets is None or getattr(pattern, "head_dependent", False):
        return None
    found = offsets()
    intervals = getattr(found, "intervals", None)
    if intervals is None or len(intervals) != 1:
        return None
    lo, hi = intervals[0]
    return max(int(lo), -BAND_LIMIT), min(int(hi), BAND_LIMIT)


def _offset_intervals(pattern: Optional[Pattern]) -> Optional[tuple[tuple[int, int], ...]]:
    """The intervals of a head-independent offset pattern's offset set, else None."""
    offsets = getattr(pattern, "offsets", None)
    if offsets is None or getattr(pattern, "head_dependent", False):
        return None
    return getattr(offsets(), "intervals", None)


def _tile_bands(intervals, states: torch.Tensor, q_len: int, k_len: int, block_m: int,
                block_n: int) -> Optional[torch.Tensor]:
    """int32 ``[n_partial, nb, 2]`` bands of each partial tile (row-major (head, m, n) order;
    ``nb`` the smallest power of two holding the most any tile meets), or None when some partial
    tile meets more than ``MAX_TILE_BANDS`` intervals of the offset set."""
    if not intervals:
        return None
    device = states.device
    _, mm, nn = (states == PARTIAL).nonzero(as_tuple=True)
    offset = k_len - q_len
    q_lo = mm * block_m + offset
    q_hi = torch.clamp((mm + 1) * block_m, max=q_len) - 1 + offset
    k_lo = nn * block_n
    k_hi = torch.clamp((nn + 1) * block_n, max=k_len) - 1
    a, b = q_lo - k_hi, q_hi - k_lo                     # the offsets inside each tile
    los = torch.tensor([lo for lo, _ in intervals], dtype=torch.int64, device=device)
    his = torch.tensor([hi for _, hi in intervals], dtype=torch.int64, device=device)
    # Intervals are sorted and disjoint: those meeting [a, b] are a contiguous run starting at the
    # first interval ending at or after a.
    first = torch.searchsorted(his, a.contiguous())
    count = (torch.searchsorted(los, b.contiguous(), right=True) - first).clamp(min=0)
    most = int(count.max().item()) if count.numel() else 1
    if most > MAX_TILE_BANDS:
        return None
    slots = 1 << max(most - 1, 0).bit_length()
    pick = (first[:, None] + torch.arange(slots, device=device)).clamp(max=len(intervals) - 1)
    used = torch.arange(slots, device=device) < count[:, None]
    lo = torch.where(used, torch.maximum(los[pick], a[:, None]), 1)
    hi = torch.where(used, torch.minimum(his[pick], b[:, None]), 0)
    out = torch.stack([lo, hi], dim=-1).to(torch.int32)
    return out if out.numel() else torch.zeros(1, 1, 2, dtype=torch.int32, device=device)


def grid_order_params(pattern: Optional[Pattern], block_m: int, block_n: int) -> Optional[list[int]]:
    """The parameters by which the kernels address a tiled order's positions in the grid's
    row-major order (``row_addressing.memory_rows``): ``neighborhood_params`` for neighborhoods,
    and for any other ``GridPattern`` of at most 3 axes in a ``GridLayout`` whose tiles divide the
    grid the same fields with a neutral rule (kernel = grid, no dilation, stride or causal axis;
    such a plan masks its partial tiles its own way, never by ``MASK_NEIGHBORHOOD``). None
    otherwise."""
    params = neighborhood_params(pattern, block_m, block_n)
    if params is not None or type(pattern) is not Permuted:
        return params
    from ...patterns.layout import GridPattern
    rule, layout = pattern.pattern, pattern.layout
    if (not isinstance(rule, GridPattern) or rule.ndim > 3
            or any(g % t for g, t in zip(layout.grid, layout.tile_shape))):
        return None
    return _order_params(rule.grid, layout.tile_shape, rule.grid, (1,) * rule.ndim, (1,) * rule.ndim,
                         (False,) * rule.ndim, rule.grid, block_m, block_n)


def neighborhood_params(pattern: Optional[Pattern], block_m: int,
                        block_n: int) -> Optional[list[int]]:
    """The ``MASK_NEIGHBORHOOD`` parameters of ``pattern`` for ``block_m x block_n`` tiles, or None
    when the pattern is not a ``Neighborhood`` or ``PaddedNeighborhood`` over at most 3 axes, in
    row-major order or in a ``GridLayout`` whose tiles divide the grid.

    Flat int32 values: ``NA_FIELD_NAMES`` field-major, 3 axes each (grids padded with leading
    axes of extent 1; ``tile`` / ``tiles`` are the extents and counts of the token order's tiles,
    the whole grid as one tile in row-major order; ``shift`` their log2 where powers of two;
    ``recip`` the fixed-point reciprocals of the counts, ``_tile_recips``; ``extent`` the part
    of the grid whose borders clamp the windows: the grid, or a ``PaddedNeighborhood``'s
    extent), then the flags
    ``aligned`` for query tiles (``block_m``) and key tiles (``block_n``): power-of-two order
    tiles and one order tile holding every kernel tile of that side (a single order tile, or a
    tile volume the block size divides), and ``dilated`` (some dilation > 1)."""
    rules = (Neighborhood, PaddedNeighborhood)
    if type(pattern) in rules:
        rule, tile = pattern, pattern.grid
    elif (type(pattern) is Permuted and type(pattern.pattern) in rules
          and all(g % t == 0 for g, t in zip(pattern.layout.grid, pattern.layout.tile_shape))):
        rule, tile = pattern.pattern, pattern.layout.tile_shape
    else:
        return None
    if rule.ndim > 3:
        return None
    return _order_params(rule.grid, tile, rule.kernel, rule.dilation, rule.stride, rule.causal,
                         getattr(rule, "extent", rule.grid), block_m, block_n)


def _order_params(grid, tile, kernel, dilation, stride, causal, extent, block_m: int,
                  block_n: int) -> list[int]:
    """``neighborhood_params``' values of a rule over ``grid`` (at most 3 axes) in an order of
    ``tile``-shaped tiles dividing it."""
    pad = 3 - len(grid)

    def axes(values, fill):
        return [fill] * pad + [int(v) for v in values]

    counts = [g // t for g, t in zip(grid, tile)]
    fields = {
        "grid": axes(grid, 1),
        "tile": axes(tile, 1),
        "tiles": axes(counts, 1),
        "kernel": axes(kernel, 1),
        "dilation": axes(dilation, 1),
        "stride": axes(stride, 1),
        "causal": axes(causal, 0),
        "shift": axes((t.bit_length() - 1 for t in tile), 0),
        "extent": axes(extent, 1),
    }
    fields["recip"] = _tile_recips(fields["tiles"], block_m, block_n)
    volume = math.prod(tile)
    shifts = all(t & (t - 1) == 0 for t in tile)
    aligned = [int(shifts and (math.prod(counts) == 1 or volume % block == 0))
               for block in (block_m, block_n)]
    dilated = any(d > 1 for d in dilation)
    return [v for name in NA_FIELD_NAMES for v in fields[name]] + aligned + [int(dilated)]


def _tile_recips(counts: list[int], block_m: int, block_n: int) -> list[int]:
    """``ceil(2 ** RECIP_BITS / c)`` for each tile count ``c``, or all 0 when some tile index the
    kernels may divide (below twice the number of tiles plus a block: positions past the sequence
    included) times a count reaches ``2 ** RECIP_BITS``, where the product would not be exact.
    With quotient ``q = (t * r) >> RECIP_BITS`` for ``r = ceil(2 ** B / c) = 2 ** B / c + e``,
    ``0 <= e < 1``: ``t * r / 2 ** B = t / c + t * e / 2 ** B``, and the floor is ``t // c`` when
    ``t * e / 2 ** B < 1 / c``, which ``t * c < 2 ** B`` ensures."""
    dividends = 2 * math.prod(counts) + max(block_m, block_n)
    if any(dividends * c >= 1 << RECIP_BITS for c in counts):
        return [0] * len(counts)
    return [-(-(1 << RECIP_BITS) // c) for c in counts]


NA_FOLDED_BIT = 1 << 23    # na_mask.NA_FOLDED
NA_BATCH_AXIS_BIT = 1 << 25    # na_mask.NA_BATCH_AXIS


class _PlanParams:
    """Kernel parameters ``(NA, NA_STATIC)`` that a grid-order call derives from each plan
    (``_build``), built once per plan and kept while the plan lives."""

    def params(self, plan: "KernelPlan") -> tuple[torch.Tensor, int]:
        """``(NA, NA_STATIC)`` of ``plan``'s kernels (``_build``, once per plan)."""
        cache = self.__dict__.setdefault("_params", {})
        hit = cache.get(id(plan))
        if hit is None or hit[0] is not plan:
            hit = cache[id(plan)] = (plan, *self._build(plan))
        return hit[1], hit[2]

    def _build(self, plan: "KernelPlan") -> tuple[torch.Tensor, int]:
        raise NotImplementedError


class DilationFold(_PlanParams):
    """A dilated neighborhood run as the undilated neighborhood of one dilation group (the plan's
    pattern, over the sub-grid), for every group at once, on q, k, v, o in the whole grid's
    row-major order (na_mask.NA_FOLDED; ``tessera.natten.dilation_groups``): the kernels' batch
    entries are ``batch * groups + group`` and each group's rows are its sub-grid coordinates
    times the dilations, from the group's first row.

    grid: the whole grid (1-3 axes); dilation: per axis, each dividing its axis."""

    def __init__(self, grid: tuple, dilation: tuple):
        pad = 3 - len(grid)
        self.grid = (1,) * pad + tuple(grid)
        self.dilation = (1,) * pad + tuple(dilation)
        if any(g % d for g, d in zip(self.grid, self.dilation)):
            raise ValueError(f"dilation {dilation} must divide grid {grid}")
        self.groups = math.prod(self.dilation)
        d0, d1, d2 = self.dilation
        _, g1, g2 = self.grid
        self.first_rows = [(r0 * g1 + r1) * g2 + r2 for r0 in range(d0) for r1 in range(d1)
                           for r2 in range(d2)]

    def _build(self, plan: "KernelPlan") -> tuple[torch.Tensor, int]:
        """Under this fold: the plan's neighborhood values, the dilations, the group count and the
        groups' first rows."""
        if not plan.na_values:
            raise ValueError("a dilation fold needs a plan with neighborhood parameters")
        values = list(plan.na_values) + list(self.dilation) + [self.groups] + self.first_rows
        tensor = torch.tensor(values, dtype=torch.int32, device=plan.na_params.device)
        return tensor, plan.na_static | NA_FOLDED_BIT

    def __repr__(self) -> str:
        return f"DilationFold(grid={self.grid}, dilation={self.dilation})"


NA_ROLLED_BIT = 1 << 26    # na_mask.NA_ROLLED


class GridRoll(_PlanParams):
    """A grid-order call on tensors that hold the grid rolled by ``-shift`` per axis (Swin's
    ``torch.roll``; ``patterns.layout.CyclicShift``) while the plan's positions are a tiled order
    of the pattern's grid: the pattern's coordinate ``c`` is the tensors' ``(c + shift) % grid``
    (na_mask.NA_ROLLED). Tiles that wrap are no boxes of the tensors, so such calls read and
    write by pointers (no bulk copies).

    grid: 1-3 axes; shift: per axis, in ``[0, grid)``."""

    def __init__(self, grid: tuple, shift: tuple):
        if len(grid) != len(shift) or not 1 <= len(grid) <= 3:
            raise ValueError(f"shift {shift} must give one value per axis of grid {grid} (1-3 axes)")
        if any(not 0 <= s < g for g, s in zip(grid, shift)):
            raise ValueError(f"shift {shift} must lie in [0, grid) per axis, grid {grid}")
        pad = 3 - len(grid)
        self.grid = (1,) * pad + tuple(grid)
        self.shift = (0,) * pad + tuple(shift)

    def _build(self, plan: "KernelPlan") -> tuple[torch.Tensor, int]:
        """Under this roll: the plan's grid-order values with the shifts in the roll slots."""
        if not plan.na_values or tuple(plan.na_values[0:3]) != self.grid:
            raise ValueError(f"a grid roll over {self.grid} needs a plan addressing that grid")
        values = list(plan.na_values) + list(self.shift)
        tensor = torch.tensor(values, dtype=torch.int32, device=plan.na_params.device)
        return tensor, plan.na_static | NA_ROLLED_BIT

    def __eq__(self, other) -> bool:
        return isinstance(other, GridRoll) and (self.grid, self.shift) == (other.grid, other.shift)

    def __hash__(self) -> int:
        return hash((self.grid, self.shift))

    def __repr__(self) -> str:
        return f"GridRoll(grid={self.grid}, shift={self.shift})"


NA_ROW_MAP_BIT = 1 << 27    # na_mask.NA_ROW_MAP
# Rows of the map past the last position (zeros): kernel tiles of up to this many rows starting
# at any position of the order read inside it.
ROW_MAP_PAD = 256


class GridRows(_PlanParams):
    """A grid-order call whose tiled positions the kernels find through a row map: position ``p``
    of the plan's order lives at row ``rows[p]`` of the tensors (na_mask.NA_ROW_MAP), for token
    orders the plan's fields do not address cheaply: tiles of no power-of-two extents (whose
    coordinates take integer divisions per row), on the grid or rolled. Read and written by
    pointers (no bulk copies).

    rows: int ``[S]``, a permutation of ``range(S)`` (a ``TokenOrder.positions()``); key: its
    identity for hashing and comparing (the order's repr)."""

    def __init__(self, rows: torch.Tensor, key: str):
        if rows.dim() != 1 or rows.numel() == 0:
            raise ValueError(f"rows must be a non-empty 1-D tensor, got shape {tuple(rows.shape)}")
        self.size, self.key = rows.numel(), key
        self._rows = torch.cat([rows.to(torch.int32).cpu(), torch.zeros(ROW_MAP_PAD, dtype=torch.int32)])

    def _build(self, plan: "KernelPlan") -> tuple[torch.Tensor, int]:
        """The plan's grid-order values (or zeros), then the row map at NA_ROWS."""
        if plan.q_len != self.size or plan.k_len != self.size:
            raise ValueError(f"a row map of {self.size} rows needs a plan over {self.size} tokens, "
                             f"got {plan.q_len} and {plan.k_len}")
        fields = torch.tensor(plan.na_values or [0] * (3 * len(NA_FIELD_NAMES) + 3), dtype=torch.int32)
        return torch.cat([fields, self._rows]).to(plan.na_params.device), plan.na_static | NA_ROW_MAP_BIT

    def __eq__(self, other) -> bool:
        return isinstance(other, GridRows) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"GridRows({self.key})"


def neighborhood_switches(params: list[int], exact: bool = False) -> int:
    """The kernels' constexpr ``NA_STATIC`` of ``neighborhood_params`` values (na_mask.py): the two
    aligned flags (bits 0 and 1), bit 2 when some dilation, bit 3 when some stride exceeds 1, bit 4
    when some axis is causal, plus 32 times the number of grid axes (leading axes of extent 1
    that pad a 1-D or 2-D grid do not count), plus, when every order-tile extent is a power of
    two, their log2 in 5-bit fields from bit 7 (axis 2, then 1, then 0), plus bit 22 when
    ``exact``: every query and key tile of the plan lies inside the sequence (the block sizes
    divide the lengths), so the mask needs no bounds compare, plus bit 24 (``NA_RECIP_BIT``) when
    the ``recip`` field holds reciprocals (tile indices divide by products), plus bit 28
    (``NA_PADDED_BIT``) when the ``extent`` is smaller than the grid on some axis."""
    field = {name: params[3 * i:3 * i + 3] for i, name in enumerate(NA_FIELD_NAMES)}
    aligned_q, aligned_k, dilated = params[3 * len(NA_FIELD_NAMES):]
    axes = 3
    while axes > 1 and field["grid"][3 - axes] == 1 and field["tile"][3 - axes] == 1:
        axes -= 1
    shifts = 0
    if all(t & (t - 1) == 0 for t in field["tile"]):
        shifts = sum(sh << (7 + 5 * (2 - axis)) for axis, sh in enumerate(field["shift"]))
    return (aligned_q | aligned_k << 1 | dilated << 2 | any(s > 1 for s in field["stride"]) << 3
            | any(c != 0 for c in field["causal"]) << 4 | axes << 5 | shifts | int(exact) << 22
            | (NA_RECIP_BIT if all(field["recip"]) else 0)
            | (NA_PADDED_BIT if field["extent"] != field["grid"] else 0))


def _pack_bits(allowed: torch.Tensor) -> torch.Tensor:
    """bool ``[P, bm, bn]`` -> int32 ``[P, bm, bn // 32]`` (bit ``c % 32`` of word ``c // 32``)."""
    p, bm, bn = allowed.shape
    weights = torch.ones(32, dtype=torch.int64, device=allowed.device) << torch.arange(32, device=allowed.device)
    words = (allowed.view(p, bm, bn // 32, 32).to(torch.int64) * weights).sum(-1)
    words = torch.where(words >= (1 << 31), words - (1 << 32), words)
    return words.to(torch.int32)


def _bitmasks(pattern: Pattern, states: torch.Tensor, q_len: int, k_len: int, block_m: int,
              block_n: int) -> tuple[torch.Tensor, Optional[tuple[int, int]]]:
    """Packed masks of the partial tiles of ``states``, in row-major (head, m, n) order, and the
    offset band every partial tile's mask follows (``_common_band``; None when there is none)."""
    device = states.device
    hh, mm, nn = (states == PARTIAL).nonzero(as_tuple=True)
    total = hh.numel()
    out = torch.zeros(max(total, 1), block_m, block_n // 32, dtype=torch.int32, device=device)
    rows = torch.arange(block_m, device=device)
    cols = torch.arange(block_n, device=device)
    offset = k_len - q_len
    step = max(1, _BITMASK_CHUNK // (block_m * block_n))
    spans = []
    for s in range(0, total, step):
        h, m, n = hh[s:s + step], mm[s:s + step], nn[s:s + step]
        q_row = m[:, None] * block_m + rows                           # [P, bm]
        k_pos = n[:, None] * block_n + cols                           # [P, bn]
        valid = (q_row < q_len)[:, :, None] & (k_pos < k_len)[:, None, :]
        allowed = pattern.mask((q_row + offset)[:, :, None], k_pos[:, None, :], h[:, None, None])
        allowed = allowed.expand_as(valid) & valid
        out[s:s + step] = _pack_bits(allowed)
        spans.append(_tile_offset_spans((q_row + offset)[:, :, None] - k_pos[:, None, :], valid,
                                        allowed))
    if not spans:
        return out, None
    lo_t, hi_t, a_t, b_t, banded = (torch.cat(parts) for parts in zip(*spans))
    return out, (_common_band(lo_t, hi_t, a_t, b_t) if bool(banded.all()) else None)


def _tile_offset_spans(d: torch.Tensor, valid: torch.Tensor, allowed: torch.Tensor):
    """Per tile of ``[P, bm, bn]`` offsets ``d = q_pos - k_pos``: the allowed offsets' range
    ``(lo_t, hi_t)``, the valid offsets' range ``(a_t, b_t)``, and whether the allowed pairs are
    exactly the valid pairs with ``lo_t <= d <= hi_t``."""
    big = BAND_LIMIT
    flat_d, flat_v, flat_a = d.flatten(1), valid.flatten(1), allowed.flatten(1)
    lo_t = torch.where(flat_a, flat_d, big).amin(1)
    hi_t = torch.where(flat_a, flat_d, -big).amax(1)
    a_t = torch.where(flat_v, flat_d, big).amin(1)
    b_t = torch.where(flat_v, flat_d, -big).amax(1)
    in_band = flat_v & (flat_d >= lo_t[:, None]) & (flat_d <= hi_t[:, None])
    return lo_t, hi_t, a_t, b_t, (in_band == flat_a).all(1)


def _common_band(lo_t: torch.Tensor, hi_t: torch.Tensor, a_t: torch.Tensor,
                 b_t: torch.Tensor) -> Optional[tuple[int, int]]:
    """The one offset band ``(lo, hi)`` that masks every partial tile, given per tile the band it
    allows ``[lo_t, hi_t]`` within its range of offsets ``[a_t, b_t]`` (None when no band fits).

    Tile ``t`` under ``(lo, hi)`` allows ``[max(lo, a_t), min(hi, b_t)]``: a tile whose band starts
    inside its range (``lo_t > a_t``) fixes ``lo = lo_t``, one whose band starts at the range's
    start only needs ``lo <= a_t``; the same for ``hi``. Causal masks on the diagonal tiles of a
    block pattern (S2 ``Strided``, causal block-sparse) give ``(0, BAND_LIMIT)``."""
    ends = []
    for inner, edge, fixed_at, bound in ((lo_t, a_t, lo_t > a_t, -BAND_LIMIT),
                                         (-hi_t, -b_t, hi_t < b_t, -BAND_LIMIT)):
        fixed = inner[fixed_at]
        if fixed.numel() == 0:
            ends.append(bound)
            continue
        end = int(fixed[0].item())
        free_edges = edge[~fixed_at]
        if bool((fixed != end).any()) or (free_edges.numel() and end > int(free_edges.min().item())):
            return None
        ends.append(end)
    return ends[0], -ends[1]


def build_plan(pattern: Optional[Pattern], q_len: int, k_len: int, block_m: int, block_n: int,
               num_heads: int, device: torch.device) -> KernelPlan:
    """A fresh (uncached) plan. ``num_heads`` is the number of query heads; head-independent
    patterns get a one-head plan that every head shares."""
    if block_n % 32:
        raise ValueError(f"block_n must be a multiple of 32, got {block_n}")
    nq, nk = cdiv(q_len, block_m), cdiv(k_len, block_n)
    if pattern is None:
        states = torch.full((1, nq, nk), FULL, dtype=torch.int8, device=device)
    else:
        heads = num_heads if pattern.head_dependent else 1
        states = pattern.tile_states(q_len, k_len, block_m, block_n, heads, device).to(torch.int8)
    states = states.clone()
    if q_len % block_m:
        last = states[:, -1, :]
        last[last == FULL] = PARTIAL
    if k_len % block_n:
        last = states[:, :, -1]
        last[last == FULL] = PARTIAL
    part = states == PARTIAL
    part_id = (part.flatten().cumsum(0) - 1).view(states.shape).to(torch.int32)
    band = offset_band(pattern)
    bits = torch.zeros(1, dtype=torch.int32, device=device)
    tile_band = torch.zeros(1, 1, 2, dtype=torch.int32, device=device)
    na_params = torch.zeros(1, dtype=torch.int32, device=device)
    na_static = 0
    neighborhood = neighborhood_params(pattern, block_m, block_n)
    if pattern is None or isinstance(pattern, Dense) or not bool(part.any()):
        mode, band = MASK_NONE, (-BAND_LIMIT, BAND_LIMIT)
    elif band is not None:
        mode = MASK_BAND
    elif neighborhood is not None and ANALYTIC_NEIGHBORHOOD:
        mode, band = MASK_NEIGHBORHOOD, (-BAND_LIMIT, BAND_LIMIT)
    else:
        mode, band = MASK_BITS, (-BAND_LIMIT, BAND_LIMIT)
        intervals = _offset_intervals(pattern)
        bands = None if intervals is None else _tile_bands(intervals, states, q_len, k_len,
                                                             block_m, block_n)
        if bands is not None:
            mode, tile_band = MASK_TILE_BAND, bands
        else:
            bits, common = _bitmasks(pattern, states, q_len, k_len, block_m, block_n)
            if common is not None:
                mode, band, bits = MASK_BAND, common, torch.zeros(1, dtype=torch.int32, device=device)
    na_values = ()
    addressing = neighborhood if neighborhood is not None else grid_order_params(pattern, block_m, block_n)
    if addressing is not None:
        # Whatever the mask kind, and also without partial tiles (blocked neighborhoods): the
        # grid-order addressing reads them.
        na_values = tuple(addressing)
        na_params = torch.tensor(addressing, dtype=torch.int32, device=device)
        na_static = neighborhood_switches(addressing, q_len % block_m == 0 and k_len % block_n == 0)
    return KernelPlan(q_len, k_len, block_m, block_n, states.shape[0], mode, band[0], band[1],
                      _lists(states, part_id), bits, tile_band, tile_band.shape[1], na_params,
                      na_static, states, part_id, na_values=na_values)


def pattern_key(pattern: Optional[Pattern]):
    """Cache identity of a pattern: its repr when nothing in it is a tensor (built-in rules are
    fully described by their repr), else the object itself. Computing it walks the pattern's
    fields: a kernel call computes it once and passes it to ``get_plan`` and ``offset_band``."""
    if pattern is None:
        return None
    if type(pattern).__repr__ is object.__repr__ or _holds_tensor(pattern, depth=0):
        return ("object", id(pattern))
    return ("repr", type(pattern).__qualname__, repr(pattern))


def _holds_tensor(obj, depth: int) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if depth > 4:
        return True
    if isinstance(obj, (list, tuple)):
        return any(_holds_tensor(x, depth + 1) for x in obj)
    if isinstance(obj, dict):
        return any(_holds_tensor(x, depth + 1) for x in obj.values())
    if isinstance(obj, Pattern):
        return any(_holds_tensor(x, depth + 1) for x in vars(obj).values())
    return False


_PLANS: "OrderedDict[tuple, tuple[object, KernelPlan]]" = OrderedDict()


def get_plan(pattern: Optional[Pattern], q_len: int, k_len: int, block_m: int, block_n: int,
             num_heads: int, device: torch.device, key=None) -> KernelPlan:
    """The cached plan (see ``build_plan``); repeated calls with the same problem cost a dict lookup.
    ``key``: the pattern's ``pattern_key``, when the caller has it."""
    heads = num_heads if (pattern is not None and pattern.head_dependent) else 1
    key = (pattern_key(pattern) if key is None else key, q_len, k_len, block_m, block_n, heads,
           str(device))
    hit = _PLANS.get(key)
    if hit is not None:
        _PLANS.move_to_end(key)
        return hit[1]
    plan = build_plan(pattern, q_len, k_len, block_m, block_n, num_heads, device)
    # The pattern is kept alive with its plan so that an id-based key cannot be reused.
    _PLANS[key] = (pattern, plan)
    while len(_PLANS) > PLAN_CACHE_SIZE:
        _PLANS.popitem(last=False)
    return plan


def clear_plan_cache() -> None:
    _PLANS.clear()
