"""Token grids: patterns over N-D grids of tokens, and token permutations that make their tiles dense.

A grid ``(G_0, ..., G_{n-1})`` of tokens is flattened in row-major order: token ``t`` has
coordinates ``c`` with ``t = sum_a c_a * B_a``, ``B_a = G_{a+1} * ... * G_{n-1}``. A contiguous range
of flattened positions is a union of at most ``2n - 1`` axis-aligned boxes (a partial last-axis
line, whole lines, whole planes, ..., and the mirror image at its end); ``row_major_boxes`` lists
them. ``GridPattern`` classifies position rectangles exactly by splitting both ranges into boxes
and classifying box pairs axis by axis.

``GridLayout`` reorders the tokens tile by tile (tiles of a per-axis ``tile_shape``, tiles and the
tokens inside each tile in row-major order), so that a run of ``prod(tile_shape)`` consecutive
tokens is one compact box; ``Permuted(pattern, layout)`` is the same attention on the reordered
sequence, with exact tile classification when the pattern is a ``GridPattern``.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence

import torch

from .base import UNKNOWN, Pattern, unique_columns
from .tilemap import EMPTY, FULL, PARTIAL, cdiv
from .token_copies import as_wide_rows, from_wide_rows

def as_axes(name: str, value, ndim: int, minimum: int = 1) -> tuple[int, ...]:
    """``value`` (an int, or a sequence of ``ndim`` ints) as a tuple of ``ndim`` ints ``>= minimum``;
    errors name the argument and the axis."""
    if isinstance(value, bool) or not isinstance(value, (int, Sequence)) or isinstance(value, str):
        raise TypeError(f"{name} must be an int or a tuple of {ndim} ints, got "
                        f"{type(value).__name__} ({value!r})")
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim:
        raise ValueError(f"{name} must be an int or a tuple of {ndim} ints (one per grid axis), "
                         f"got {len(values)} values ({value!r})")
    for axis, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name}[{axis}] must be an int, got {type(v).__name__} ({v!r})")
        if v < minimum:
            raise ValueError(f"{name}[{axis}] must be >= {minimum}, got {v}")
    return values


def as_flags(name: str, value, ndim: int) -> tuple[bool, ...]:
    """``value`` (a bool, or a sequence of ``ndim`` bools) as a tuple of ``ndim`` bools."""
    if isinstance(value, bool):
        return (value,) * ndim
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name} must be a bool or a tuple of {ndim} bools, got "
                        f"{type(value).__name__} ({value!r})")
    values = tuple(value)
    if len(values) != ndim:
        raise ValueError(f"{name} must be a bool or a tuple of {ndim} bools (one per grid axis), "
                         f"got {len(values)} values ({value!r})")
    for axis, v in enumerate(values):
        if not isinstance(v, bool):
            raise TypeError(f"{name}[{axis}] must be a bool, got {type(v).__name__} ({v!r})")
    return values


def as_grid(grid) -> tuple[int, ...]:
    """Validated grid shape: a positive int (1-D) or a non-empty tuple of positive ints."""
    if isinstance(grid, int) and not isinstance(grid, bool):
        grid = (grid,)
    if not isinstance(grid, Sequence) or isinstance(grid, str) or len(grid) == 0:
        raise TypeError(f"grid must be an int or a non-empty tuple of ints, got "
                        f"{type(grid).__name__} ({grid!r})")
    return as_axes("grid", tuple(grid), len(grid))


def axis_blocks(shape: Sequence) -> list:
    """Row-major block sizes ``B_a = shape[a+1] * ... * shape[n-1]`` (ints or tensors)."""
    blocks = [1] * len(shape)
    for a in range(len(shape) - 2, -1, -1):
        blocks[a] = blocks[a + 1] * shape[a + 1]
    return blocks


def to_coords(pos: torch.Tensor, shape: Sequence) -> list[torch.Tensor]:
    """Row-major coordinates of flattened positions ``pos`` in a grid of ``shape``."""
    blocks = axis_blocks(shape)
    return [(pos // blocks[a]) % shape[a] if a else pos // blocks[a] for a in range(len(shape))]


def row_major_boxes(lo: torch.Tensor, hi: torch.Tensor, shape: Sequence):
    """Split the flattened ranges ``[lo, hi]`` (inclusive, ``0 <= lo <= hi < prod(shape)``,
    broadcasting int64 tensors) of a row-major grid into at most ``2n - 1`` boxes.

    ``shape`` holds ints or int64 tensors that broadcast with ``lo`` (a different grid per element).
    Returns a list of ``(valid, box_lo, box_hi)``: ``valid`` bool, ``box_lo`` / ``box_hi`` lists of
    per-axis inclusive coordinate bounds. The valid boxes are disjoint and cover the range exactly.
    """
    n = len(shape)
    blocks = axis_blocks(shape)
    pos, end = lo, hi + 1
    boxes = []

    def box(start, count_axis, count, valid):
        # Cells [start, start + count * B_axis): axes before ``count_axis`` fixed at start's
        # coordinates, ``count`` steps along it, later axes whole.
        # Invalid boxes become the single cell at the origin, so that every bound stays in the grid.
        c = to_coords(torch.where(valid, start, torch.zeros_like(start)), shape)
        b_lo, b_hi = [], []
        for a in range(n):
            if a < count_axis:
                low, high = c[a], c[a]
            elif a == count_axis:
                low, high = c[a], c[a] + count - 1
            else:
                low, high = torch.zeros_like(c[a]), torch.zeros_like(c[a]) + shape[a] - 1
            b_lo.append(torch.where(valid, low, 0))
            b_hi.append(torch.where(valid, high, 0))
        return valid, b_lo, b_hi

    # Climb: complete the partial line, plane, ... that ``lo`` starts inside.
    for a in range(n - 1, 0, -1):
        outer = blocks[a - 1]
        boundary = -(-pos // outer) * outer
        valid = (pos < boundary) & (boundary <= end)
        boxes.append(box(pos, a, (boundary - pos) // blocks[a], valid))
        pos = torch.where(valid, boundary, pos)
    # Whole slabs along axis 0.
    top = end // blocks[0] * blocks[0]
    valid = pos < top
    boxes.append(box(pos, 0, (top - pos) // blocks[0], valid))
    pos = torch.where(valid, top, pos)
    # Descend: the partial plane, line, ... that ``hi`` ends inside.
    for a in range(1, n):
        top = end // blocks[a] * blocks[a]
        valid = pos < top
        boxes.append(box(pos, a, (top - pos) // blocks[a], valid))
        pos = torch.where(valid, top, pos)
    return boxes


def _combine_box_pairs(q_boxes, k_boxes, box_states):
    """(full, hit) over the union of box pairs: full iff every valid pair is full, hit iff any is."""
    q_boxes = [b for b in q_boxes if bool(b[0].any())] or q_boxes[:1]
    k_boxes = [b for b in k_boxes if bool(b[0].any())] or k_boxes[:1]
    full, hit = None, None
    for qv, q_lo, q_hi in q_boxes:
        for kv, k_lo, k_hi in k_boxes:
            both = qv & kv
            f, h = box_states(q_lo, q_hi, k_lo, k_hi)
            f = f | ~both
            h = h & both
            full = f if full is None else full & f
            hit = h if hit is None else hit | h
    return full, hit


def _states(full: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    return torch.where(full & hit, FULL, torch.where(hit, PARTIAL, EMPTY)).to(torch.int8)


def _enumerate_box(lo: list, hi: list, limit: int):
    """Cells of per-element boxes ``[lo, hi]`` (lists of per-axis tensors) as coordinate lists with
    a new last dim of size ``M`` (the largest cell count), and a validity mask; None when ``M``
    exceeds ``limit``."""
    extents = [(h - l + 1).clamp(min=0) for l, h in zip(lo, hi)]
    count = extents[0]
    for e in extents[1:]:
        count = count * e
    m = int(count.max().item()) if count.numel() else 0
    if m > limit:
        return None
    m = max(m, 1)
    index = torch.arange(m, device=lo[0].device)
    valid = index < count[..., None]
    coords, rest = [], index
    for a in range(len(lo) - 1, -1, -1):
        e = extents[a][..., None].clamp(min=1)
        coords.append(lo[a][..., None] + rest % e)
        rest = rest // e
    return coords[::-1], valid


def _runs(start: torch.Tensor, stop: torch.Tensor, valid: torch.Tensor, block_n: int, nk: int,
          limit: int):
    """Key tiles covering the position runs ``[start, stop)`` (flattened into the last dim), or None
    when more than ``limit`` per query tile."""
    first = start // block_n
    last = (stop - 1) // block_n
    width = int(torch.where(valid, last - first + 1, 0).max().item()) if valid.numel() else 0
    width = max(width, 1)
    if width * valid.shape[-1] > limit:
        return None
    tiles = first[..., None] + torch.arange(width, device=start.device)
    keep = valid[..., None] & (tiles <= last[..., None])
    return torch.where(keep, tiles, nk).flatten(-2)


class GridPattern(Pattern):
    """A pattern over a row-major flattened N-D token grid (``S_q == S_k == prod(grid)``).

    Subclasses define the rule on coordinates (``allowed``) and, for exact tile maps, the states
    of box pairs (``box_states``, by default the conjunction of ``axis_states`` over the axes,
    right for rules that are a conjunction of per-axis conditions) and a superset of the keys of
    a query box (``key_boxes``, by default from ``axis_key_range``).
    """

    grid: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.grid)

    @property
    def size(self) -> int:
        return math.prod(self.grid)

    # ---- the rule on coordinates --------------------------------------------------------------
    def allowed(self, q: list, k: list, head: torch.Tensor) -> torch.Tensor:
        """Bool: may the query at coordinates ``q`` see the key at ``k`` (lists of per-axis int64
        tensors, broadcasting with ``head``)."""
        raise NotImplementedError

    def axis_states(self, axis: int, x0, x1, y0, y1, head):
        """(full, hit) bool tensors for query coordinates ``[x0, x1]`` and key coordinates
        ``[y0, y1]`` on one axis (non-empty intervals)."""
        raise NotImplementedError

    def box_states(self, q_lo: list, q_hi: list, k_lo: list, k_hi: list, head):
        """(full, hit) for a query box and a key box (lists of per-axis inclusive bounds)."""
        full, hit = None, None
        for a in range(self.ndim):
            f, h = self.axis_states(a, q_lo[a], q_hi[a], k_lo[a], k_hi[a], head)
            full = f if full is None else full & f
            hit = h if hit is None else hit & h
        return full, hit

    def axis_key_range(self, axis: int, x0, x1, head):
        """Inclusive key coordinate bounds on ``axis`` holding every key some query of
        ``[x0, x1]`` may see (a superset); by default the whole axis."""
        return torch.zeros_like(x0), torch.zeros_like(x1) + self.grid[axis] - 1

    def key_boxes(self, q_lo: list, q_hi: list, head) -> list:
        """Boxes ``(lo, hi)`` whose union holds every key the query box may see (a superset)."""
        lo, hi = [], []
        for a in range(self.ndim):
            y0, y1 = self.axis_key_range(a, q_lo[a], q_hi[a], head)
            lo.append(y0)
            hi.append(y1)
        return [(lo, hi)]

    def window_tiles(self) -> tuple[tuple[int, ...], ...]:
        """Tile shapes that line up with this rule's key sets (its windows or blocks), for tiled
        orders to try besides those of one kernel tile's tokens; none by default."""
        return ()

    def rolled(self) -> Optional[tuple["CyclicShift", "GridPattern"]]:
        """``(order, pattern)``: a ``CyclicShift`` of the grid and this rule over the rolled grid
        (query ``p`` sees key ``r`` of ``pattern`` iff this rule lets ``order.positions()[p]``
        see ``order.positions()[r]``), where rolling makes the rule line up with tiles from the
        origin (Swin's shifted windows); None for rules that gain nothing from it."""
        return None

    # ---- Pattern interface ----------------------------------------------------------------------
    def check_lengths(self, q_len: int, k_len: int, num_heads: int) -> None:
        if q_len != self.size or k_len != self.size:
            raise ValueError(f"q_len and k_len must both equal prod(grid) = {self.size} for a pattern "
                             f"over grid {self.grid}, got q_len={q_len}, k_len={k_len}")

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        inside = (q_pos >= 0) & (q_pos < self.size) & (k_pos >= 0) & (k_pos < self.size)
        q = to_coords(q_pos.clamp(0, self.size - 1), self.grid)
        k = to_coords(k_pos.clamp(0, self.size - 1), self.grid)
        return (self.allowed(q, k, head) & inside).expand(shape)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        return classify_ranges(self, lambda lo, hi: row_major_boxes(lo, hi, self.grid),
                               q_lo, q_hi, k_lo, k_hi, head).expand(shape)

    def key_tile_candidates(self, q_lo, q_hi, k_len, block_n, heads=1):
        return grid_candidates(self, lambda lo, hi: row_major_boxes(lo, hi, self.grid),
                               _row_major_runs(self.grid), q_lo, q_hi, k_len, block_n, heads)


def classify_ranges(pattern: GridPattern, boxes_of, q_lo, q_hi, k_lo, k_hi, head) -> torch.Tensor:
    """Exact int8 states of position rectangles for a grid pattern whose positions split into boxes
    by ``boxes_of(lo, hi)``. Positions outside ``[0, size)`` are never allowed."""
    size = pattern.size
    outside = (q_lo < 0) | (q_hi >= size) | (k_lo < 0) | (k_hi >= size)
    q_a, q_b = q_lo.clamp(0, size - 1), q_hi.clamp(0, size - 1)
    k_a, k_b = k_lo.clamp(0, size - 1), k_hi.clamp(0, size - 1)
    empty = (q_lo > q_b) | (q_hi < q_a) | (k_lo > k_b) | (k_hi < k_a)
    q_a, q_b = torch.broadcast_tensors(q_a, q_b)
    k_a, k_b = torch.broadcast_tensors(k_a, k_b)
    full, hit = _combine_box_pairs(boxes_of(q_a, q_b), boxes_of(k_a, k_b),
                                   lambda ql, qh, kl, kh: pattern.box_states(ql, qh, kl, kh, head))
    return _states(full & ~outside, hit & ~empty)


def _row_major_runs(grid):
    """Maps a key box to position runs in row-major order: one run per last-axis line."""
    blocks = axis_blocks(grid)

    def runs(lo, hi, limit):
        if len(grid) == 1:
            return lo[0][..., None], hi[0][..., None] + 1, torch.ones_like(lo[0][..., None], dtype=torch.bool)
        cells = _enumerate_box(lo[:-1], hi[:-1], limit)
        if cells is None:
            return None
        coords, valid = cells
        base = sum(c * blocks[a] for a, c in enumerate(coords))
        return base + lo[-1][..., None], base + hi[-1][..., None] + 1, valid
    return runs


def grid_candidates(pattern: GridPattern, boxes_of, runs_of, q_lo, q_hi, k_len: int, block_n: int,
                    heads: int):
    """Candidate key tiles ``[n_q_tiles, W]`` (or ``[heads, n_q_tiles, W]``) of a grid pattern:
    the tiles holding the position runs (``runs_of``) of the key boxes of each query box. None
    ("every key tile") when listing them would take more entries than there are key tiles."""
    nk = cdiv(k_len, block_n)
    limit = nk
    device = q_lo.device
    head = torch.arange(heads if pattern.head_dependent else 1, device=device).view(-1, 1)
    q_a, q_b = q_lo.clamp(0, pattern.size - 1), q_hi.clamp(0, pattern.size - 1)
    q_a, q_b = torch.broadcast_tensors(q_a.view(1, -1), q_b.view(1, -1))
    pieces = []
    for qv, b_lo, b_hi in boxes_of(q_a, q_b):
        if not bool(qv.any()):
            continue
        for k_lo, k_hi in pattern.key_boxes(b_lo, b_hi, head):
            target = torch.broadcast_shapes(qv.shape, head.shape, *(x.shape for x in k_lo + k_hi))
            k_lo = [torch.broadcast_to(x, target) for x in k_lo]
            k_hi = [torch.broadcast_to(x, target) for x in k_hi]
            runs = runs_of(k_lo, k_hi, limit)
            if runs is None:
                return None
            start, stop, valid = runs
            valid = valid & qv.expand(k_lo[0].shape)[..., None] & (stop > start)
            tiles = _runs(start, stop, valid, block_n, nk, limit)
            if tiles is None:
                return None
            pieces.append(tiles)
    width = sum(p.shape[-1] for p in pieces)
    if width > limit * 4:
        return None
    lead = torch.broadcast_shapes(*(p.shape[:-1] for p in pieces))
    columns = torch.cat([p.expand(*lead, p.shape[-1]) for p in pieces], dim=-1)
    columns = unique_columns(columns, nk)
    if columns is None:
        return None
    return columns if pattern.head_dependent else columns[0]


class _Reorder(torch.autograd.Function):
    """``x.index_select(dim, order)`` for a permutation ``order`` whose inverse is ``inverse``: the
    backward gathers the gradient by ``inverse`` (index_select's own backward scatters with
    atomic adds)."""

    @staticmethod
    def forward(ctx, x, dim, order, inverse):
        ctx.dim, ctx.inverse = dim, inverse
        return _gather_tokens(x, dim, order)

    @staticmethod
    def backward(ctx, grad):
        return _gather_tokens(grad, ctx.dim, ctx.inverse), None, None, None


def _gather_tokens(x: torch.Tensor, dim: int, order: torch.Tensor) -> torch.Tensor:
    """``x.index_select(dim, order)`` for a permutation ``order``, moving token rows whole
    (``as_wide_rows``)."""
    dim = dim % x.dim()
    wide = as_wide_rows(x, dim)
    if wide is None:
        return x.index_select(dim, order)
    return from_wide_rows(wide.index_select(dim, order), x.dtype, x.shape)


def _reorder(x: torch.Tensor, dim: int, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """``x.index_select(dim, order)``, through ``_Reorder`` only when a gradient is recorded."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Reorder.apply(x, dim, order, inverse)
    return _gather_tokens(x, dim, order)


class TokenOrder:
    """A permutation of the tokens of an N-D grid (``grid``), set by ``_set_positions``:
    ``positions()[p]`` is the row-major grid position of the ``p``-th token of the order;
    ``permute(x, dim)`` gathers a row-major token axis into the order, ``unpermute`` undoes it.
    Index tensors are copied to a device once and kept (``_on``)."""

    grid: tuple

    def _set_positions(self, positions: torch.Tensor, ordered: Optional[torch.Tensor] = None) -> None:
        """Set the order from ``positions`` and, when the caller has it, its inverse ``ordered``
        (the place in the order of each row-major token; derived when None)."""
        self._positions = positions
        if ordered is None:
            ordered = torch.empty_like(positions)
            ordered[positions] = torch.arange(positions.numel())
        self._ordered = ordered
        self._identity = bool(torch.equal(positions, torch.arange(positions.numel())))
        self._cache: dict = {}

    @property
    def size(self) -> int:
        return math.prod(self.grid)

    def _on(self, name: str, device) -> torch.Tensor:
        tensor = getattr(self, name)
        if tensor.device == torch.device(device):
            return tensor
        key = (name, str(device))
        if key in self._cache:
            return self._cache[key]
        moved = tensor.to(device)
        if not torch.compiler.is_compiling():          # no side effects while traced (FlexAttention)
            self._cache[key] = moved
        return moved

    def positions(self, device="cpu") -> torch.Tensor:
        """int64 ``[prod(grid)]``: row-major grid position of each token of the order."""
        return self._on("_positions", device)

    def _check_dim(self, x: torch.Tensor, dim: int) -> int:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
            raise ValueError(f"dim must be an int in [{-x.dim()}, {x.dim()}), got {dim!r}")
        if x.shape[dim] != self.size:
            raise ValueError(f"x.shape[{dim}] must be prod(grid) = {self.size}, got {x.shape[dim]}")
        return dim

    @property
    def is_identity(self) -> bool:
        """Whether the order is the row-major order: permuting is then a no-op."""
        return self._identity

    def permute(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """``x`` with its row-major token axis ``dim`` put in this order (``x`` itself when the
        order is the identity). Its gradient is the inverse gather, not a scatter."""
        dim = self._check_dim(x, dim)
        if self.is_identity:
            return x
        return _reorder(x, dim, self._on("_positions", x.device), self._on("_ordered", x.device))

    def unpermute(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """``x`` with its token axis ``dim`` put back from this order into row-major order (the
        inverse of ``permute``)."""
        dim = self._check_dim(x, dim)
        if self.is_identity:
            return x
        return _reorder(x, dim, self._on("_ordered", x.device), self._on("_positions", x.device))


class GridLayout(TokenOrder):
    """A token order of an N-D grid by tiles: tiles of ``tile_shape`` (clipped at the grid's far
    edges) in row-major order over the tile grid, and the tokens of each tile in row-major order.

    ``positions()[p]`` is the row-major position in the grid of the ``p``-th token of the tiled
    order; ``permute(x, dim)`` reorders a row-major sequence into tiled order along ``dim``
    (a gather by a precomputed index), ``unpermute`` undoes it. With ``tile_shape`` dividing the
    grid, every run of ``prod(tile_shape)`` tokens starting at a multiple of it is one tile.
    """

    def __init__(self, grid, tile_shape):
        self.grid = as_grid(grid)
        self.tile_shape = as_axes("tile_shape", tile_shape, len(self.grid))
        for a, (t, g) in enumerate(zip(self.tile_shape, self.grid)):
            if t > g:
                raise ValueError(f"tile_shape[{a}] must be <= grid[{a}] = {g}, got {t}")
        self.tiles = tuple(cdiv(g, t) for g, t in zip(self.grid, self.tile_shape))
        # Per tile (row-major over the tile grid): extents and first position in tiled order.
        index = torch.arange(math.prod(self.tiles))
        tile_coords = to_coords(index, self.tiles)
        extents = [torch.clamp(g - c * t, max=t) for c, g, t in zip(tile_coords, self.grid, self.tile_shape)]
        volume = math.prod(extents) if len(extents) > 1 else extents[0]
        self._tile_start = torch.cumsum(volume, 0) - volume
        self._tile_volume = volume
        # Tiled position of every row-major token.
        coords = to_coords(torch.arange(math.prod(self.grid)), self.grid)
        tile = sum(c // t * b for c, t, b in zip(coords, self.tile_shape, axis_blocks(self.tiles)))
        inner_shape = [e[tile] for e in extents]
        inner = sum(c % t * b for c, t, b in zip(coords, self.tile_shape, axis_blocks(inner_shape)))
        tiled = self._tile_start[tile] + inner                        # row-major -> tiled
        positions = torch.empty_like(tiled)
        positions[tiled] = torch.arange(tiled.numel())
        self._set_positions(positions, tiled)

    @property
    def tokens_per_tile(self) -> int:
        return math.prod(self.tile_shape)

    def tiled_positions(self, device="cpu") -> torch.Tensor:
        """int64 ``[prod(grid)]``: tiled position of each row-major token (inverse of
        ``positions``)."""
        return self._on("_ordered", device)

    def boxes(self, lo: torch.Tensor, hi: torch.Tensor):
        """Split tiled-order ranges ``[lo, hi]`` into grid boxes (as ``row_major_boxes``): the part
        inside the first tile, whole tiles (boxes of the tile grid), and the part inside the last."""
        starts = self._on("_tile_start", lo.device)
        volume = self._on("_tile_volume", lo.device)
        ta = torch.searchsorted(starts, lo.contiguous(), right=True) - 1
        tb = torch.searchsorted(starts, hi.contiguous(), right=True) - 1
        same = ta == tb
        out = []
        for tile, r_lo, r_hi, valid in (
                (ta, lo - starts[ta], torch.where(same, hi - starts[ta], volume[ta] - 1),
                 torch.ones_like(same)),
                (tb, torch.zeros_like(hi), hi - starts[tb], ~same)):
            origin = [c * t for c, t in zip(to_coords(tile, self.tiles), self.tile_shape)]
            extent = [torch.clamp(g - o, max=t) for o, g, t in zip(origin, self.grid, self.tile_shape)]
            r_lo = torch.where(valid, r_lo, 0)
            r_hi = torch.where(valid, r_hi, 0)
            for v, b_lo, b_hi in row_major_boxes(r_lo, r_hi, extent):
                out.append((v & valid, [o + x for o, x in zip(origin, b_lo)],
                            [o + x for o, x in zip(origin, b_hi)]))
        middle = tb - ta >= 2
        m_lo = torch.where(middle, ta + 1, 0)
        m_hi = torch.where(middle, tb - 1, 0)
        for v, b_lo, b_hi in row_major_boxes(m_lo, m_hi, self.tiles):
            out.append((v & middle, [x * t for x, t in zip(b_lo, self.tile_shape)],
                        [torch.clamp((x + 1) * t, max=g) - 1
                         for x, t, g in zip(b_hi, self.tile_shape, self.grid)]))
        return out

    def runs(self, lo: list, hi: list, limit: int):
        """Tiled-order position runs ``(start, stop, valid)`` (last dim: one per tile) covering the
        grid boxes ``[lo, hi]``: the tiles the boxes meet; None when more than ``limit`` tiles."""
        t_lo = [x // t for x, t in zip(lo, self.tile_shape)]
        t_hi = [x // t for x, t in zip(hi, self.tile_shape)]
        cells = _enumerate_box(t_lo, t_hi, limit)
        if cells is None:
            return None
        coords, valid = cells
        tile = sum(c * b for c, b in zip(coords, axis_blocks(self.tiles)))
        tile = torch.where(valid, tile, 0)
        start = self._on("_tile_start", tile.device)[tile]
        return start, start + self._on("_tile_volume", tile.device)[tile], valid

    def __repr__(self) -> str:
        return f"GridLayout(grid={self.grid}, tile_shape={self.tile_shape})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, GridLayout)
                and (self.grid, self.tile_shape) == (other.grid, other.tile_shape))

    def __hash__(self) -> int:
        return hash((self.grid, self.tile_shape))


class DilationGroupOrder(TokenOrder):
    """The token order of an N-D grid split into its dilation groups: the groups (the tokens whose
    coordinates have one remainder modulo ``dilation`` per axis) one after the other, in row-major
    order of their remainders, each group's sub-grid ``grid // dilation`` in the order of
    ``sub_layout`` (a ``GridLayout`` of the sub-grid; None: row-major). Every dilation must divide
    its axis. A ``[B, S, ...]`` tensor in this order viewed as ``[B * prod(dilation), S //
    prod(dilation), ...]`` holds one group per batch entry.
    """

    def __init__(self, grid, dilation, sub_layout: Optional[GridLayout] = None):
        self.grid = as_grid(grid)
        self.dilation = as_axes("dilation", dilation, len(self.grid))
        for a, (g, d) in enumerate(zip(self.grid, self.dilation)):
            if g % d:
                raise ValueError(f"dilation[{a}] must divide grid[{a}] = {g}, got {d}")
        self.sub_grid = tuple(g // d for g, d in zip(self.grid, self.dilation))
        if sub_layout is not None and sub_layout.grid != self.sub_grid:
            raise ValueError(f"sub_layout.grid must be the sub-grid {self.sub_grid}, got {sub_layout.grid}")
        inner = sub_layout.positions() if sub_layout is not None else torch.arange(math.prod(self.sub_grid))
        inner_coords = to_coords(inner, self.sub_grid)
        group_coords = to_coords(torch.arange(self.groups), self.dilation)
        position = sum((r[:, None] + c[None, :] * d) * b
                       for r, c, d, b in zip(group_coords, inner_coords, self.dilation, axis_blocks(self.grid)))
        self._set_positions(position.reshape(-1))

    @property
    def groups(self) -> int:
        return math.prod(self.dilation)

    def __repr__(self) -> str:
        return f"DilationGroupOrder(grid={self.grid}, dilation={self.dilation})"


class CyclicShift(TokenOrder):
    """The tokens of an N-D grid rolled by ``-shift`` per axis, row-major: the ``p``-th token of
    the order has coordinates ``x'`` with original coordinates ``(x' + shift) % grid`` (on a
    ``[B, *grid, ...]`` tensor, ``torch.roll(x, [-s for s in shift], dims)``)."""

    def __init__(self, grid, shift):
        self.grid = as_grid(grid)
        self.shift = as_axes("shift", shift, len(self.grid), minimum=0)
        coords = to_coords(torch.arange(math.prod(self.grid)), self.grid)
        original = [(c + s) % g for c, s, g in zip(coords, self.shift, self.grid)]
        self._set_positions(sum(c * b for c, b in zip(original, axis_blocks(self.grid))))

    def __repr__(self) -> str:
        return f"CyclicShift(grid={self.grid}, shift={self.shift})"


class ChainedOrder(TokenOrder):
    """The order ``first`` puts the grid's tokens in, then reordered by ``then`` (a ``TokenOrder``
    of ``first``'s tokens as a grid of the same shape): one gather each way."""

    def __init__(self, first: TokenOrder, then: TokenOrder):
        if first.grid != then.grid:
            raise ValueError(f"then.grid must equal first.grid = {first.grid}, got {then.grid}")
        self.grid = first.grid
        self.first, self.then = first, then
        self._set_positions(first.positions()[then.positions()])

    def __repr__(self) -> str:
        return f"ChainedOrder({self.first!r}, {self.then!r})"


class Permuted(Pattern):
    """``pattern`` seen through a token order: the query at tiled position ``p`` and the key at
    tiled position ``r`` are allowed iff ``pattern`` allows row-major positions
    ``layout.positions()[p]`` and ``layout.positions()[r]``.

    Attention of ``layout.permute(q), layout.permute(k), layout.permute(v)`` under ``Permuted``
    equals ``layout.permute`` of the attention of ``q, k, v`` under ``pattern``. Tile states are
    exact when ``pattern`` is a ``GridPattern`` over ``layout.grid`` (a tiled range splits into at
    most ``3 (2n - 1)`` grid boxes); for other patterns every tile is settled by the mask.
    """

    def __init__(self, pattern: Pattern, layout: GridLayout):
        if not isinstance(pattern, Pattern):
            raise TypeError(f"pattern must be a Pattern, got {type(pattern).__name__}")
        if not isinstance(layout, GridLayout):
            raise TypeError(f"layout must be a GridLayout, got {type(layout).__name__}")
        if isinstance(pattern, GridPattern) and pattern.grid != layout.grid:
            raise ValueError(f"layout.grid must equal pattern.grid = {pattern.grid}, got {layout.grid}")
        self.pattern = pattern
        self.layout = layout
        self.head_dependent = pattern.head_dependent

    def check_lengths(self, q_len, k_len, num_heads):
        size = self.layout.size
        if q_len != size or k_len != size:
            raise ValueError(f"q_len and k_len must both equal prod(grid) = {size} for a pattern "
                             f"over grid {self.layout.grid}, got q_len={q_len}, k_len={k_len}")
        self.pattern.check_lengths(q_len, k_len, num_heads)

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        size = self.layout.size
        positions = self.layout.positions(q_pos.device)
        inside = (q_pos >= 0) & (q_pos < size) & (k_pos >= 0) & (k_pos < size)
        q = positions[q_pos.clamp(0, size - 1)]
        k = positions[k_pos.clamp(0, size - 1)]
        return (self.pattern.mask(q, k, head) & inside).expand(shape)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        if not isinstance(self.pattern, GridPattern):
            return torch.full(shape, UNKNOWN, dtype=torch.int8, device=q_lo.device)
        return classify_ranges(self.pattern, self.layout.boxes, q_lo, q_hi, k_lo, k_hi, head).expand(shape)

    def key_tile_candidates(self, q_lo, q_hi, k_len, block_n, heads=1):
        if not isinstance(self.pattern, GridPattern):
            return None
        return grid_candidates(self.pattern, self.layout.boxes, self.layout.runs, q_lo, q_hi, k_len,
                               block_n, heads)

    def __repr__(self) -> str:
        return f"Permuted({self.pattern!r}, {self.layout!r})"


def rows_box(tile_shape, rows: int) -> Optional[tuple[int, int, int]]:
    """Extents ``(b0, b1, b2)`` of the grid box that every run of ``rows`` consecutive positions
    (starting at a multiple of ``rows``) covers in a tiled order of tiles ``tile_shape`` (up to 3
    axes, left-padded with 1s; tokens row-major inside a tile): whole rows or planes of one tile.
    None when such a run is no box (it spans tiles, or cuts a row)."""
    t0, t1, t2 = (1,) * (3 - len(tile_shape)) + tuple(tile_shape)
    if (t0 * t1 * t2) % rows:
        return None
    if rows % (t1 * t2) == 0:
        return rows // (t1 * t2), t1, t2
    if rows % t2 == 0 and t1 % (rows // t2) == 0:
        return 1, rows // t2, t2
    if t2 % rows == 0:
        return 1, 1, rows
    return None


def tile_shapes(grid, tokens_per_tile: int) -> list[tuple[int, ...]]:
    """Every per-axis tile shape with ``prod == tokens_per_tile`` that divides the grid."""
    grid = as_grid(grid)
    divisors = [[t for t in range(1, g + 1) if g % t == 0 and tokens_per_tile % t == 0] for g in grid]
    return [shape for shape in itertools.product(*divisors) if math.prod(shape) == tokens_per_tile]


def padded_grid(grid, tile_shape) -> tuple[int, ...]:
    """``grid`` with every axis rounded up to a multiple of ``tile_shape``'s extent on it."""
    return tuple(cdiv(g, t) * t for g, t in zip(as_grid(grid), tile_shape))


def box_tile_counts(rule: GridPattern, tile_shape) -> tuple[int, int]:
    """``(listed, full)``: how many (query tile, key tile) pairs of ``rule``'s grid in tiles of
    ``tile_shape`` (dividing the grid) meet some allowed pair, and how many allow every pair, for a
    rule that is a conjunction over axes (``GridPattern.axis_states``). Per axis the pairs of
    tile intervals are counted on their own; the grid's tile pairs are the products, so this
    equals the tile map of ``Permuted(rule, GridLayout(grid, tile_shape))`` with tiles of
    ``prod(tile_shape)`` tokens, at a cost linear in the tiles per axis."""
    listed, full = 1, 1
    for axis, (g, t) in enumerate(zip(rule.grid, tile_shape)):
        lo = torch.arange(g // t) * t
        axis_full, axis_hit = rule.axis_states(axis, lo[:, None], lo[:, None] + t - 1, lo[None, :],
                                                lo[None, :] + t - 1, None)
        listed *= int(axis_hit.sum())
        full *= int(axis_full.sum())
    return listed, full


def choose_padded_tile_shape(grid, kernel, tokens_per_tile: int = 64, stride=1, causal=False,
                             partial_cost: float | None = None) -> tuple[int, ...]:
    """The tile shape of power-of-two extents (``prod == tokens_per_tile``) under which the
    undilated neighborhood ``Neighborhood(grid, kernel, 1, stride, causal)``, on the grid padded
    up to whole tiles (``padded_grid``, ``PaddedNeighborhood``), lists the cheapest kernel tiles
    of ``tokens_per_tile`` x ``tokens_per_tile`` (``box_tile_counts``): fewest full plus
    ``partial_cost`` times partial ones, padding queries' tiles included. Ties go to the least
    padding, then to the shape closest to a cube. No extent exceeds its axis. For grids that no
    tile shape divides (``choose_tile_shape`` gives None): a 2-D 100 x 100, 17 x 17 neighborhood
    takes (8, 8) tiles of a 104 x 104 grid, 9.0 key tiles per query tile where its row-major
    order lists 27.0 (all partial)."""
    from .neighborhood import PARTIAL_COST, PaddedNeighborhood

    grid = as_grid(grid)
    kernel = as_axes("kernel", kernel, len(grid))
    cost_of_partial = PARTIAL_COST if partial_cost is None else partial_cost
    powers = [[1 << e for e in range(tokens_per_tile.bit_length()) if (1 << e) <= g] for g in grid]
    best, best_key = None, None
    for shape in itertools.product(*powers):
        if math.prod(shape) != tokens_per_tile:
            continue
        padded = padded_grid(grid, shape)
        listed, full = box_tile_counts(PaddedNeighborhood(padded, grid, kernel, stride, causal), shape)
        key = (full + cost_of_partial * (listed - full), math.prod(padded), max(shape) / min(shape))
        if best_key is None or key < best_key:
            best, best_key = shape, key
    if best is None:
        raise ValueError(f"no tile shape of {tokens_per_tile} tokens (powers of two per axis) fits "
                         f"grid {grid}")
    return best


def choose_tile_shape(grid, kernel, tokens_per_tile: int = 128, dilation=1, stride=1, causal=False,
                      partial_cost: float | None = None, kernel_tiles: tuple[int, int] | None = None
                      ) -> tuple[int, ...] | None:
    """The tile shape (dividing the grid, ``prod == tokens_per_tile``) under which the tiled
    neighborhood pattern ``Neighborhood(grid, kernel, dilation, stride, causal)`` has the highest
    predicted speedup (``predicted_speedup`` with the kernels' ``(block_m, block_n)`` tiles,
    ``kernel_tiles``, default ``tokens_per_tile`` both: fewest listed tiles, partial ones weighted
    by ``partial_cost``); ties go to the most full tiles, then to the shape closest to a cube. None
    when no tile shape divides the grid. With 128-token layout tiles and 64-key kernel tiles, for
    example, a 2-D 17 x 17 neighborhood lists 11.2 key tiles per query tile in (16, 8) tiles and
    16.2 in (8, 16) tiles, which tie at 128 x 128."""
    from .neighborhood import PARTIAL_COST, Neighborhood, predicted_speedup

    grid = as_grid(grid)
    if isinstance(tokens_per_tile, bool) or not isinstance(tokens_per_tile, int) or tokens_per_tile < 1:
        raise ValueError(f"tokens_per_tile must be a positive int, got {tokens_per_tile!r}")
    pattern = Neighborhood(grid, kernel, dilation=dilation, stride=stride, causal=causal)
    cost = PARTIAL_COST if partial_cost is None else partial_cost
    best, best_key = None, None
    size = math.prod(grid)
    block_m, block_n = kernel_tiles if kernel_tiles is not None else (tokens_per_tile, tokens_per_tile)
    for shape in tile_shapes(grid, tokens_per_tile):
        permuted = Permuted(pattern, GridLayout(grid, shape))
        tiles = permuted.tile_map(size, size, block_m, block_n)
        speed = predicted_speedup(permuted, size, size, block_m, block_n, partial_cost=cost, tile_map=tiles)
        key = (round(speed, 9), tiles.full_fraction(), -max(shape) / min(shape))
        if best_key is None or key > best_key:
            best, best_key = shape, key
    return best
