"""Grid patterns that are no neighborhood (shifted Swin windows, HaloNet blocks with halos, CSWin
stripes, criss-cross), run in a tiled token order.

In the grid's row-major order these patterns spread each query tile's keys over many partial key
tiles (a 64-token query tile of a 64 x 64 grid is one row of the image; its CSWin stripes touch
every key tile). In a ``GridLayout`` of compact tiles most listed tiles are full or absent: on
64 x 64 tokens in 8 x 8 tiles, CSWin with 8-wide stripes goes from 11,674 to 2,048 tile units
(full + ``PARTIAL_COST`` x partial, 64 x 64 kernel tiles), criss-cross from 5,306 to 1,248, halo
3 around 8 x 8 blocks from 1,102 to 610. ``tiled_layout`` picks the cheapest tile shape by those
units; ``tiled_grid_call`` permutes q, k and v into it (one gather each), runs the permuted pattern
and puts o and lse back (one gather each; the backward mirrors them).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from .kernels.registry import AttentionCall
from .patterns.layout import GridLayout, GridPattern, Permuted, tile_shapes
from .patterns.neighborhood import PARTIAL_COST, Neighborhood

# Layout tiles hold this many tokens (one 64-row kernel tile); the plans are costed in 64 x 64
# kernel tiles.
TILE_TOKENS = 64
# The tiled order is taken where its tile units are at most 1 / MIN_GAIN of the row-major ones.
MIN_GAIN = 1.25

# (repr(pattern), heads) -> the chosen layout (None: row-major).
_LAYOUTS: dict = {}
MAX_LAYOUTS = 64


def _units(pattern, size: int, heads: int) -> float:
    tiles = pattern.tile_map(size, size, TILE_TOKENS, TILE_TOKENS, heads)
    listed, full = int(tiles.kv_count.sum()), int(tiles.kv_full.sum())
    return full + PARTIAL_COST * (listed - full)


def tiled_layout(pattern: GridPattern, heads: int) -> Optional[GridLayout]:
    """The ``GridLayout`` (``TILE_TOKENS``-token tiles dividing the grid) with the fewest tile
    units for ``pattern`` over ``heads`` heads, when it has at most ``1 / MIN_GAIN`` of the
    row-major order's; else None. Remembered per pattern (its repr) and head count."""
    key = (repr(pattern), heads)
    if key in _LAYOUTS:
        return _LAYOUTS[key]
    size = pattern.size
    best, best_units = None, _units(pattern, size, heads) / MIN_GAIN
    for shape in tile_shapes(pattern.grid, TILE_TOKENS):
        layout = GridLayout(pattern.grid, shape)
        units = _units(Permuted(pattern, layout), size, heads)
        if units <= best_units:
            best, best_units = layout, units
    if len(_LAYOUTS) >= MAX_LAYOUTS:
        _LAYOUTS.clear()
    _LAYOUTS[key] = best
    return best


def tiled_grid_call(call: AttentionCall, backend: str,
                    run: Callable[[AttentionCall], tuple]) -> Optional[tuple]:
    """``(o [B, S, H, D_v], lse [B, H, S] or None)`` of ``call`` run by ``run`` in the tiled order
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
    layout = tiled_layout(pattern, call.q.shape[2])
    if layout is None:
        return None
    tiled = dataclasses.replace(call, q=layout.permute(call.q, 1), k=layout.permute(call.k, 1),
                                v=layout.permute(call.v, 1), pattern=Permuted(pattern, layout),
                                pattern_key=None)
    o, lse = run(tiled)
    return layout.unpermute(o, 1), (layout.unpermute(lse, 2) if call.return_lse else None)


__all__ = ["tiled_layout", "tiled_grid_call", "TILE_TOKENS", "MIN_GAIN"]
