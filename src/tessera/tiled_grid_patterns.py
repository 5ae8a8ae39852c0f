"""Grid patterns that are no neighborhood (shifted Swin windows, HaloNet blocks with halos, CSWin
stripes, criss-cross), run in a tiled token order where that pays.

In the grid's row-major order some of these patterns spread each query tile's keys over many
partial key tiles (a 128-token query tile of a 64 x 64 grid is two rows of the image; its CSWin
stripes touch every key tile). In a ``GridLayout`` of compact tiles they list fewer: on 64 x 64
tokens with the forward's 128 x 64 kernel tiles, CSWin with 8-wide stripes goes from 4,608 listed
tiles to 1,536 in 8 x 8 layout tiles, criss-cross from 8,192 to 2,816. Shifted Swin windows line
up with tiles once the grid is rolled as Swin computes them (``GridPattern.rolled``): 8 x 8 windows
over 64 x 64 tokens list 256 tiles instead of 960, 7 x 7 windows over 56 x 56 in 7 x 7 tiles
(``GridPattern.window_tiles``) 2.1x fewer tile units. A halo of 3 around 8 x 8 blocks gains 1.4x.
``tiled_layout`` picks the form with the fewest tile units at the forward kernel's tiles and
takes it where it has at most ``1 / MIN_GAIN`` of the row-major units; ``tiled_grid_call``
permutes q, k and v into it (one gather each), runs the permuted pattern and puts o and lse back
(one gather each; the backward mirrors them).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

import torch

from .kernels.registry import AttentionCall
from .patterns.layout import ChainedOrder, GridLayout, GridPattern, Permuted, TokenOrder, tile_shapes
from .patterns.neighborhood import PARTIAL_COST, Neighborhood

# Layout tiles hold this many tokens (one 64-row kernel tile).
TILE_TOKENS = 64
# The tiled order is taken where its tile units (full + PARTIAL_COST x partial tiles at the forward
# kernel's tiles, in 64 x 64 tiles' worth of pairs) are at most 1 / MIN_GAIN of the row-major order's: the gathers in and out cost
# about as much as the kernels save below that. On an H200 (bf16, B = 32, H = 4, D = 32; 64 x 64
# grids, ``benchmarks/vision.py``, results/2026-12-02-h200-vision-2.json) units 3.0x and 2.9x
# fewer ran the forward 1.83x and 2.07x faster (CSWin, criss-cross), 1.38x fewer ran it 1.34x
# slower (halo 3), 0.8x ran it 2.2x slower (shifted Swin).
MIN_GAIN = 2.0

# (repr(pattern), heads, head dim, dtype) -> the chosen tiled form (None: row-major).
_LAYOUTS: dict = {}
MAX_LAYOUTS = 64


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
        from .kernels.triton.masks import pattern_key
        best = best._replace(pattern_key=pattern_key(best.pattern))
    if len(_LAYOUTS) >= MAX_LAYOUTS:
        _LAYOUTS.clear()
    _LAYOUTS[key] = best
    return best


def tiled_grid_call(call: AttentionCall, backend: str,
                    run: Callable[[AttentionCall], tuple]) -> Optional[tuple]:
    """``(o [B, S, H, D_v], lse [B, H, S] or None)`` of ``call`` run by ``run`` in the tiled form
    of ``tiled_layout``, where the call's pattern is a ``GridPattern`` that is no ``Neighborhood``,
    the call goes to the Triton kernels (``backend`` "triton", or "auto" on CUDA), has no bias
    (a bias is indexed in the caller's order) and no varlen lengths, and a tiled order pays; else
    None. Scores, softcap, sinks and determinism carry over unchanged (none depends on order)."""
    pattern = call.pattern
    if (not isinstance(pattern, GridPattern) or isinstance(pattern, Neighborhood) or call.bias is not None
            or call.cu_seqlens_q is not None or call.q.shape[1] < 2 * TILE_TOKENS):
        return None
    if not (backend == "triton" or (backend == "auto" and call.q.device.type == "cuda")):
        return None
    form = tiled_layout(pattern, call.q.shape[2], max(call.q.shape[-1], call.v.shape[-1]), call.q.dtype)
    if form is None:
        return None
    order = form.order
    tiled = dataclasses.replace(call, q=order.permute(call.q, 1), k=order.permute(call.k, 1),
                                v=order.permute(call.v, 1), pattern=form.pattern, pattern_key=form.pattern_key)
    o, lse = run(tiled)
    return order.unpermute(o, 1), (order.unpermute(lse, 2) if call.return_lse else None)


__all__ = ["TiledForm", "layout_shapes", "tiled_layout", "tiled_grid_call", "TILE_TOKENS", "MIN_GAIN"]
