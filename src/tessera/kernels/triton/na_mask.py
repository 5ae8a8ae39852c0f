"""In-kernel N-D neighborhood mask (``MASK_MODE`` 4) of the flash kernels.

A neighborhood reaches the kernels as one small int32 tensor ``NA`` (its layout below;
``masks.neighborhood_params`` fills it) and the compile-time switches ``NA_STATIC``. From them:
the grid coordinates of a query or key tile's tokens in a tiled order (``na_coords``), each
token's per-axis window (``na_query_windows``, ``na_key_windows``) and codes (``na_codes``), and
the mask as compares (``na_allowed``) or as an additive logit penalty (``na_penalty``, what
``scoring.score_tile`` applies).
"""

import triton
import triton.language as tl

# Neighborhood parameters (MASK_MODE 4), int32 (masks.neighborhood_params fills them): field ``f``
# of axis ``a`` at ``f * 3 + a`` (grids of 1 or 2 axes padded with leading axes of extent 1), then
# three flags: NA_ALIGNED + side (side 0: query tiles of BLOCK_M rows, 1: key tiles of BLOCK_N
# columns) when the order's tile extents are powers of two (NA_SHIFT: their log2) and every
# kernel tile of that side lies inside one tile of the order, so that the order tile is one scalar
# per kernel tile and in-tile coordinates are shifts and masks; NA_DILATED when some dilation > 1.
# NA_RECIP: fixed-point reciprocals of the tile counts (masks._tile_recips; 0 where not exact).
# NA_EXTENT: the part of the grid whose borders clamp the windows (the grid, or a smaller extent
# at its origin when the grid is padded up to whole tiles: PaddedNeighborhood; read only under
# NA_PADDED); NA_GRID addresses.
NA_GRID = tl.constexpr(0)
NA_TILE = tl.constexpr(1)
NA_TILES = tl.constexpr(2)
NA_KERNEL = tl.constexpr(3)
NA_DILATION = tl.constexpr(4)
NA_STRIDE = tl.constexpr(5)
NA_CAUSAL = tl.constexpr(6)
NA_SHIFT = tl.constexpr(7)
NA_RECIP = tl.constexpr(8)
NA_EXTENT = tl.constexpr(9)
NA_FIELDS = 10
NA_ALIGNED = tl.constexpr(30)
NA_DILATED = tl.constexpr(32)
# Dilation-group folding (``NA_FOLDED``, masks.folded_params): an undilated neighborhood over the
# sub-grid of one dilation group, run for every group at once on tensors of the whole grid in its
# row-major order. After the flags: the dilations (axis 0, 1, 2) at NA_FOLD, the number of
# groups at NA_GROUPS, then each group's first grid row.
NA_FOLD = tl.constexpr(33)
NA_GROUPS = tl.constexpr(36)

# Compile-time switches of the neighborhood mask, the constexpr ``NA_STATIC`` of the kernels
# (masks.neighborhood_switches packs them): bit ``side`` (NA_QUERY_ALIGNED, NA_KEY_ALIGNED) as the
# NA_ALIGNED flags, NA_ANY_DILATION / NA_ANY_STRIDE / NA_ANY_CAUSAL when some axis has a dilation
# or stride > 1 or is causal (else that code is left out), the number of grid axes times
# NA_AXES_UNIT (padded leading axes are skipped), and with power-of-two order tiles the log2 of
# their extents (axis 2, 1, 0) in 5-bit fields from NA_SHIFT_UNIT (0 otherwise), and NA_EXACT
# when the block sizes divide the sequence lengths (no tile reaches past them: no bounds compare).
NA_QUERY_ALIGNED = tl.constexpr(1)
NA_KEY_ALIGNED = tl.constexpr(2)
NA_ANY_DILATION = tl.constexpr(4)
NA_ANY_STRIDE = tl.constexpr(8)
NA_ANY_CAUSAL = tl.constexpr(16)
NA_AXES_UNIT = tl.constexpr(32)
NA_SHIFT_UNIT = tl.constexpr(128)
NA_EXACT = tl.constexpr(1 << 22)
NA_FOLDED = tl.constexpr(1 << 23)
# NA_RECIP_FIELD: the NA_RECIP field holds ceil(2 ** NA_RECIP_SHIFT / tiles) per axis
# (masks.RECIP_BITS), exact for every tile index a kernel divides.
NA_RECIP_FIELD = tl.constexpr(1 << 24)
NA_RECIP_SHIFT = tl.constexpr(30)
# NA_BATCH_AXIS: the bulk copies address ``[B, G0, G1, G2, H * D]`` views, batch its own axis
# (tensors that hold only a padded grid's extent, padded along axis 0, at B > 1:
# ``flash_fwd.batch_axis_view``); the Gluon kernels' launches set it (``masks.NA_BATCH_AXIS_BIT``).
NA_BATCH_AXIS = tl.constexpr(1 << 25)
# NA_ROLLED: the tensors hold the grid rolled by ``-roll`` per axis (Swin's cyclic shift): the
# pattern's grid coordinate ``c`` lives at the tensors' ``(c + roll) % G``. The rolls (axis 0, 1,
# 2) sit at NA_ROLL, in the slots a dilation fold uses (a grid-order call takes one or neither:
# ``masks.GridRoll``).
NA_ROLLED = tl.constexpr(1 << 26)
NA_ROLL = tl.constexpr(33)
# NA_ROW_MAP: the tensors' row of each position of the order sits at NA_ROWS + position (a token
# order the fields do not describe cheaply: tiles of no power-of-two extents, a roll; padded past
# the last tile so that every kernel tile reads in bounds; ``masks.GridRows``).
NA_ROW_MAP = tl.constexpr(1 << 27)
NA_ROWS = tl.constexpr(33)
# NA_PADDED: the extent (NA_EXTENT) is smaller than the grid on some axis (a PaddedNeighborhood's
# plan), so windows clamp at the extent. Without it they clamp at the grid, read from NA_GRID:
# a separate extent costs the Gluon forward 26 registers at D = 128 (149 -> 175 on sm_90), one
# program per SM less.
NA_PADDED = tl.constexpr(1 << 28)


@triton.jit
def na_param(NA, field: tl.constexpr, axis: tl.constexpr):
    """One int32 per-axis neighborhood parameter (see ``NA_FIELDS``)."""
    return tl.load(NA + field * 3 + axis)


@triton.jit
def na_tile_coords(tile, NA, NA_STATIC: tl.constexpr):
    """Coordinates ``(j0, j1, j2)`` of tile ``tile`` (a scalar or any shape, below the number of
    tiles) in the row-major ``(N0, N1, N2)`` grid of tiles; padded axes (``NA_STATIC``): 0."""
    AXES: tl.constexpr = NA_STATIC // NA_AXES_UNIT % 4
    j0 = 0
    j1 = 0
    j2 = tile
    if AXES >= 2:
        n2 = na_param(NA, NA_TILES, 2)
        j1 = na_divide(tile, n2, NA, 2, NA_STATIC)
        j2 = tile - j1 * n2
    if AXES == 3:
        n1 = na_param(NA, NA_TILES, 1)
        j0 = na_divide(j1, n1, NA, 1, NA_STATIC)
        j1 = j1 - j0 * n1
    return j0, j1, j2


@triton.jit
def na_divide(t, n, NA, axis: tl.constexpr, NA_STATIC: tl.constexpr):
    """``t // n`` for a tile index ``t`` (scalar or any shape, nonnegative) and ``n``, the tile count
    of ``axis``: with ``NA_RECIP_FIELD`` a product by the count's reciprocal and a shift (an
    integer division takes a reciprocal and a dozen instructions more)."""
    if NA_RECIP_FIELD & NA_STATIC:
        recip = na_param(NA, NA_RECIP, axis).to(tl.int64)
        q = ((t.to(tl.int64) * recip) >> NA_RECIP_SHIFT).to(tl.int32)
    else:
        q = t // n
    return q


@triton.jit
def na_coords(offs, first, NA, side: tl.constexpr, NA_STATIC: tl.constexpr):
    """Grid coordinates ``(c0, c1, c2)`` of the tokens at positions ``first + offs`` (``offs`` any
    shape: offsets inside the query (``side`` 0) or key (1) tile starting at ``first``) of a tiled
    order: tiles of extents ``(T0, T1, T2)`` dividing the grid, in row-major order over the
    ``(N0, N1, N2)`` tile grid, tokens row-major inside each tile (row-major order: one tile).
    Positions are formed here rather than passed in, so that no position vector of the caller
    has to stay live across a pipelined tile loop. Coordinates of padded axes (``NA_STATIC``)
    are 0, and positions past the sequence get coordinates that the callers' bounds mask."""
    if side == 0:
        aligned: tl.constexpr = NA_QUERY_ALIGNED & NA_STATIC
    else:
        aligned: tl.constexpr = NA_KEY_ALIGNED & NA_STATIC
    if aligned:
        c0, c1, c2 = na_aligned_coords(offs, first, NA, NA_STATIC)
    else:
        t0 = na_param(NA, NA_TILE, 0)
        t1 = na_param(NA, NA_TILE, 1)
        t2 = na_param(NA, NA_TILE, 2)
        volume = t0 * t1 * t2
        pos = first + offs
        tile = pos // volume
        j0, j1, j2 = na_tile_coords(tile, NA, NA_STATIC)
        i0, i1, i2 = na_inner_coords(pos - tile * volume, t1, t2)
        c0, c1, c2 = j0 * t0 + i0, j1 * t1 + i1, j2 * t2 + i2
    return c0, c1, c2


@triton.jit
def na_aligned_coords(offs, first, NA, NA_STATIC: tl.constexpr):
    """``na_coords`` when one tile of the order holds the whole kernel tile and the order's tile
    extents are the powers of two ``2 ** SHIFT`` given in ``NA_STATIC``: the order tile is a
    scalar, and the in-tile offset ``base + offs`` (``base = first mod volume``, a multiple of
    the kernel tile, and ``offs`` below it: disjoint bits) splits into bit fields, each the sum of
    a scalar field of ``base`` and a field of ``offs`` of known width."""
    AXES: tl.constexpr = NA_STATIC // NA_AXES_UNIT % 4
    SH2: tl.constexpr = NA_STATIC // NA_SHIFT_UNIT % 32
    SH1: tl.constexpr = NA_STATIC // (NA_SHIFT_UNIT * 32) % 32
    SH0: tl.constexpr = NA_STATIC // (NA_SHIFT_UNIT * 1024) % 32
    first_tile = first >> (SH0 + SH1 + SH2)
    f0, f1, f2 = na_tile_coords(first_tile, NA, NA_STATIC)
    base = first - (first_tile << (SH0 + SH1 + SH2))
    c2 = ((f2 << SH2) + (base & (2 ** SH2 - 1))) + (offs & (2 ** SH2 - 1))
    c1 = 0
    c0 = 0
    if AXES >= 2:
        base_rest = base >> SH2
        rest = offs >> SH2
        if AXES == 2:
            c1 = ((f1 << SH1) + base_rest) + rest
        else:
            c1 = ((f1 << SH1) + (base_rest & (2 ** SH1 - 1))) + (rest & (2 ** SH1 - 1))
            c0 = ((f0 << SH0) + (base_rest >> SH1)) + (rest >> SH1)
    return c0, c1, c2


@triton.jit
def na_inner_coords(inner, t1, t2):
    """Coordinates ``(i0, i1, i2)`` of in-tile offsets ``inner`` of a row-major ``(*, t1, t2)``
    tile."""
    rest = inner // t2
    i0 = rest // t1
    return i0, rest - i0 * t1, inner - rest * t2


@triton.jit
def na_group(c, NA, axis: tl.constexpr, NA_STATIC: tl.constexpr):
    """Coordinate ``c`` on ``axis`` in its dilation group (``d``): ``(i, n, offset)``, the index
    ``c // d`` in the group, the group's length and the code offset ``(c % d) * G`` of the group;
    ``(c, G, 0)`` without dilation (``G``: the extent, ``NA_EXTENT``, where ``NA_PADDED``; else
    the grid)."""
    if NA_PADDED & NA_STATIC:
        g = na_param(NA, NA_EXTENT, axis)
    else:
        g = na_param(NA, NA_GRID, axis)
    if NA_ANY_DILATION & NA_STATIC:
        d = na_param(NA, NA_DILATION, axis)
        i = c // d
        group = c - i * d
        n = (g - group + d - 1) // d
        offset = group * g
    else:
        i = c
        n = g
        offset = 0
    return i, n, offset


@triton.jit
def na_code(c, NA, axis: tl.constexpr, NA_STATIC: tl.constexpr):
    """Coordinate ``c`` on ``axis`` as a code ``(c % d) * G + c // d`` (``c`` without dilation):
    one interval of codes is one interval of one dilation group."""
    i, _n, offset = na_group(c, NA, axis, NA_STATIC)
    return offset + i


@triton.jit
def na_stride(NA, axis: tl.constexpr, NA_STATIC: tl.constexpr):
    """The stride of ``axis`` (the constant 1 when no axis has one)."""
    if NA_ANY_STRIDE & NA_STATIC:
        s = na_param(NA, NA_STRIDE, axis)
    else:
        s = 1
    return s


@triton.jit
def na_query_window(c, NA, axis: tl.constexpr, NA_STATIC: tl.constexpr):
    """``(lo, hi)``: a query at coordinate ``c`` on ``axis`` sees the keys whose codes
    (``na_code``) lie in ``[lo, hi)``; NATTEN's rule as ``Neighborhood._window`` (window clamped
    inside the dilation group, stride groups sharing their leader's window, causal per axis)."""
    k = na_param(NA, NA_KERNEL, axis)
    s = na_stride(NA, axis, NA_STATIC)
    i, n, offset = na_group(c, NA, axis, NA_STATIC)
    base = (i // s) * s
    start = tl.minimum(tl.maximum(tl.minimum(base + s // 2, n - 1) - k // 2, 0), n - k)
    end = start + k
    if NA_ANY_CAUSAL & NA_STATIC:
        causal = na_param(NA, NA_CAUSAL, axis) != 0
        trailing = tl.maximum(tl.minimum(base + s - 1, n - 1) - k + 1, 0)
        start = tl.where(causal, trailing, start)
        end = tl.where(causal, i + 1, end)
    return offset + start, offset + end


@triton.jit
def na_key_window(c, NA, axis: tl.constexpr, NA_STATIC: tl.constexpr):
    """``(lo, hi)``: a key at coordinate ``c`` on ``axis`` is seen by the queries whose codes lie
    in ``[lo, hi)``. In-group windows have non-decreasing starts and ends, so these queries are
    one interval of the group: from the first whose window ends past the key to the last whose
    window starts at or before it (``na_query_window`` inverted)."""
    k = na_param(NA, NA_KERNEL, axis)
    s = na_stride(NA, axis, NA_STATIC)
    j, n, offset = na_group(c, NA, axis, NA_STATIC)
    h = k // 2
    # Non-causal: start(i) = clamp(min(B(i) + s // 2, n - 1) - h, 0, n - k), B(i) = (i // s) * s.
    last = tl.where((j >= n - k) | (j + h >= n - 1), n - 1,
                    tl.minimum(((j + h - s // 2) // s) * s + s - 1, n - 1))
    first = tl.where(j < k, 0, ((j - k + h - s // 2 + s) // s) * s)
    if NA_ANY_CAUSAL & NA_STATIC:
        # Causal: start(i) = max(min(B(i) + s - 1, n - 1) - k + 1, 0), end(i) = i + 1.
        causal = na_param(NA, NA_CAUSAL, axis) != 0
        last_trailing = tl.where(j + k >= n, n - 1,
                                 tl.minimum(((j + k - s) // s) * s + s - 1, n - 1))
        first = tl.where(causal, j, first)
        last = tl.where(causal, last_trailing, last)
    return offset + first, offset + last + 1


@triton.jit
def na_windows(offs, first, NA, side: tl.constexpr, NA_STATIC: tl.constexpr):
    """Per-axis windows of the tokens at offsets ``offs`` (any shape) of the query (``side`` 0:
    ``na_query_window``, over key codes) or key (1: ``na_key_window``, over query codes) tile
    starting at ``first``: ``(lo0, hi0, lo1, hi1, lo2, hi2)``; padded axes hold 0s (unused)."""
    AXES: tl.constexpr = NA_STATIC // NA_AXES_UNIT % 4
    c0, c1, c2 = na_coords(offs, first, NA, side, NA_STATIC)
    if side == 0:
        lo2, hi2 = na_query_window(c2, NA, 2, NA_STATIC)
    else:
        lo2, hi2 = na_key_window(c2, NA, 2, NA_STATIC)
    lo1, hi1, lo0, hi0 = 0, 0, 0, 0
    if AXES >= 2:
        if side == 0:
            lo1, hi1 = na_query_window(c1, NA, 1, NA_STATIC)
        else:
            lo1, hi1 = na_key_window(c1, NA, 1, NA_STATIC)
    if AXES >= 3:
        if side == 0:
            lo0, hi0 = na_query_window(c0, NA, 0, NA_STATIC)
        else:
            lo0, hi0 = na_key_window(c0, NA, 0, NA_STATIC)
    return lo0, hi0, lo1, hi1, lo2, hi2


@triton.jit
def na_query_windows(offs, first, NA, NA_STATIC: tl.constexpr):
    """Per-axis windows of the queries at offsets ``offs`` (any shape) of the query tile starting
    at ``first``: ``(lo0, hi0, lo1, hi1, lo2, hi2)`` over key codes (``na_codes``)."""
    return na_windows(offs, first, NA, 0, NA_STATIC)


@triton.jit
def na_key_windows(offs, first, NA, NA_STATIC: tl.constexpr):
    """Per-axis windows of the keys at offsets ``offs`` (any shape) of the key tile starting at
    ``first``: ``(lo0, hi0, lo1, hi1, lo2, hi2)`` over query codes (``na_codes``)."""
    return na_windows(offs, first, NA, 1, NA_STATIC)


@triton.jit
def na_codes(offs, first, NA, side: tl.constexpr, NA_STATIC: tl.constexpr):
    """Per-axis codes ``(code0, code1, code2)`` (``na_code``) of the tokens at offsets ``offs``
    (any shape) of the query (``side`` 0) or key (1) tile starting at ``first``; padded axes: 0."""
    AXES: tl.constexpr = NA_STATIC // NA_AXES_UNIT % 4
    c0, c1, c2 = na_coords(offs, first, NA, side, NA_STATIC)
    code1, code0 = 0, 0
    if AXES >= 2:
        code1 = na_code(c1, NA, 1, NA_STATIC)
    if AXES >= 3:
        code0 = na_code(c0, NA, 0, NA_STATIC)
    return code0, code1, na_code(c2, NA, 2, NA_STATIC)


@triton.jit
def na_codes_at(origin, offs, first, NA, side: tl.constexpr, NA_STATIC: tl.constexpr):
    """``na_codes(offs, first, NA, side, NA_STATIC)`` for a caller that holds ``origin``, the grid
    coordinates ``(c0, c1, c2)`` of the tile's first token (``na_coords(0, first, ...)``, which it
    also needs for the tile's bulk copy): on an aligned side the coordinates of ``first + offs``
    are ``origin`` plus the in-tile bit fields of ``offs`` (``na_aligned_coords``), so the tile
    index is not divided again; otherwise they are computed from ``first``."""
    if side == 0:
        aligned: tl.constexpr = NA_QUERY_ALIGNED & NA_STATIC
    else:
        aligned: tl.constexpr = NA_KEY_ALIGNED & NA_STATIC
    if aligned:
        AXES: tl.constexpr = NA_STATIC // NA_AXES_UNIT % 4
        SH2: tl.constexpr = NA_STATIC // NA_SHIFT_UNIT % 32
        SH1: tl.constexpr = NA_STATIC // (NA_SHIFT_UNIT * 32) % 32
        c2 = origin[2] + (offs & (2 ** SH2 - 1))
        code1, code0 = 0, 0
        if AXES >= 2:
            rest = offs >> SH2
            if AXES == 2:
                code1 = na_code(origin[1] + rest, NA, 1, NA_STATIC)
            else:
                code1 = na_code(origin[1] + (rest & (2 ** SH1 - 1)), NA, 1, NA_STATIC)
                code0 = na_code(origin[0] + (rest >> SH1), NA, 0, NA_STATIC)
        codes = (code0, code1, na_code(c2, NA, 2, NA_STATIC))
    else:
        codes = na_codes(offs, first, NA, side, NA_STATIC)
    return codes


@triton.jit
def na_allowed(windows, codes, NA_STATIC: tl.constexpr):
    """Neighborhood mask from broadcast windows of one side (``na_query_windows`` or
    ``na_key_windows``) and codes of the other (``na_codes``): two compares per grid axis."""
    AXES: tl.constexpr = NA_STATIC // NA_AXES_UNIT % 4
    ok = (codes[2] >= windows[4]) & (codes[2] < windows[5])
    if AXES >= 2:
        ok = ok & (codes[1] >= windows[2]) & (codes[1] < windows[3])
    if AXES >= 3:
        ok = ok & (codes[0] >= windows[0]) & (codes[0] < windows[1])
    return ok


@triton.jit
def na_penalty(windows, codes, NA_STATIC: tl.constexpr, LISTED: tl.constexpr = False):
    """The neighborhood mask of ``na_allowed`` as an additive logit penalty: 0 where allowed,
    -inf elsewhere, summed over the grid axes. Each axis term depends on a row and one axis code
    of a column, so it takes only as many selects per thread as there are distinct (row, code)
    pairs (the key tile of an aligned order is a grid box), and the mask costs one add per axis
    per logit instead of a select per compare.

    ``LISTED``: the (query tile, key tile) pair is one the plan lists (some pair of it is
    allowed), as in the kernels' tile loops. Then axes 0 and 1 whose order-tile extent is 1 are
    left out when both sides' kernel tiles lie inside one order tile (``NA_QUERY_ALIGNED`` and
    ``NA_KEY_ALIGNED``): each tile has one code along such an axis, so its term is the same for
    every pair of the tile, and zero on a listed one (the suite's 3-D order, 1 x 8 x 8 tiles,
    drops axis 0). Axis 2 stays: rows past the sequence are masked through its codes."""
    AXES: tl.constexpr = NA_STATIC // NA_AXES_UNIT % 4
    BOTH_ALIGNED: tl.constexpr = NA_STATIC % 4 == NA_QUERY_ALIGNED + NA_KEY_ALIGNED
    UNIFORM1: tl.constexpr = LISTED and BOTH_ALIGNED and NA_STATIC // (NA_SHIFT_UNIT * 32) % 32 == 0
    UNIFORM0: tl.constexpr = LISTED and BOTH_ALIGNED and NA_STATIC // (NA_SHIFT_UNIT * 1024) % 32 == 0
    pen = tl.where((codes[2] >= windows[4]) & (codes[2] < windows[5]), 0.0, float("-inf"))
    if AXES >= 2 and not UNIFORM1:
        pen = pen + tl.where((codes[1] >= windows[2]) & (codes[1] < windows[3]), 0.0, float("-inf"))
    if AXES >= 3 and not UNIFORM0:
        pen = pen + tl.where((codes[0] >= windows[0]) & (codes[0] < windows[1]), 0.0, float("-inf"))
    return pen
