"""Grid patterns that are no neighborhood (shifted Swin windows, HaloNet blocks with halos, CSWin
stripes, criss-cross), run in a tiled token order where that pays.

In the grid's row-major order some of these patterns spread each query tile's keys over many
partial key tiles (a 128-token query tile of a 64 x 64 grid is two rows of the image; its CSWin
stripes touch every key tile). In a ``GridLayout`` of compact tiles they list fewer: on 64 x 64
tokens with the forward's 128 x 64 kernel tiles, CSWin with 8-wide stripes goes from 4,608 listed
tiles to 1,536 in 8 x 8 layout tiles, criss-cross from 8,192 to 2,816. Shifted Swin windows line
up with tiles once the grid is rolled as Swin computes them (``GridPattern.rolled``): 8 x 8 windows
over 64 x 64 tokens list 256 tiles instead of 960, 7 x 7 windows over 56 x 56 in 7 x 7 tiles
(``GridPattern.window_tiles``) 2.9x fewer tile units. A halo of 3 around 8 x 8 blocks gains 1.8x.
``tiled_layout`` picks the form with the fewest tile units at the forward kernel's tiles and
takes it where it has at most ``1 / MIN_GAIN`` of the row-major units. ``tiled_grid_call`` runs
the permuted pattern with q, k, v, o and lse left in the caller's order: the Triton kernels
address each tiled position's row in the grid themselves (``AttentionCall.grid_order``), as
natten's path does: from the layout's tile extents where they are powers of two (on the rolled
grid through a ``GridRoll``), else through a row map (``GridRows``). Where the kernels cannot (no
Triton kernels for the call, ``IN_KERNEL`` off) it permutes q, k and v into the order (one gather
each) and o and lse back (the backward mirrors them).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, NamedTuple, Optional

import torch

from .kernels import registry
from .kernels.registry import AttentionCall
from .patterns.layout import (ChainedOrder, CyclicShift, GridLayout, GridPattern, Permuted, TokenOrder,
                              tile_shapes)
from .patterns.neighborhood import PARTIAL_COST, Neighborhood

# Layout tiles hold this many tokens (one 64-row kernel tile).
TILE_TOKENS = 64
# The tiled order is taken where its tile units (full + PARTIAL_COST x partial tiles at the forward
# kernel's tiles, in 64 x 64 tiles' worth of pairs) are at most 1 / MIN_GAIN of the row-major
# order's. With the kernels addressing the caller's order (no gathers) an order that lists fewer
# units runs faster: on an H200 (bf16, D = 32, ``benchmarks/vision.py``, CUDA graphs) a halo of 3
# around 8 x 8 blocks of 64 x 64 tokens (1.8x fewer units; B = 32, H = 4) ran its forward 1.62x
# and its forward+backward 1.77x faster than row-major, shifted 7 x 7 windows over 28 x 28 (1.95x;
# B = 64, H = 6) 1.43x and 1.40x (results/tuning/2026-12-03-h200-vision-{halo,swin28}-min-gain-*.json;
# at the former MIN_GAIN of 2 the route declined both). TESSERA_TILED_MIN_GAIN overrides it.
MIN_GAIN = float(os.environ.get("TESSERA_TILED_MIN_GAIN", "1.2"))

# (repr(pattern), heads, head dim, dtype) -> the chosen tiled form (None: row-major).
_LAYOUTS: dict = {}
MAX_LAYOUTS = 64

# Whether the Triton kernels address the tiled order in the caller's grid order (no gathers).
# TESSERA_TILED_IN_KERNEL=0 turns it off (A/B comparisons).
IN_KERNEL = os.environ.get("TESSERA_TILED_IN_KERNEL", "1") != "0"
# "1": the kernels find every tiled order's positions through a row map (``masks.GridRows``),
# also where the layout's fields would do (A/B comparisons); "auto": only where they would not.
ROW_MAP = os.environ.get("TESSERA_TILED_ROW_MAP", "auto")


def _units(pattern, size: int, heads: int, dim: int, dtype: torch.dtype) -> float:
    """Tile units of ``pattern`` at the forward kernel's tiles (full tiles plus ``PARTIAL_COST``
    per partial one), in 64 x 64 tiles' worth of pairs: orders whose kernels take different tile
    sizes compare by the pairs they compute."""
    from .kernels.triton.backend import estimated_forward_tiles
    block_m, block_n = estimated_forward_tiles(pattern, size, size, heads, dim, dtype)
    tiles = pattern.tile_map(size, size, block_m, block_n, heads)
    listed, full = int(tiles.kv_count.sum()), int(tiles.kv_full.sum())
    return (full + PARTIAL_COST * (listed - full)) * block_m * block_n / 4096


class TiledForm(NamedTuple):
    """A grid pattern's attention in another token order: q, k and v go through ``order.permute``,
    the kernels run ``pattern`` (over the reordered tokens), o and lse come back through
    ``order.unpermute``."""

    order: TokenOrder
    pattern: Permuted
    pattern_key: object = None      # the kernels' cache identity of ``pattern``, set once chosen
    # How the kernels find ``pattern``'s positions in the caller's order, set once chosen: None
    # (the layout's own fields, ``masks.grid_order_params``), a ``masks.GridRoll`` (those of the
    # rolled grid) or a ``masks.GridRows`` (a row map: ``order.positions()``).
    rows: object = None


def layout_shapes(pattern: GridPattern) -> list[tuple[int, ...]]:
    """Tile shapes the tiled route tries for ``pattern``: those of ``TILE_TOKENS`` tokens that
    divide the grid, then the pattern's own window shapes (``GridPattern.window_tiles``)."""
    shapes = tile_shapes(pattern.grid, TILE_TOKENS)
    return shapes + [tuple(s) for s in pattern.window_tiles() if tuple(s) not in shapes]


def _candidates(pattern: GridPattern):
    """``(order, pattern)`` pairs: each ``layout_shapes`` ``GridLayout`` of the grid, and where the
    pattern has a rolled form (``GridPattern.rolled``) each of the rolled grid."""
    for shape in layout_shapes(pattern):
        layout = GridLayout(pattern.grid, shape)
        yield TiledForm(layout, Permuted(pattern, layout))
    rolled = pattern.rolled()
    if rolled is not None:
        shift, rule = rolled
        for shape in layout_shapes(rule):
            layout = GridLayout(pattern.grid, shape)
            yield TiledForm(ChainedOrder(shift, layout), Permuted(rule, layout))


def tiled_layout(pattern: GridPattern, heads: int, dim: int, dtype: torch.dtype) -> Optional[TiledForm]:
    """The tiled form (``_candidates``: a ``GridLayout`` of ``layout_shapes`` tiles, after a cyclic
    shift where the pattern has one) with the fewest tile units for
    ``pattern`` over ``heads`` heads of head dim ``dim`` in ``dtype`` (the forward kernel's tiles
    on a GPU; ties go to the squarest tiles, then to the unshifted grid), when it has at most
    ``1 / MIN_GAIN`` of the row-major order's; else None. Remembered per pattern (its repr),
    heads, head dim and dtype."""
    key = (repr(pattern), heads, dim, dtype)
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    size = pattern.size
    best, best_key = None, (_units(pattern, size, heads, dim, dtype) / MIN_GAIN, 0.0)
    for form in _candidates(pattern):
        shape = form.pattern.layout.tile_shape
        candidate = (_units(form.pattern, size, heads, dim, dtype), max(shape) / min(shape))
        if candidate[0] <= best_key[0] and (best is None or candidate < best_key):
            best, best_key = form, candidate
    if best is not None:
        best = _settled(best)
    if len(_LAYOUTS) >= MAX_LAYOUTS:
        _LAYOUTS.clear()
    _LAYOUTS[key] = best
    return best


def _settled(form: TiledForm) -> TiledForm:
    """``form`` with its pattern key and the kernels' addressing of it in the caller's order: a
    ``GridLayout`` of the grid (or of the grid rolled by a ``CyclicShift``) whose tiles have
    power-of-two extents holding whole kernel tiles, by its fields (and the roll; unless
    ``ROW_MAP`` is "1"); any other order by a row map."""
    from .kernels.triton.masks import GridRoll, GridRows, grid_order_params, pattern_key
    order, roll = form.order, None
    if isinstance(order, ChainedOrder) and isinstance(order.first, CyclicShift):
        roll, order = GridRoll(order.first.grid, order.first.shift), order.then
    params = grid_order_params(form.pattern, 64, 64) if order == form.pattern.layout else None
    aligned = params is not None and params[-3] == 1 and params[-2] == 1
    rows = roll if aligned and ROW_MAP != "1" else GridRows(form.order.positions(), repr(form.order))
    return form._replace(pattern_key=pattern_key(form.pattern), rows=rows)


def call_form(call: AttentionCall, backend: str) -> Optional[TiledForm]:
    """The tiled form ``tiled_grid_call`` runs ``call`` in (see there), or None where it leaves the
    call to the caller."""
    pattern = call.pattern
    if (not isinstance(pattern, GridPattern) or isinstance(pattern, Neighborhood) or call.bias is not None
            or call.cu_seqlens_q is not None or call.q.shape[1] < 2 * TILE_TOKENS):
        return None
    if not (backend == "triton" or (backend == "auto" and call.q.device.type == "cuda")):
        return None
    return tiled_layout(pattern, call.q.shape[2], max(call.q.shape[-1], call.v.shape[-1]), call.q.dtype)


def in_kernel_call(call: AttentionCall, backend: str) -> Optional[AttentionCall]:
    """The grid-order call the Triton backend runs for ``call`` on the tiled route (what
    ``tiled_grid_call`` hands it), or None where the route does not take ``call`` or gathers."""
    form = call_form(call, backend)
    return _in_kernel_call(call, form) if form is not None and IN_KERNEL else None


def tiled_grid_call(call: AttentionCall, backend: str,
                    run: Callable[[AttentionCall], tuple]) -> Optional[tuple]:
    """``(o [B, S, H, D_v], lse [B, H, S] or None)`` of ``call`` run by ``run`` in the tiled form
    of ``tiled_layout``, where the call's pattern is a ``GridPattern`` that is no ``Neighborhood``,
    the call goes to the Triton kernels (``backend`` "triton", or "auto" on CUDA), has no bias
    (a bias is indexed in the caller's order) and no varlen lengths, and a tiled order pays; else
    None. Scores, softcap, sinks and determinism carry over unchanged (none depends on order).
    Where the Triton backend takes the call in grid order (``in_kernel_call``) it runs there
    with no reordering; else ``run`` takes the reordered tensors."""
    form = call_form(call, backend)
    if form is None:
        return None
    in_kernel = _in_kernel_call(call, form) if IN_KERNEL else None
    if in_kernel is not None:
        o, lse = registry.get_backend("triton").run(in_kernel)
        return o, (lse if call.return_lse else None)
    order = form.order
    tiled = dataclasses.replace(call, q=order.permute(call.q, 1), k=order.permute(call.k, 1),
                                v=order.permute(call.v, 1), pattern=form.pattern, pattern_key=form.pattern_key)
    o, lse = run(tiled)
    return order.unpermute(o, 1), (order.unpermute(lse, 2) if call.return_lse else None)


def _in_kernel_call(call: AttentionCall, form: TiledForm) -> Optional[AttentionCall]:
    """``call`` over ``form``'s pattern with q, k, v in the caller's order, addressed by the
    kernels (``grid_order``, ``grid_rows``), or None when the Triton backend does not take it."""
    if "triton" not in registry.available_backends():
        return None
    in_kernel = dataclasses.replace(call, pattern=form.pattern, pattern_key=form.pattern_key,
                                    grid_order=True, grid_rows=form.rows)
    return in_kernel if registry.get_backend("triton").supports(in_kernel) is None else None


__all__ = ["TiledForm", "layout_shapes", "tiled_layout", "call_form", "in_kernel_call", "tiled_grid_call",
           "TILE_TOKENS", "MIN_GAIN"]
