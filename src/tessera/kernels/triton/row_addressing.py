"""Where the rows of a flash-kernel tile live: the grid rows of a tiled order's positions
(``memory_rows``), a dilation fold's batch entries (``fold_group``, ``bulk_copy_batch``), and the
bulk copies (TMA) of a tile's rows in and out (``row_tile_origin``, ``load_row_tiles``,
``store_row_tile``, ``store_rows``)."""

import triton
import triton.language as tl

from .na_mask import (NA_BATCH_AXIS, NA_FOLD, NA_FOLDED, NA_GRID, NA_GROUPS, NA_ROLL, NA_ROLLED, NA_ROW_MAP,
                      NA_ROWS, na_coords, na_param)


@triton.jit
def memory_rows(offs, first, NA, side: tl.constexpr, NA_STATIC: tl.constexpr,
                GRID_ORDER: tl.constexpr):
    """Rows of the q/k/v/o (and lse, delta) tensors that hold positions ``first + offs`` of a
    query (``side`` 0) or key (1) tile: the positions themselves, or with ``GRID_ORDER`` (tensors
    in the grid's row-major order, positions in the tiled order of the neighborhood parameters
    ``NA``) the grid rows of those positions, after the grid's roll where it has one
    (``NA_ROLLED``), or read from the row map (``NA_ROW_MAP``). Positions past the sequence get
    rows the callers' bounds masks hide."""
    if GRID_ORDER and NA_ROW_MAP & NA_STATIC:
        rows = tl.load(NA + NA_ROWS + first + offs)
    elif GRID_ORDER:
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
            if NA_ROLLED & NA_STATIC:
                c0 = rolled_coord(c0, NA, 0)
                c1 = rolled_coord(c1, NA, 1)
                c2 = rolled_coord(c2, NA, 2)
            rows = (c0 * na_param(NA, NA_GRID, 1) + c1) * na_param(NA, NA_GRID, 2) + c2
    else:
        rows = first + offs
    return rows


@triton.jit
def rolled_coord(c, NA, axis: tl.constexpr):
    """The tensors' coordinate ``(c + roll) % G`` on ``axis`` of the pattern's coordinate ``c``
    (``0 <= c < G``; past the grid, a coordinate the callers' bounds masks hide) of a rolled grid
    (``NA_ROLLED``)."""
    g = na_param(NA, NA_GRID, axis)
    c = c + tl.load(NA + NA_ROLL + axis)
    return tl.where(c >= g, c - g, c)


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
def row_tile_origin(first, batch, h, NA, side: tl.constexpr, NA_STATIC: tl.constexpr,
                    GRID_ORDER: tl.constexpr, WIDTH: tl.constexpr):
    """Descriptor coordinates of the row tile holding positions ``first .. first + rows`` of batch
    ``batch`` (``bulk_copy_batch``), head ``h``: a row block of a ``[B, S, H, D]`` descriptor;
    with ``GRID_ORDER`` the grid box of the tile (``grid_box_origin``; a query (``side`` 0) or key
    (1) tile); under a dilation fold the group's box in the ``[B * G0 * G1 / d1, d1, G2 / d2, d2,
    H * D]`` view of the whole grid (``flash_fwd.fold_descriptor``: axis 0 undilated, box extent 1
    along it, the group's sub-grid ``(G0, G1 / d1, G2 / d2)`` in ``NA``); with ``NA_BATCH_AXIS``
    the box in the ``[B, G0, G1, G2, H * D]`` view (``flash_fwd.batch_axis_view``)."""
    b, r1, r2 = batch
    if GRID_ORDER:
        row0, c1, c2 = grid_box_origin(first, b, NA, side, NA_STATIC)
        if NA_FOLDED & NA_STATIC:
            origin = (row0 * na_param(NA, NA_GRID, 1) + c1, r1, c2, r2, h * WIDTH)
        elif NA_BATCH_AXIS & NA_STATIC:
            origin = (b, row0 - b * na_param(NA, NA_GRID, 0), c1, c2, h * WIDTH)
        else:
            origin = (row0, c1, c2, h, 0)
    else:
        origin = (b, first, h, 0)
    return origin


@triton.jit
def store_row_tile(desc, tile, first, batch, h, NA, side: tl.constexpr, NA_STATIC: tl.constexpr,
                   GRID_ORDER: tl.constexpr, WIDTH: tl.constexpr):
    """Bulk store of ``tile [ROWS, WIDTH]`` to the row tile at ``row_tile_origin`` (rows past the
    sequence and columns past D are not written)."""
    origin = row_tile_origin(first, batch, h, NA, side, NA_STATIC, GRID_ORDER, WIDTH)
    desc.store(origin, tile.reshape(desc.block_shape))


@triton.jit
def store_rows(desc, ptrs, mask, tile, first, batch, h, NA, side: tl.constexpr,
               NA_STATIC: tl.constexpr, GRID_ORDER: tl.constexpr, WIDTH: tl.constexpr,
               BULK: tl.constexpr):
    """Write ``tile [ROWS, WIDTH]``: by a bulk store to its row tile (``store_row_tile``) with
    ``BULK``, else through the pointers ``ptrs`` where ``mask`` holds (the caller's pointer
    arithmetic then goes unused and compiles away)."""
    if BULK:
        store_row_tile(desc, tile, first, batch, h, NA, side, NA_STATIC, GRID_ORDER, WIDTH)
    else:
        tl.store(ptrs, tile, mask=mask)


@triton.jit
def load_row_tiles(desc_a, desc_b, first, batch, h, NA, side: tl.constexpr, NA_STATIC: tl.constexpr,
                   GRID_ORDER: tl.constexpr, ROWS: tl.constexpr, WIDTH_A: tl.constexpr,
                   WIDTH_B: tl.constexpr):
    """Bulk copies of the row tile at ``row_tile_origin`` from two tensors (the origin found
    once): ``[ROWS, WIDTH_A]``, ``[ROWS, WIDTH_B]`` (rows past the sequence and columns past D
    arrive as zeros)."""
    origin = row_tile_origin(first, batch, h, NA, side, NA_STATIC, GRID_ORDER, WIDTH_A)
    tile_a = desc_a.load(origin).reshape(ROWS, WIDTH_A)
    if WIDTH_B != WIDTH_A and NA_FOLDED & NA_STATIC:
        # The fold's origin ends at head h's first column, h * WIDTH.
        origin = row_tile_origin(first, batch, h, NA, side, NA_STATIC, GRID_ORDER, WIDTH_B)
    tile_b = desc_b.load(origin).reshape(ROWS, WIDTH_B)
    return tile_a, tile_b
