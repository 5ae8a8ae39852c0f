"""Attention patterns of vision and video transformers over row-major flattened token grids.

Each rule is stated on grid coordinates, as in its paper; ``S_q == S_k == prod(grid)``. Every
pattern here except ``Radial`` is a ``GridPattern`` with exact tile states (and so also exact
under a ``GridLayout`` permutation); ``Radial`` is exact when a rectangle spans at most eight frames
on each side and UNKNOWN (settled by the mask) otherwise.
"""

from __future__ import annotations

import math

import torch

from .base import UNKNOWN, Pattern, _check_positive_int
from .layout import CyclicShift, GridPattern, as_axes, as_grid
from .neighborhood import Neighborhood
from .tilemap import EMPTY, FULL, PARTIAL
from .token_copies import as_wide_rows, from_wide_rows

# Radial classifies a rectangle exactly when each side spans at most this many frames (one
# frame-pair test per pair of frames); wider rectangles are UNKNOWN, settled by the mask.
_MAX_FRAMES_PER_RANGE = 8


def _check_divides(name: str, values, grid) -> None:
    for a, (v, g) in enumerate(zip(values, grid)):
        if v > g or g % v:
            raise ValueError(f"{name}[{a}] must divide grid[{a}] = {g}, got {v}")


def _interval_states(start_first, end_first, start_last, end_last, y0, y1):
    """(full, hit) on one axis for windows ``[start(x), end(x)]`` (inclusive) whose ends do not
    decrease with ``x`` and whose union over an interval of queries is an interval: given the
    windows of the first and the last query and keys ``[y0, y1]``."""
    full = (start_last <= y0) & (end_first >= y1)
    hit = (start_first <= y1) & (end_last >= y0)
    return full, hit


class _AxisWindows(GridPattern):
    """Patterns whose rule is, on every axis, "the key lies in the query's window ``[start(x),
    end(x)]``", windows with non-decreasing ends that chain without gaps."""

    def axis_window(self, axis: int, x, head):
        raise NotImplementedError

    def allowed(self, q, k, head):
        out = None
        for a in range(self.ndim):
            start, end = self.axis_window(a, q[a], head)
            ok = (k[a] >= start) & (k[a] <= end)
            out = ok if out is None else out & ok
        return out

    def axis_states(self, axis, x0, x1, y0, y1, head):
        s0, e0 = self.axis_window(axis, x0, head)
        s1, e1 = self.axis_window(axis, x1, head)
        return _interval_states(s0, e0, s1, e1, y0, y1)

    def axis_key_range(self, axis, x0, x1, head):
        s0, _ = self.axis_window(axis, x0, head)
        _, e1 = self.axis_window(axis, x1, head)
        return s0, e1


class Swin(_AxisWindows):
    """Swin Transformer window attention (Liu et al. 2021), W-MSA and SW-MSA.

    Non-overlapping windows of ``window`` tokens per axis (``window`` must divide the grid); a token
    sees the tokens of its window. With ``shifted=True`` the grid is cyclically shifted by
    ``window // 2`` (``torch.roll(x, -(window // 2))``) before windowing, and tokens that land in
    one window from different original regions are masked apart (Swin's attention mask). In
    original coordinates that is, per axis with shift ``s = window // 2``: window index
    ``floor((x - s) / window)``, i.e. windows ``[0, s)``, ``[s, s + window)``, ...,
    ``[L - window + s, L)``; a query sees a key iff their window indices agree on every axis.
    """

    def __init__(self, grid, window, shifted: bool = False):
        self.grid = as_grid(grid)
        self.window = as_axes("window", window, len(self.grid))
        _check_divides("window", self.window, self.grid)
        if not isinstance(shifted, bool):
            raise TypeError(f"shifted must be a bool, got {type(shifted).__name__} ({shifted!r})")
        self.shifted = shifted
        self.shift = tuple(w // 2 for w in self.window) if shifted else (0,) * len(self.grid)

    def axis_window(self, axis, x, head):
        w, s, g = self.window[axis], self.shift[axis], self.grid[axis]
        index = torch.div(x - s, w, rounding_mode="floor")
        start = torch.clamp(index * w + s, min=0)
        end = torch.clamp(index * w + s + w - 1, max=g - 1)
        return start, end

    def window_tiles(self):
        return (self.window,)

    def rolled(self):
        """Shifted windows: ``(CyclicShift(grid, shift), RolledShiftedSwin(grid, window))``, the
        grid as Swin's SW-MSA computes it (rolled by ``-shift``), where the windows start at the
        origin; None for unshifted windows."""
        if not self.shifted:
            return None
        return CyclicShift(self.grid, self.shift), RolledShiftedSwin(self.grid, self.window)

    def __repr__(self) -> str:
        return f"Swin(grid={self.grid}, window={self.window}, shifted={self.shifted})"


class RolledShiftedSwin(_AxisWindows):
    """Swin's shifted windows over the grid rolled by ``-(window // 2)`` per axis (``CyclicShift``;
    the token at rolled coordinate ``x'`` is the original ``(x' + s) % L``): windows of ``window``
    tokens from the origin, except that the last window of each axis holds two regions that are
    masked apart, ``[L - window, L - s)`` (the original ``[L - window + s, L)``) and ``[L - s, L)``
    (the original ``[0, s)``). A query sees a key iff they share a window region on every axis."""

    def __init__(self, grid, window):
        self.grid = as_grid(grid)
        self.window = as_axes("window", window, len(self.grid))
        _check_divides("window", self.window, self.grid)
        self.shift = tuple(w // 2 for w in self.window)

    def axis_window(self, axis, x, head):
        w, s, g = self.window[axis], self.shift[axis], self.grid[axis]
        start = torch.div(x, w, rounding_mode="floor") * w
        end = start + w - 1
        cut = g - s
        last = start == g - w
        return torch.where(last & (x >= cut), cut, start), torch.where(last & (x < cut), cut - 1, end)

    def window_tiles(self):
        return (self.window,)

    def __repr__(self) -> str:
        return f"RolledShiftedSwin(grid={self.grid}, window={self.window})"


class MaxViTBlock(Swin):
    """MaxViT block attention (Tu et al. 2022): non-overlapping ``P x P`` windows (``block`` per
    axis, dividing the grid); a token sees the tokens of its window, i.e. ``x // P == y // P`` on
    every axis."""

    def __init__(self, grid, block):
        super().__init__(grid, block, shifted=False)

    def __repr__(self) -> str:
        return f"MaxViTBlock(grid={self.grid}, block={self.window})"


class MaxViTGrid(GridPattern):
    """MaxViT grid attention (Tu et al. 2022): the grid is split into a ``G x G`` grid of cells of
    ``L / G`` tokens per axis (``grid_size`` = G per axis, dividing the grid), and attention mixes
    the ``G x G`` tokens at the same offset inside their cells (MaxViT's ``(G, L/G) -> (L/G, G)``
    reshape): a query sees a key iff ``x % (L / G) == y % (L / G)`` on every axis (a dilated global
    attention with dilation ``L / G``)."""

    def __init__(self, grid, grid_size):
        self.grid = as_grid(grid)
        self.grid_size = as_axes("grid_size", grid_size, len(self.grid))
        _check_divides("grid_size", self.grid_size, self.grid)
        self.period = tuple(g // n for g, n in zip(self.grid, self.grid_size))

    def allowed(self, q, k, head):
        out = None
        for a in range(self.ndim):
            ok = (q[a] - k[a]) % self.period[a] == 0
            out = ok if out is None else out & ok
        return out

    def axis_states(self, axis, x0, x1, y0, y1, head):
        m = self.period[axis]
        # Differences y - x fill [y0 - x1, y1 - x0]; a hit needs a multiple of m among them.
        hit = torch.div(y1 - x0, m, rounding_mode="floor") * m >= y0 - x1
        if m == 1:
            return torch.ones_like(hit), hit
        full = (x0 == x1) & (y0 == y1) & ((y0 - x0) % m == 0)
        return full, hit

    def as_blocks(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """``x`` (the grid's tokens in row-major order along ``dim``) reordered so that each group
        of this attention is one block of ``grid_size`` tokens per axis: on every axis coordinate
        ``cell * period + offset`` goes to ``offset * grid_size + cell``. In that order the pattern
        is ``MaxViTBlock(grid, grid_size)``; ``from_blocks`` undoes the reorder. One copy."""
        return self._swap(x, dim, [(g, p) for g, p in zip(self.grid_size, self.period)])

    def from_blocks(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The inverse of ``as_blocks``."""
        return self._swap(x, dim, [(p, g) for g, p in zip(self.grid_size, self.period)])

    def _swap(self, x: torch.Tensor, dim: int, pairs) -> torch.Tensor:
        dim = dim % x.dim()
        if x.shape[dim] != self.size:
            raise ValueError(f"x must hold the grid's {self.size} tokens along dim {dim}, got shape {tuple(x.shape)}")
        if torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling():
            return _SwappedTokens.apply(x, dim, tuple(pairs))
        return _swapped_tokens(x, dim, pairs)

    def __repr__(self) -> str:
        return f"MaxViTGrid(grid={self.grid}, grid_size={self.grid_size})"


def _swapped_tokens(x: torch.Tensor, dim: int, pairs) -> torch.Tensor:
    """A copy of ``x`` with its token axis ``dim`` split per grid axis into ``(a, b)`` of ``pairs``
    (row-major) and each pair swapped to ``(b, a)``; token rows move whole (``as_wide_rows``)."""
    wide = as_wide_rows(x, dim)
    source = x if wide is None else wide
    pre, post = source.shape[:dim], source.shape[dim + 1:]
    split = source.reshape(*pre, *[n for pair in pairs for n in pair], *post)
    axes = list(range(len(pre)))
    for a in range(len(pairs)):
        axes += [len(pre) + 2 * a + 1, len(pre) + 2 * a]
    axes += list(range(len(pre) + 2 * len(pairs), split.dim()))
    swapped = split.permute(axes).reshape(source.shape)
    return swapped if wide is None else from_wide_rows(swapped, x.dtype, x.shape)


class _SwappedTokens(torch.autograd.Function):
    """``_swapped_tokens`` with the inverse swap as its backward."""

    @staticmethod
    def forward(ctx, x, dim, pairs):
        ctx.dim, ctx.pairs = dim, pairs
        return _swapped_tokens(x, dim, pairs)

    @staticmethod
    def backward(ctx, grad):
        return _swapped_tokens(grad, ctx.dim, [(b, a) for a, b in ctx.pairs]), None, None


class Halo(_AxisWindows):
    """HaloNet blocked local attention (Vaswani et al. 2021): the grid is cut into blocks of
    ``block`` tokens per axis (dividing the grid); the queries of a block see the keys of that
    block extended by ``halo`` tokens on every side, clipped at the grid border:
    ``(x // b) * b - h <= y <= (x // b) * b + b - 1 + h`` on every axis."""

    def __init__(self, grid, block, halo):
        self.grid = as_grid(grid)
        self.block = as_axes("block", block, len(self.grid))
        _check_divides("block", self.block, self.grid)
        self.halo = as_axes("halo", halo, len(self.grid), minimum=0)

    def axis_window(self, axis, x, head):
        b, h, g = self.block[axis], self.halo[axis], self.grid[axis]
        first = (x // b) * b
        return torch.clamp(first - h, min=0), torch.clamp(first + b - 1 + h, max=g - 1)

    def window_tiles(self):
        return (self.block,)

    def __repr__(self) -> str:
        return f"Halo(grid={self.grid}, block={self.block}, halo={self.halo})"


class CSWin(_AxisWindows):
    """CSWin Transformer cross-shaped window attention (Dong et al. 2022) on a 2-D grid ``(H, W)``.

    The heads are split in two halves: heads ``h < num_heads // 2`` attend within horizontal
    stripes of ``stripe`` rows (``y_0 // sw == x_0 // sw``, any column), heads ``h >= num_heads //
    2`` within vertical stripes of ``stripe`` columns (``y_1 // sw == x_1 // sw``, any row).
    ``stripe`` must divide the grid on both axes and ``num_heads`` must be even; the pattern is
    head-dependent and only fits calls with ``num_heads`` heads.
    """

    head_dependent = True

    def __init__(self, grid, stripe: int, num_heads: int):
        self.grid = as_grid(grid)
        if len(self.grid) != 2:
            raise ValueError(f"grid must be 2-D (H, W) for CSWin, got {self.grid}")
        self.stripe = _check_positive_int("stripe", stripe)
        _check_divides("stripe", (stripe, stripe), self.grid)
        self.num_heads = _check_positive_int("num_heads", num_heads)
        if num_heads % 2:
            raise ValueError(f"num_heads must be even (half horizontal, half vertical stripes), "
                             f"got {num_heads}")

    def check_lengths(self, q_len, k_len, num_heads):
        super().check_lengths(q_len, k_len, num_heads)
        if num_heads != self.num_heads:
            raise ValueError(f"num_heads must be {self.num_heads} for this CSWin pattern, got {num_heads}")

    def axis_window(self, axis, x, head):
        sw, g = self.stripe, self.grid[axis]
        horizontal = (head % self.num_heads) < self.num_heads // 2
        restricted = horizontal if axis == 0 else ~horizontal
        first = (x // sw) * sw
        start = torch.where(restricted, first, 0)
        end = torch.where(restricted, first + sw - 1, g - 1)
        return start, end

    def __repr__(self) -> str:
        return f"CSWin(grid={self.grid}, stripe={self.stripe}, num_heads={self.num_heads})"


class CrissCross(GridPattern):
    """CCNet criss-cross attention (Huang et al. 2019): a query sees the keys in its row and its
    column, i.e. keys whose coordinates differ from the query's on at most one axis (on a 3-D grid:
    the three axis-aligned lines through the query)."""

    def __init__(self, grid):
        self.grid = as_grid(grid)
        if len(self.grid) < 2:
            raise ValueError(f"grid must have at least 2 axes for CrissCross, got {self.grid}")

    def allowed(self, q, k, head):
        differ = sum((qa != ka).to(torch.int64) for qa, ka in zip(q, k))
        return differ <= 1

    def box_states(self, q_lo, q_hi, k_lo, k_hi, head):
        # Per axis the pair may differ unless both sides are the same single coordinate; it can
        # agree iff the intervals overlap. Axes are independent inside a box pair.
        can_differ = sum(((x0 != x1) | (y0 != y1) | (x0 != y0)).to(torch.int64)
                         for x0, x1, y0, y1 in zip(q_lo, q_hi, k_lo, k_hi))
        must_differ = sum(((x0 > y1) | (y0 > x1)).to(torch.int64)
                          for x0, x1, y0, y1 in zip(q_lo, q_hi, k_lo, k_hi))
        return can_differ <= 1, must_differ <= 1

    def key_boxes(self, q_lo, q_hi, head):
        boxes = []
        for a in range(self.ndim):
            lo = [torch.zeros_like(x) if b == a else x for b, x in enumerate(q_lo)]
            hi = [torch.zeros_like(x) + self.grid[a] - 1 if b == a else x for b, x in enumerate(q_hi)]
            boxes.append((lo, hi))
        return boxes

    def __repr__(self) -> str:
        return f"CrissCross(grid={self.grid})"


class Radial(Pattern):
    """Radial attention for video (Li et al. 2025, "Radial Attention: O(n log n) Sparse Attention
    with Energy Decay for Long Video Generation"), token-level rule of the paper's static mask.

    ``grid = (T, H, W)`` (or ``(T, S)``): frame ``i = t``, in-frame index ``k`` (the row-major index
    of the spatial coordinates, ``S = H * W`` tokens per frame). With ``r = floor(log2(max(|i - j|,
    1)))`` and the base window ``s = window`` (default ``S``), a query (frame ``i``, index ``k``)
    sees a key (frame ``j``, index ``l``) iff

      * ``(|k - l| + 1) * 2^r <= s``: a spatial band whose width halves each time the temporal
        distance doubles (frames ``|i - j| <= 1`` with ``s = S`` see the whole frame), or
      * ``k == l`` and ``|i - j| % ceil(2^r / s) == 0``: once the band is narrower than one token,
        only the same spatial position, in every ``ceil(2^r / s)``-th frame.

    The compute density per frame pair halves with each doubling of the temporal distance, so
    the pattern holds ``O(n log n)`` pairs. (The reference code additionally coarsens the mask to
    128 x 128 blocks and adds the first frame as an attention sink; combine with ``Sinks`` or
    ``BlockSparse`` for those.)
    """

    def __init__(self, grid, window: int | None = None):
        self.grid = as_grid(grid)
        if len(self.grid) < 2:
            raise ValueError(f"grid must be (T, H, W) or (T, S) for Radial, got {self.grid}")
        self.frames = self.grid[0]
        self.frame_size = math.prod(self.grid[1:])
        self.window = self.frame_size if window is None else _check_positive_int("window", window)

    @property
    def size(self) -> int:
        return self.frames * self.frame_size

    def check_lengths(self, q_len, k_len, num_heads):
        if q_len != self.size or k_len != self.size:
            raise ValueError(f"q_len and k_len must both equal prod(grid) = {self.size} for a pattern "
                             f"over grid {self.grid}, got q_len={q_len}, k_len={k_len}")

    def _band(self, dt):
        """``(r, half)``: ``|k - l| <= half`` is the band rule (``half < 0``: no band), and ``r``."""
        r = torch.floor(torch.log2(dt.clamp(min=1).double())).to(torch.int64)
        half = self.window // torch.pow(2, r) - 1
        return r, half

    def _diagonal(self, dt, r):
        period = (torch.pow(2, r) + self.window - 1) // self.window
        return dt % period == 0

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        inside = (q_pos >= 0) & (q_pos < self.size) & (k_pos >= 0) & (k_pos < self.size)
        s = self.frame_size
        dt = (q_pos // s - k_pos // s).abs()
        dk = (q_pos % s - k_pos % s).abs()
        r, half = self._band(dt)
        allowed = (dk <= half) | ((dk == 0) & self._diagonal(dt, r))
        return (allowed & inside).expand(shape)

    def _frame_pair(self, i, k0, k1, j, l0, l1):
        """(full, hit) for frame ``i`` indices ``[k0, k1]`` against frame ``j`` indices ``[l0, l1]``."""
        dt = (i - j).abs()
        r, half = self._band(dt)
        a, b = k0 - l1, k1 - l0                       # offsets k - l fill [a, b]
        band_full = (a >= -half) & (b <= half)
        band_hit = (half >= 0) & (a <= half) & (b >= -half)
        diag = self._diagonal(dt, r) & (a <= 0) & (b >= 0)
        full = band_full | (diag & (a == 0) & (b == 0))
        return full, band_hit | diag

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        s, n = self.frame_size, self.size
        outside = (q_lo < 0) | (q_hi >= n) | (k_lo < 0) | (k_hi >= n)
        q_a, q_b = q_lo.clamp(0, n - 1), q_hi.clamp(0, n - 1)
        k_a, k_b = k_lo.clamp(0, n - 1), k_hi.clamp(0, n - 1)
        empty = (q_lo > q_b) | (q_hi < q_a) | (k_lo > k_b) | (k_hi < k_a)

        # Split both ranges by frame: piece p is frame f0 + p, whole except at the two ends.
        f0q, f1q, f0k, f1k = q_a // s, q_b // s, k_a // s, k_b // s
        spans = int(max((f1q - f0q).max().item(), (f1k - f0k).max().item())) + 1
        pieces_per_side = min(spans, _MAX_FRAMES_PER_RANGE)

        def pieces(lo, hi, f0, f1):
            for p in range(pieces_per_side):
                frame = f0 + p
                first = lo % s if p == 0 else torch.zeros_like(lo)
                last = torch.where(frame == f1, hi % s, s - 1)
                yield frame, first, last, frame <= f1

        full, hit = None, None
        for i, k0, k1, qv in pieces(q_a, q_b, f0q, f1q):
            for j, l0, l1, kv in pieces(k_a, k_b, f0k, f1k):
                both = qv & kv
                f, h = self._frame_pair(i, k0, k1, j, l0, l1)
                f, h = f | ~both, h & both
                full = f if full is None else full & f
                hit = h if hit is None else hit | h
        exact = (f1q - f0q < pieces_per_side) & (f1k - f0k < pieces_per_side)
        states = torch.where(full & ~outside, FULL, torch.where(hit & ~empty, PARTIAL, EMPTY))
        states = torch.where(exact, states, UNKNOWN)
        return states.to(torch.int8).expand(shape)

    def __repr__(self) -> str:
        return f"Radial(grid={self.grid}, window={self.window})"


def equivalent_neighborhood(pattern: Pattern):
    """The ``Neighborhood`` that allows exactly the pairs ``pattern`` allows, or None. Such a
    pattern runs as neighborhood attention does (tiled token orders, dilation groups, padded
    grids, the grid-order kernels):

      * a ``Neighborhood`` is itself;
      * unshifted ``Swin`` windows, ``MaxViTBlock`` and ``Halo`` with no halo are blocked
        attention: kernel = stride = window (windows tile the grid);
      * ``MaxViTGrid`` is a neighborhood with dilation ``L / G`` (its period) and kernel ``G``:
        each dilation group holds ``G`` coordinates per axis, all inside every window.

    Shifted Swin windows (edge windows shorter than the rest), halos (windows clipped, not
    shifted, at the grid's border), CSWin (per-head stripes), criss-cross and Radial have none."""
    kind = type(pattern)
    if kind is Neighborhood:
        return pattern
    if kind in (Swin, MaxViTBlock) and not pattern.shifted:
        return Neighborhood(pattern.grid, pattern.window, stride=pattern.window)
    if kind is Halo and not any(pattern.halo):
        return Neighborhood(pattern.grid, pattern.block, stride=pattern.block)
    if kind is MaxViTGrid:
        return Neighborhood(pattern.grid, pattern.grid_size, dilation=pattern.period)
    return None
