"""In-kernel score computation shared by the forward and backward flash kernels.

``score_tile`` turns a tile of raw dot products ``q . k`` into logits in log2 units
(``z * log2(e)``), applying in order: scale, softcap, ALiBi, tensor bias, a bias tile the caller
computes (low-rank ``u_tile @ w_tile^T`` from ``low_rank_tile``, or a relative-position gather
from ``rel_pos_tile``), and (on partial tiles) the mask. Positions come in as broadcastable 2-D
tensors, so the same helper serves the row-major forward/dq tiles ``[BLOCK_M, BLOCK_N]`` and the
transposed dk/dv tiles ``[BLOCK_N, BLOCK_M]``.
"""

import builtins

import triton
import triton.language as tl

# True when kernels are defined for Triton's CPU interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED = bool(triton.knobs.runtime.interpret)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def tanh(x):
    """tanh through exp2; exact limits +-1 for large |x|."""
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * 1.4426950408889634)) + 1.0)


@triton.jit
def load_factor_rows(base, rows, offs_r, s_row, s_rank, LIMIT, RANK, BOUNDED: tl.constexpr):
    """Rows ``rows`` of one (batch, head) slice of a low-rank factor, ``[len(rows), R_PAD]`` in the
    factor's dtype; rank columns past ``RANK`` (and, when BOUNDED, rows past ``LIMIT``) read 0."""
    ptrs = base + rows.to(tl.int64)[:, None] * s_row + offs_r[None, :] * s_rank
    ok = offs_r[None, :] < RANK
    if BOUNDED:
        ok = ok & (rows[:, None] < LIMIT)
    return tl.load(ptrs, mask=ok, other=0.0)


@triton.jit
def low_rank_tile(a, b, PRECISION: tl.constexpr):
    """``a @ b^T`` in fp32: the low-rank bias of a tile from factor rows ``a`` and ``b``."""
    return tl.dot(a, tl.trans(b), input_precision=PRECISION)


@triton.jit
def grid_flat(pos, G1, G2):
    """Relative-position addressing: token ``pos`` of a row-major grid ``(G0, G1, G2)`` (1-D and
    2-D grids padded with leading 1s) as a flat index in the ``(2G0-1, 2G1-1, 2G2-1)`` table
    shape, so that ``flat(i) - flat(j) + flat(last token)`` indexes ``table[c_i - c_j + G - 1]``."""
    c2 = pos % G2
    rest = pos // G2
    return ((rest // G1) * (2 * G1 - 1) + rest % G1) * (2 * G2 - 1) + c2


@triton.jit
def grid_position(flat, G0, G1, G2):
    """Inverse of ``grid_flat``: ``(pos, ok)``, ok False where ``flat`` is no token's index."""
    w2 = 2 * G2 - 1
    w1 = 2 * G1 - 1
    c2 = flat % w2
    rest = flat // w2
    c1 = rest % w1
    c0 = rest // w1
    ok = (flat >= 0) & (c2 < G2) & (c1 < G1) & (c0 < G0)
    return (c0 * G1 + c1) * G2 + c2, ok


@triton.jit
def rel_pos_tile(table_base, fq, fk, center, ok):
    """fp32 relative-position bias ``table[fq - fk + center]`` (0 where not ``ok``); fq and fk are
    broadcastable flat indices (``grid_flat``) of the query and key positions."""
    return tl.load(table_base + (fq - fk + center), mask=ok, other=0.0).to(tl.float32)


@triton.jit
def rel_pos_table_grad(dtab_base, ds, fq, q_first, q_last, k_first, k_last, k_pos0,
                       G0, G1, G2, center, S_K, BN: tl.constexpr, TW: tl.constexpr):
    """Add ``ds [BM, BN]`` (logit gradients of query rows with flat indices ``fq [BM]`` against keys
    ``k_pos0 + arange(BN)``) into a per-program table-gradient buffer at ``dtab_base``: entry ``t``
    gets every ``ds[i, j]`` with ``fq[i] - flat(k_j) + center == t``. Runs over the aligned chunks
    of ``TW`` entries that the tile can reach; each row meets an entry at most once, so a chunk is
    a gather along the key axis then a sum over rows. The read-add-write of the buffer is fenced
    by barriers (several threads may hold one entry)."""
    lo = grid_flat(q_first, G1, G2) - grid_flat(k_last, G1, G2) + center
    hi = grid_flat(q_last, G1, G2) - grid_flat(k_first, G1, G2) + center
    offs_t = tl.arange(0, TW)
    for chunk in range(lo // TW, hi // TW + 1):
        entry = chunk * TW + offs_t
        pos, ok = grid_position(fq[:, None] - (entry[None, :] - center), G0, G1, G2)
        col = pos - k_pos0
        ok = ok & (col >= 0) & (col < BN) & (pos < S_K)
        part = tl.sum(tl.where(ok, tl.gather(ds, tl.where(ok, col, 0), axis=1), 0.0), 0)
        ptrs = dtab_base + entry
        total = tl.load(ptrs) + part
        tl.debug_barrier()
        tl.store(ptrs, total)
        tl.debug_barrier()


# Neighborhood parameters (MASK_MODE 4), int32 (masks.neighborhood_params fills them): field ``f``
# of axis ``a`` at ``f * 3 + a`` (grids of 1 or 2 axes padded with leading axes of extent 1), then
# three flags: NA_ALIGNED + side (side 0: query tiles of BLOCK_M rows, 1: key tiles of BLOCK_N
# columns) when the order's tile extents are powers of two (NA_SHIFT: their log2) and every
# kernel tile of that side lies inside one tile of the order, so that the order tile is one scalar
# per kernel tile and in-tile coordinates are shifts and masks; NA_DILATED when some dilation > 1.
NA_GRID = tl.constexpr(0)
NA_TILE = tl.constexpr(1)
NA_TILES = tl.constexpr(2)
NA_KERNEL = tl.constexpr(3)
NA_DILATION = tl.constexpr(4)
NA_STRIDE = tl.constexpr(5)
NA_CAUSAL = tl.constexpr(6)
NA_SHIFT = tl.constexpr(7)
NA_FIELDS = 8
NA_ALIGNED = tl.constexpr(24)
NA_DILATED = tl.constexpr(26)
# Dilation-group folding (``NA_FOLDED``, masks.folded_params): an undilated neighborhood over the
# sub-grid of one dilation group, run for every group at once on tensors of the whole grid in its
# row-major order. After the flags: the dilations (axis 0, 1, 2) at NA_FOLD, the number of
# groups at NA_GROUPS, then each group's first grid row.
NA_FOLD = tl.constexpr(27)
NA_GROUPS = tl.constexpr(30)

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
        j1 = tile // n2
        j2 = tile - j1 * n2
    if AXES == 3:
        n1 = na_param(NA, NA_TILES, 1)
        j0 = j1 // n1
        j1 = j1 - j0 * n1
    return j0, j1, j2


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
    ``(c, G, 0)`` without dilation."""
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
def memory_rows(offs, first, NA, side: tl.constexpr, NA_STATIC: tl.constexpr,
                GRID_ORDER: tl.constexpr):
    """Rows of the q/k/v/o (and lse, delta) tensors that hold positions ``first + offs`` of a
    query (``side`` 0) or key (1) tile: the positions themselves, or with ``GRID_ORDER`` (tensors
    in the grid's row-major order, positions in the tiled order of the neighborhood parameters
    ``NA``) the grid rows of those positions. Positions past the sequence get rows the callers'
    bounds masks hide."""
    if GRID_ORDER:
        c0, c1, c2 = na_coords(offs, first, NA, side, NA_STATIC)
        if NA_FOLDED & NA_STATIC:
            # Sub-grid coordinates of one dilation group: the group's first row (added by the
            # caller) plus each coordinate times its dilation, in the whole grid.
            d1 = tl.load(NA + NA_FOLD + 1)
            d2 = tl.load(NA + NA_FOLD + 2)
            g1 = na_param(NA, NA_GRID, 1) * d1
            g2 = na_param(NA, NA_GRID, 2) * d2
            rows = ((c0 * tl.load(NA + NA_FOLD)) * g1 + c1 * d1) * g2 + c2 * d2
        else:
            rows = (c0 * na_param(NA, NA_GRID, 1) + c1) * na_param(NA, NA_GRID, 2) + c2
    else:
        rows = first + offs
    return rows


@triton.jit
def fold_group(b, NA, NA_STATIC: tl.constexpr):
    """``(b, first_row, groups)`` of a program on batch entry ``b`` of a folded call
    (``NA_FOLDED``: entries are ``batch * groups + group``): the batch, the group's first grid
    row and the number of groups; ``(b, 0, 1)`` otherwise."""
    first_row = tl.zeros([], dtype=tl.int64)
    groups = 1
    if NA_FOLDED & NA_STATIC:
        groups = tl.load(NA + NA_GROUPS)
        group = b % groups
        b = b // groups
        first_row = tl.load(NA + NA_GROUPS + 1 + group).to(tl.int64)
    return b, first_row, groups


@triton.jit
def bulk_copy_batch(b, first_row, NA, NA_STATIC: tl.constexpr):
    """``(b, r1, r2)``: what ``load_row_tiles`` needs of a program's batch entry. Under a dilation
    fold (``NA_FOLDED``; axis 0 undilated) ``r1, r2`` are the coordinates of the group's first row
    ``first_row`` along grid axes 1 and 2, which are its residues; 0 otherwise."""
    r1 = 0
    r2 = 0
    if NA_FOLDED & NA_STATIC:
        g2 = (na_param(NA, NA_GRID, 2) * tl.load(NA + NA_FOLD + 2)).to(tl.int64)
        r1 = (first_row // g2).to(tl.int32)
        r2 = (first_row - r1 * g2).to(tl.int32)
    return b, r1, r2


@triton.jit
def grid_box_origin(first, b, NA, side: tl.constexpr, NA_STATIC: tl.constexpr):
    """``(row0, c1, c2)``: the first three coordinates of the grid box holding the tile that starts
    at tiled position ``first`` (a query (``side`` 0) or key (1) tile), in the ``[B * G0, G1, G2,
    H, D]`` view of grid-order tensors of batch ``b``."""
    c0, c1, c2 = na_coords(first * 0, first, NA, side, NA_STATIC)
    return b * na_param(NA, NA_GRID, 0) + c0, c1, c2


@triton.jit
def load_row_tiles(desc_a, desc_b, first, batch, h, NA, side: tl.constexpr, NA_STATIC: tl.constexpr,
                   GRID_ORDER: tl.constexpr, ROWS: tl.constexpr, WIDTH_A: tl.constexpr,
                   WIDTH_B: tl.constexpr):
    """Bulk copies of positions ``first .. first + ROWS`` of batch ``batch`` (``bulk_copy_batch``),
    head ``h`` of two tensors: ``[ROWS, WIDTH_A]`` and ``[ROWS, WIDTH_B]`` (rows past the sequence
    and columns past D arrive as zeros). Row blocks of ``[B, S, H, D]`` descriptors; with
    ``GRID_ORDER`` the grid box of the tile (``grid_box_origin``; a query (``side`` 0) or key (1)
    tile); under a dilation fold the group's box in the ``[B * G0 * G1 / d1, d1, G2 / d2, d2,
    H * D]`` view of the whole grid (``flash_fwd.fold_descriptor``: axis 0 undilated, box extent 1
    along it, the group's sub-grid ``(G0, G1 / d1, G2 / d2)`` in ``NA``)."""
    b, r1, r2 = batch
    if GRID_ORDER:
        row0, c1, c2 = grid_box_origin(first, b, NA, side, NA_STATIC)
        if NA_FOLDED & NA_STATIC:
            row = row0 * na_param(NA, NA_GRID, 1) + c1
            tile_a = desc_a.load([row, r1, c2, r2, h * WIDTH_A]).reshape(ROWS, WIDTH_A)
            tile_b = desc_b.load([row, r1, c2, r2, h * WIDTH_B]).reshape(ROWS, WIDTH_B)
        else:
            tile_a = desc_a.load([row0, c1, c2, h, 0]).reshape(ROWS, WIDTH_A)
            tile_b = desc_b.load([row0, c1, c2, h, 0]).reshape(ROWS, WIDTH_B)
    else:
        tile_a = desc_a.load([b, first, h, 0]).reshape(ROWS, WIDTH_A)
        tile_b = desc_b.load([b, first, h, 0]).reshape(ROWS, WIDTH_B)
    return tile_a, tile_b


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
def na_penalty(windows, codes, NA_STATIC: tl.constexpr):
    """The neighborhood mask of ``na_allowed`` as an additive logit penalty: 0 where allowed,
    -inf elsewhere, summed over the grid axes. Each axis term depends on a row and one axis code
    of a column, so it takes only as many selects per thread as there are distinct (row, code)
    pairs (the key tile of an aligned order is a grid box), and the mask costs one add per axis
    per logit instead of a select per compare."""
    AXES: tl.constexpr = NA_STATIC // NA_AXES_UNIT % 4
    pen = tl.where((codes[2] >= windows[4]) & (codes[2] < windows[5]), 0.0, float("-inf"))
    if AXES >= 2:
        pen = pen + tl.where((codes[1] >= windows[2]) & (codes[1] < windows[3]), 0.0, float("-inf"))
    if AXES >= 3:
        pen = pen + tl.where((codes[0] >= windows[0]) & (codes[0] < windows[1]), 0.0, float("-inf"))
    return pen


@triton.jit
def score_tile(qk, q_row, q_pos, k_pos, q_local, k_local, S_Q, S_K,
               scale, qk_scale, softcap, slope, band_lo, band_hi,
               bias_base, s_bias_m, s_bias_n, bits_base, tile_bias, na_win, na_code,
               MASKED: tl.constexpr, MASK_MODE: tl.constexpr, SOFTCAP: tl.constexpr,
               ALIBI: tl.constexpr, TENSOR_BIAS: tl.constexpr, TILE_BIAS: tl.constexpr,
               NW: tl.constexpr, NB: tl.constexpr, NA_STATIC: tl.constexpr):
    """Returns ``(z2, t)``: logits in log2 units (-inf where masked) and, with SOFTCAP, the tanh
    value ``t`` of the cap (its derivative is ``1 - t^2``); without SOFTCAP ``t`` is ``z2``.

    qk: fp32 raw dot products. q_row: query row in [0, S_Q); q_pos = q_row + S_K - S_Q;
    k_pos: key position; q_local/k_local: row/column inside the tile (bitmask addressing);
    tile_bias: fp32 bias tile shaped like qk (read only with TILE_BIAS); bits_base: the tile's
    bitmask words (MASK_MODE 2) or its ``NB`` ``(lo, hi)`` offset bands (MASK_MODE 3);
    na_win / na_code: broadcastable neighborhood windows of one side and codes of the other
    (``na_allowed``; read only with MASK_MODE 4), NA_STATIC their compile-time switches.
    """
    if SOFTCAP or ALIBI or TENSOR_BIAS or TILE_BIAS:
        z = qk * scale
        t = z
        if SOFTCAP:
            t = tanh(z / softcap)
            z = softcap * t
        if ALIBI:
            dist = tl.abs(q_pos - k_pos).to(tl.float32)
            z = z - slope * dist
        if TENSOR_BIAS:
            ptrs = bias_base + q_row.to(tl.int64) * s_bias_m + k_pos.to(tl.int64) * s_bias_n
            if MASKED:
                b = tl.load(ptrs, mask=(q_row < S_Q) & (k_pos < S_K), other=0.0)
            else:
                b = tl.load(ptrs)
            z = z + b.to(tl.float32)
        if TILE_BIAS:
            z = z + tile_bias
        z2 = z * 1.4426950408889634
    else:
        z2 = qk * qk_scale
        t = z2
    if MASKED and MASK_MODE == 4 and (NA_EXACT & NA_STATIC):
        z2 = z2 + na_penalty(na_win, na_code, NA_STATIC)
    elif MASKED:
        allowed = k_pos < S_K
        # MASK_MODE: 0 bounds only, 1 offset band, 2 packed bitmask, 3 per-tile bands,
        # 4 N-D neighborhood (masks.py).
        if MASK_MODE == 1:
            d = q_pos - k_pos
            allowed = allowed & (d >= band_lo) & (d <= band_hi)
        if MASK_MODE == 3:
            d = q_pos - k_pos
            hit = (d >= tl.load(bits_base)) & (d <= tl.load(bits_base + 1))
            for i in tl.static_range(1, NB):
                hit = hit | ((d >= tl.load(bits_base + 2 * i)) & (d <= tl.load(bits_base + 2 * i + 1)))
            allowed = allowed & hit
        if MASK_MODE == 4:
            z2 = z2 + na_penalty(na_win, na_code, NA_STATIC)
        if MASK_MODE == 2:
            words = tl.load(bits_base + q_local * NW + k_local // 32)
            allowed = allowed & (((words >> (k_local % 32)) & 1) != 0)
        z2 = tl.where(allowed, z2, float("-inf"))
    return z2, t


def interpreter_range(*bounds):
    """``range`` for interpreted kernels: the interpreter holds scalars as 1-element arrays, which
    recent numpy refuses to turn into loop bounds. Kernel modules bind it as ``range`` only when
    INTERPRETED (the compiler needs the builtin)."""
    return builtins.range(*(int(b.handle.data.item()) if hasattr(b, "handle") else int(b)
                            for b in bounds))


if INTERPRETED:
    range = interpreter_range  # noqa: A001
