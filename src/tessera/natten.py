"""Neighborhood attention on 1-, 2- and 3-D token grids with NATTEN's interface: ``na1d``, ``na2d``,
``na3d``.

The tensors are flattened to ``[B, S, H, D]`` (row-major over the grid), optionally reordered tile
by tile (``GridLayout``) so that neighborhoods become dense tiles for the block-sparse kernels, run
through ``tessera.attention`` with the ``Neighborhood`` pattern, and put back in grid shape. For
undilated neighborhoods on the Triton backend (``grid_order_in_kernel``) the kernels instead read
and write the grid-order tensors through the tile order themselves (no reordering copies;
``AttentionCall.grid_order``). With the "auto" layout, a dilated neighborhood whose dilations divide
the grid runs as one undilated neighborhood per dilation group, the groups batched
(``dilation_groups``): on the Triton backend in place, every group addressed in the whole grid by
the kernels (``masks.DilationFold``; ``TESSERA_NATTEN_FOLD=0`` turns it off), else gathered into
the groups' order and back.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass
from typing import Optional, Union

import torch

from .api import _build_call, _check_backend_name, _choose_backend, unrouted_attention
from .compile_support import recomputed_gradients
from .grid_padding import pad_grid, pad_grids, unpad_grid
from .kernels import registry
from .kernels.triton import route_settings
from .kernels.triton.masks import DilationFold, pattern_key
from .kernels.triton.prepared_run import PreparedRun
from .natten_additional import check_additional_kv, with_additional_kv
from .patterns.layout import (DilationGroupOrder, GridLayout, Permuted, as_axes, box_tile_counts,
                              choose_padded_tile_shape, choose_tile_shape, padded_grid, rows_box)
from .patterns.neighborhood import PARTIAL_COST, Neighborhood, PaddedNeighborhood

# Tiled orders addressed inside the Triton kernels instead of reordering q, k, v and o (4 + 4
# gathers of [B, S, H, D] per forward and backward): True, False, or None for the measured rule
# (``grid_order_in_kernel``). TESSERA_NATTEN_GRID_ORDER=1 / 0 forces it on / off.
GRID_ORDER_IN_KERNEL: Optional[bool] = {"1": True, "0": False}.get(os.environ.get("TESSERA_NATTEN_GRID_ORDER", ""))


def grid_order_in_kernel(dilation: tuple) -> bool:
    """Whether the Triton kernels address the tiled order of a neighborhood with this per-axis
    ``dilation`` themselves. Measured on an H200 (``benchmarks/natten.py --grid-order on|off``,
    bf16, D = 128): undilated 2-D 17 x 17 forward 1.41x, 3-D blocked 4 x 8 x 8 forward+backward
    1.52x faster than reordering; dilated (interleaved groups: gathers) 6-7% slower."""
    if GRID_ORDER_IN_KERNEL is not None:
        return GRID_ORDER_IN_KERNEL
    return all(d == 1 for d in dilation)

# Tokens per tile when ``layout="auto"`` reorders the grid: the kernels' tile size on neighborhood
# maps (64 x 64: their partial tiles make them "ragged" in kernels.triton.tuning). Against 128-token
# layout tiles with 128 x 128 kernel tiles, a 2-D 17 x 17 neighborhood visits 576 instead of 1056
# keys per query tile (tile maps of the 128 x 128 grid).
AUTO_TILE_TOKENS = 64


def dilation_groups(grid, dilation) -> Optional[tuple[int, ...]]:
    """The sub-grid ``grid[a] // dilation[a]`` spanned by each dilation group of a neighborhood,
    when some dilation exceeds 1 and every dilation divides its axis; else None.

    Per axis, a dilated neighborhood is an undilated one inside each group of coordinates with one
    remainder modulo the dilation (``Neighborhood``: window, stride and causality are all taken in
    group coordinates). With groups of equal extent the attention is therefore ``prod(dilation)``
    undilated neighborhoods on the sub-grid, which run as one batch: every tile then holds tokens of
    one group and visits as few key tiles as an undilated neighborhood, where a tiled order of the
    whole grid mixes the groups in each tile (2-D 128 x 128, 17 x 17, dilation 2, 64 x 64 tiles:
    25 key tiles per query tile, all partial, against 9 per group, some full)."""
    if all(d == 1 for d in dilation) or any(g % d for g, d in zip(grid, dilation)):
        return None
    return tuple(g // d for g, d in zip(grid, dilation))


@functools.lru_cache(maxsize=32)
def _group_plan(grid, kernel, dilation, stride, causal, device_type: str):
    """``(sub_pattern, order, key)`` of a dilated neighborhood run per dilation group on a device
    of ``device_type``: the undilated neighborhood of one group (in its sub-grid's tiled order when
    the "auto" layout tiles it there or the group fits one kernel tile), the
    ``DilationGroupOrder`` that gathers the groups and the sub-pattern's ``pattern_key``."""
    sub_pattern = Neighborhood(dilation_groups(grid, dilation), kernel, 1, stride, causal)
    sub_layout = _resolve_layout("auto", sub_pattern.grid, sub_pattern.kernel, sub_pattern.dilation,
                                 sub_pattern.stride, sub_pattern.causal, torch.device(device_type))
    if sub_layout is None and sub_pattern.size <= AUTO_TILE_TOKENS:
        # A group that fits one kernel tile is one tile pair in its own row-major order (a
        # layout of a single tile), which the fold addresses in place (MaxViT grid attention).
        sub_layout = _grid_layout(sub_pattern.grid, sub_pattern.grid)
    order = DilationGroupOrder(grid, dilation, sub_layout)
    sub_pattern = sub_pattern if sub_layout is None else Permuted(sub_pattern, sub_layout)
    return sub_pattern, order, pattern_key(sub_pattern)


# Dilation groups addressed inside the Triton kernels (``masks.DilationFold``) instead of
# gathering q, k, v into the groups' order and o back (4 + 4 gathers per forward and backward):
# TESSERA_NATTEN_FOLD=0 turns it off.
DILATION_FOLD_IN_KERNEL = os.environ.get("TESSERA_NATTEN_FOLD", "1") != "0"


@functools.lru_cache(maxsize=32)
def _dilation_fold(grid, dilation) -> DilationFold:
    return DilationFold(grid, dilation)


def _fold_plan(pattern: Neighborhood, backend: str, device: torch.device) -> Optional[tuple]:
    """``(sub_pattern, key)`` (``_group_plan``'s) of the dilated ``pattern`` run through a
    dilation fold on ``backend`` and ``device``, or None where the fold does not take it: the fold
    off, the call not for the Triton backend, dilations that do not divide the grid, or a
    sub-grid with no tiled order."""
    if not (DILATION_FOLD_IN_KERNEL and _wants_triton(backend, device)
            and dilation_groups(pattern.grid, pattern.dilation) is not None):
        return None
    sub_pattern, _order, key = _group_plan(pattern.grid, pattern.kernel, pattern.dilation, pattern.stride,
                                           pattern.causal, device.type)
    return (sub_pattern, key) if isinstance(sub_pattern, Permuted) else None


def folds_in_kernel(pattern: Neighborhood, backend: str, device: torch.device) -> bool:
    """Whether ``neighborhood_attention`` runs the dilated ``pattern`` through a dilation fold
    (``_folded_run``: every group addressed in place, no copies) on ``backend`` and ``device``,
    unless the Triton backend declines the call's tensors."""
    return _fold_plan(pattern, backend, device) is not None


def _folded_run(q, k, v, pattern: Neighborhood, na_dim: int, backend: str, scale, return_lse: bool,
                chosen=None):
    """``(o, lse)`` (grid-shaped, lse None unless ``return_lse``) of a dilated ``pattern`` whose
    dilations divide the grid, run by the Triton kernels on the whole grid in its row-major
    order, every dilation group at once (``DilationFold``); None when the fold does not take it
    (``_fold_plan``) or the backend declines. ``chosen``: as ``_extent_only_run``'s."""
    fold_plan = _fold_plan(pattern, backend, q.device)
    if fold_plan is None:
        return None
    sub_pattern, key = fold_plan
    grid = pattern.grid
    batch, n = q.shape[0], math.prod(grid)
    flat = [t.reshape(batch, n, *t.shape[1 + na_dim:]) for t in (q, k, v)]
    signature = _fold_signature(flat, key, pattern.dilation, backend, scale, return_lse)
    prepared = _prepared(signature)
    out = _run_prepared(prepared, flat, chosen) if prepared is not None else None
    if out is None:
        # The sub-pattern covers one group, not the call's length: it joins after the checks.
        call, _ = _build_call(*flat, scale=scale, return_lse=return_lse)
        call.pattern, call.pattern_key, call.grid_order = sub_pattern, key, True
        call.dilation_fold = _dilation_fold(grid, pattern.dilation)
        out = _run_and_prepare(call, signature, chosen)
        if out is None:
            return None
    o, lse = out
    o = o.reshape(batch, *grid, *o.shape[2:])
    return o, (lse.reshape(batch, lse.shape[1], *grid) if return_lse else None)


def _per_dilation_group(q, k, v, pattern: Neighborhood, na_dim: int, backend: str, scale,
                        return_lse: bool, chosen=None):
    """``neighborhood_attention`` of a dilated ``pattern`` whose dilations divide the grid, run as
    the undilated neighborhood of every dilation group, batched (``dilation_groups``): one gather
    of q, k and v into the groups' tiled order (``DilationGroupOrder``) and one of o back.
    ``chosen``: as ``_extent_only_run``'s, for the dilation fold's run alone."""
    folded = _folded_run(q, k, v, pattern, na_dim, backend, scale, return_lse, chosen)
    if folded is not None:
        return folded if return_lse else folded[0]
    grid = pattern.grid
    tiles = _group_padding(pattern, backend, q.device)
    if tiles is not None:
        return _padded_groups(q, k, v, pattern, tiles, na_dim, backend, scale, return_lse)
    sub_pattern, order, key = _group_plan(grid, pattern.kernel, pattern.dilation, pattern.stride,
                                          pattern.causal, q.device.type)
    rows = math.prod(order.sub_grid)
    folded = [_gather_groups(t, order, na_dim).view(-1, rows, *t.shape[1 + na_dim:]) for t in (q, k, v)]
    call, _ = _build_call(*folded, pattern=sub_pattern, scale=scale, return_lse=return_lse)
    call.pattern_key = key
    o, lse = _choose_backend(call, backend).run(call)
    lse = lse if return_lse else None
    o = _scatter_groups(o.reshape(-1, *order.sub_grid, *o.shape[2:]), order, na_dim)
    return o if lse is None else (o, _scatter_group_lse(lse, order))


def _scatter_group_lse(lse: torch.Tensor, order: DilationGroupOrder) -> torch.Tensor:
    """The dilation groups' batched lse (``[B * groups, H, ...]``, each group's tokens in
    ``order``'s sub-grid order) as the grid's ``[B, H, *grid]``."""
    groups, n = order.groups, math.prod(order.grid)
    batch, heads = lse.shape[0] // groups, lse.shape[1]
    lse = lse.reshape(batch, groups, heads, n // groups).transpose(1, 2).reshape(batch, heads, n)
    return order.unpermute(lse, 2).reshape(batch, heads, *order.grid)


def _gather_group_lse(lse: torch.Tensor, order: DilationGroupOrder) -> torch.Tensor:
    """The inverse of ``_scatter_group_lse``: ``[B, H, *grid]`` -> ``[B * groups, H,
    *sub_grid]``."""
    groups, n = order.groups, math.prod(order.grid)
    batch, heads = lse.shape[0], lse.shape[1]
    lse = order.permute(lse.reshape(batch, heads, n), 2).reshape(batch, heads, groups, n // groups)
    return lse.transpose(1, 2).reshape(batch * groups, heads, *order.sub_grid)


# On: dilation groups whose sub-grid no tile shape divides run padded up to whole tiles
# (``_padded_groups``) where "auto" would pad an undilated neighborhood over that sub-grid; off:
# in the sub-grid's row-major order. Both gather q, k, v into the groups' order and o back; the
# padded run is the undilated one that ``PAD_MAX_COST`` decides on (its sweep: padded faster on
# all nine grids). Not yet timed on the dilated calls themselves.
PAD_DILATION_GROUPS = True


@functools.lru_cache(maxsize=32)
def _padded_group_tiles(grid, kernel, dilation, stride, causal, device_type: str) -> Optional[tuple]:
    """The tile shape that a dilated neighborhood's groups run on, padded, when no tile shape
    divides their sub-grid (``dilation_groups``) and "auto" would pad an undilated neighborhood
    over it (``_auto_padded_layout``); else None (the groups' tiled order, or row-major)."""
    sub_grid = dilation_groups(grid, dilation)
    undilated = (1,) * len(sub_grid)
    device = torch.device(device_type)
    if _resolve_layout("auto", sub_grid, kernel, undilated, stride, causal, device) is not None:
        return None
    padded = _resolve_layout("auto", sub_grid, kernel, undilated, stride, causal, device, pad=True)
    return None if padded is None else padded.tile_shape


def _group_padding(pattern: Neighborhood, backend: str, device: torch.device) -> Optional[tuple]:
    """The tiles a dilated ``pattern``'s groups run padded on (``_padded_group_tiles``) when
    ``PAD_DILATION_GROUPS`` is on and the call goes to the Triton backend; else None."""
    if not (PAD_DILATION_GROUPS and _wants_triton(backend, device)):
        return None
    return _padded_group_tiles(pattern.grid, pattern.kernel, pattern.dilation, pattern.stride, pattern.causal,
                               device.type)


@functools.lru_cache(maxsize=32)
def _row_major_groups(grid, dilation) -> DilationGroupOrder:
    return DilationGroupOrder(grid, dilation)


def _gather_groups(t: torch.Tensor, order: DilationGroupOrder, na_dim: int) -> torch.Tensor:
    """``t [B, *grid, ...]`` as the dilation groups' batch ``[B * groups, *sub_grid, ...]`` (each
    group's tokens in ``order``'s sub-grid order: row-major, or its sub-layout's tiles)."""
    batch, rest = t.shape[0], t.shape[1 + na_dim:]
    flat = order.permute(t.reshape(batch, math.prod(order.grid), *rest), 1)
    return flat.reshape(batch * order.groups, *order.sub_grid, *rest)


def _scatter_groups(t: torch.Tensor, order: DilationGroupOrder, na_dim: int) -> torch.Tensor:
    """The inverse of ``_gather_groups``: ``[B * groups, *sub_grid, ...]`` -> ``[B, *grid, ...]``."""
    batch, rest = t.shape[0] // order.groups, t.shape[1 + na_dim:]
    flat = order.unpermute(t.reshape(batch, math.prod(order.grid), *rest), 1)
    return flat.reshape(batch, *order.grid, *rest)


def _padded_groups(q, k, v, pattern: Neighborhood, tiles: tuple, na_dim: int, backend: str, scale,
                   return_lse: bool):
    """``neighborhood_attention`` of a dilated ``pattern`` whose groups' sub-grid no tile shape
    divides: q, k and v gathered into the groups' row-major order and batched (``[B * groups,
    *sub_grid, H, D]``), one undilated neighborhood over the sub-grid in ``tiles`` padded up to
    whole tiles (``_padded_run``: on Hopper without padding copies), o and lse put back."""
    order = _row_major_groups(pattern.grid, pattern.dilation)
    gathered = [_gather_groups(t, order, na_dim) for t in (q, k, v)]
    out = neighborhood_attention(*gathered, pattern.kernel, 1, pattern.stride, pattern.causal, na_dim=na_dim,
                                 layout=tiles, backend=backend, scale=scale, return_lse=return_lse)
    o, lse = out if return_lse else (out, None)
    o = _scatter_groups(o, order, na_dim)
    return o if lse is None else (o, _scatter_group_lse(lse, order))


def _padded_group_gradients(do, q, k, v, o, lse, pattern: Neighborhood, tiles: tuple, na_dim: int,
                            backend: str, scale, dlse=None) -> tuple:
    """``neighborhood_attention_gradients`` of a call that ran ``_padded_groups``: do, q, k, v, o,
    lse and dlse gathered as it gathered them, the sub-grid call's gradients, scattered back."""
    order = _row_major_groups(pattern.grid, pattern.dilation)
    gathered = [_gather_groups(t, order, na_dim) for t in (do, q, k, v, o)]
    grads = neighborhood_attention_gradients(*gathered, _gather_group_lse(lse, order), pattern.kernel, 1, pattern.stride,
                                             pattern.causal, na_dim=na_dim, layout=tiles, backend=backend,
                                             scale=scale,
                                             dlse=None if dlse is None else _gather_group_lse(dlse, order))
    return tuple(_scatter_groups(g, order, na_dim) for g in grads)


@functools.lru_cache(maxsize=32)
def _grid_layout(grid: tuple, tile_shape: tuple) -> GridLayout:
    return GridLayout(grid, tile_shape)


def blocked_tile_shape(grid, kernel, dilation, stride, causal) -> Optional[tuple]:
    """The block itself as the layout tile of a blocked neighborhood (per-axis tuples: ``stride ==
    kernel``, undilated, non-causal, blocks tiling the grid) when the kernels' 64- and 128-row tiles
    are grid boxes of it (``rows_box``: bulk copies in grid order), else None. Each block attends to
    itself only, so every kernel tile inside one block meets full key tiles. The 64-token shapes
    ``choose_tile_shape`` ties on for such patterns (e.g. 4 x 4 x 4 for 4 x 8 x 8 blocks) leave
    128-row tiles that are no box: pointer loads, and a forward that spills."""
    blocked = (all(s == k for s, k in zip(stride, kernel)) and all(d == 1 for d in dilation)
               and not any(causal) and all(g % k == 0 for g, k in zip(grid, kernel)))
    boxes = len(kernel) <= 3 and all(rows_box(kernel, rows) for rows in (64, 128))
    return tuple(kernel) if blocked and boxes else None


@functools.lru_cache(maxsize=32)
def _auto_layout(grid, kernel, dilation, stride, causal) -> Optional[GridLayout]:
    shape = (blocked_tile_shape(grid, kernel, dilation, stride, causal)
             or choose_tile_shape(grid, kernel, AUTO_TILE_TOKENS, dilation, stride, causal))
    return None if shape is None else _grid_layout(grid, shape)


# A grid (of 2 or 3 axes) that no tile shape divides is padded up to whole tiles where the padded
# plan's listed tiles (full + PARTIAL_COST x partial) cost at most this multiple of the row-major
# plan's. The padded plan runs the grid-order kernels (Gluon on Hopper) where row-major runs
# all-partial Triton tiles. Measured with padding copies of q, k, v and o on an H200 (bf16,
# D = 128, ``benchmarks/gpu_padded_grid.py --sweep``,
# ``results/tuning/2026-12-02-h200-padded-grid-sweep.json``): at cost ratios 0.46-1.77 the padded
# forward ran 1.0-6.4x and the forward+backward 1.5-5.8x faster than row-major (28 x 28, 7 x 7 at
# 1.25: forward 0.205 against 0.208 ms, forward+backward 0.52 against 0.75; 7 x 21 x 26,
# 3 x 7 x 9 at 1.77: 0.43 against 0.79). 1-D grids are not padded (unmeasured).
PAD_MAX_COST = 1.8

# On: a padded grid's call passes q, k, v unpadded to the Gluon kernels where they take it
# forward and backward (``AttentionCall.extent_only``; bulk copies read zeros and write nothing
# past the grid), with no padding copies; off (or where they do not): q, k, v padded and o cut.
PAD_IN_KERNEL = True


@functools.lru_cache(maxsize=32)
def _auto_padded_layout(grid, kernel, stride, causal) -> Optional[GridLayout]:
    """The layout "auto" takes for an undilated neighborhood whose grid (2 or 3 axes) no tile
    shape divides: tiles of ``choose_padded_tile_shape`` (clipped at the grid's far edges; the
    grid-order kernels run the grid padded up to whole tiles, ``_CallPlan.padded``) where they
    cost at most ``PAD_MAX_COST`` times the row-major order's tiles, else None (row-major)."""
    if len(grid) < 2:
        return None
    try:
        shape = choose_padded_tile_shape(grid, kernel, AUTO_TILE_TOKENS, stride, causal)
    except ValueError:
        return None
    padded = padded_grid(grid, shape)
    listed, full = box_tile_counts(PaddedNeighborhood(padded, grid, kernel, stride, causal), shape)
    size = math.prod(grid)
    row_major = Neighborhood(grid, kernel, 1, stride, causal).tile_map(size, size, AUTO_TILE_TOKENS,
                                                                     AUTO_TILE_TOKENS)
    row_listed, row_full = int(row_major.kv_count.sum()), int(row_major.kv_full.sum())
    cost = full + PARTIAL_COST * (listed - full)
    if cost > PAD_MAX_COST * (row_full + PARTIAL_COST * (row_listed - row_full)):
        return None
    return _grid_layout(grid, shape)


def _resolve_layout(layout, grid, kernel, dilation, stride, causal, device, pad: bool = False
                    ) -> Optional[GridLayout]:
    """The tiled order of a call (None: row-major). ``pad``: when no tile shape divides the grid
    of an undilated neighborhood, "auto" takes tiles of a padded grid (``_auto_padded_layout``)."""
    if isinstance(layout, str):
        if layout == "row-major":
            return None
        if layout == "auto":
            # The reference backend (CPU) gains nothing from a tiled order; the block-sparse
            # kernels do, when some tile shape divides the grid (or, with ``pad``, its padding).
            if device.type != "cuda" or math.prod(grid) < 2 * AUTO_TILE_TOKENS:
                return None
            tiled = _auto_layout(grid, kernel, dilation, stride, causal)
            if tiled is None and pad and all(d == 1 for d in dilation):
                tiled = _auto_padded_layout(grid, kernel, stride, causal)
            return tiled
        raise ValueError(f"layout must be 'auto', 'row-major' or a tile shape tuple, got {layout!r}")
    if isinstance(layout, GridLayout):
        if layout.grid != grid:
            raise ValueError(f"layout.grid must be the input grid {grid}, got {layout.grid}")
        return layout
    if isinstance(layout, (tuple, list)):
        return _grid_layout(grid, as_axes("layout", tuple(layout), len(grid)))
    raise TypeError(f"layout must be 'auto', 'row-major', a tile shape tuple or a GridLayout, "
                    f"got {type(layout).__name__} ({layout!r})")


@dataclass(frozen=True)
class _CallPlan:
    """What one ``neighborhood_attention`` signature runs, built once per signature: the pattern,
    the tiled layout (None: row-major), whether it runs per dilation group, and the tiled pattern
    the kernels address in grid order (with its ``pattern_key``), when they do. ``padded``: the
    grid rounded up to whole tiles when the layout's tiles do not divide the grid; the
    grid-order pattern is then a ``PaddedNeighborhood`` over it, run on zero-padded tensors."""

    pattern: Neighborhood
    tiled: Optional[GridLayout]
    per_dilation_group: bool
    grid_order: Optional[Permuted]
    grid_order_key: object
    padded: Optional[tuple] = None


def _build_call_plan(grid, kernel_size, dilation, stride, is_causal, layout, device) -> _CallPlan:
    pattern = Neighborhood(grid, kernel_size, dilation=dilation, stride=stride, causal=is_causal)
    if isinstance(layout, str) and layout == "auto" and dilation_groups(grid, pattern.dilation):
        return _CallPlan(pattern, None, True, None, None)
    tiled = _resolve_layout(layout, grid, pattern.kernel, pattern.dilation, pattern.stride,
                            pattern.causal, device, pad=True)
    grid_order = key = padded = None
    # An identity layout (1-D grids, or tiles of whole rows) reorders nothing either way; in grid
    # order its calls may take the Gluon kernels, which run grid-order calls only.
    if tiled is not None and grid_order_in_kernel(pattern.dilation):
        if all(g % t == 0 for g, t in zip(grid, tiled.tile_shape)):
            grid_order = Permuted(pattern, tiled)
        elif all(d == 1 for d in pattern.dilation):
            padded = padded_grid(grid, tiled.tile_shape)
            rule = PaddedNeighborhood(padded, grid, pattern.kernel, pattern.stride, pattern.causal)
            grid_order = Permuted(rule, _grid_layout(padded, tiled.tile_shape))
        key = None if grid_order is None else pattern_key(grid_order)
    return _CallPlan(pattern, tiled, False, grid_order, key, padded)


@functools.lru_cache(maxsize=64)
def _cached_call_plan(grid, kernel_size, dilation, stride, is_causal, layout, device_type: str,
                      grid_order_rule: Optional[bool], types: tuple) -> _CallPlan:
    return _build_call_plan(grid, kernel_size, dilation, stride, is_causal, layout, torch.device(device_type))


def _types(value):
    """The type structure of a parameter: 17, 17.0 and True are equal keys, but only 17 is a
    valid kernel size."""
    return tuple(map(type, value)) if isinstance(value, tuple) else type(value)


def _call_plan(grid, kernel_size, dilation, stride, is_causal, layout, device) -> _CallPlan:
    """The ``_CallPlan`` of a call, cached per signature (values and their types) when its
    arguments are hashable: the host time of a call is then mostly the kernels' launches."""
    types = tuple(map(_types, (kernel_size, dilation, stride, is_causal, layout)))
    try:
        return _cached_call_plan(grid, kernel_size, dilation, stride, is_causal, layout, device.type,
                                 GRID_ORDER_IN_KERNEL, types)
    except TypeError as error:
        if "unhashable" not in str(error):
            raise
        return _build_call_plan(grid, kernel_size, dilation, stride, is_causal, layout, device)


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size,
                           dilation=1, stride=1, is_causal=False, *, na_dim: int,
                           layout: Union[str, tuple, GridLayout] = "auto", backend: str = "auto",
                           scale: Optional[float] = None, return_lse: bool = False,
                           additional_keys: Optional[torch.Tensor] = None,
                           additional_values: Optional[torch.Tensor] = None):
    """N-D neighborhood attention (see ``na1d`` / ``na2d`` / ``na3d``) on ``[B, *grid, H, D]``."""
    key = None
    if additional_keys is None and additional_values is None and not torch.compiler.is_compiling():
        key = _grid_call_key(q, k, v, (na_dim, kernel_size, dilation, stride, is_causal, layout,
                                       backend, scale, return_lse))
        try:
            known = _GRID_CALLS.get(key) if key is not None else None
        except TypeError:  # an unhashable argument: the full path checks it
            key = known = None
        if known is not None and known[0] == route_settings.generation():
            return known[1](q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != na_dim + 3:
            axes = ", ".join(f"X{i}" for i in range(na_dim))
            raise ValueError(f"{name} must be {na_dim + 3}-D [B, {axes}, H, D] for na{na_dim}d, "
                             f"got shape {tuple(t.shape)}")
    grid = tuple(q.shape[1:1 + na_dim])
    for name, t in (("k", k), ("v", v)):
        if tuple(t.shape[1:1 + na_dim]) != grid:
            raise ValueError(f"{name} must have q's token grid {grid}, got {tuple(t.shape[1:1 + na_dim])}")
        if t.shape[0] != q.shape[0]:
            raise ValueError(f"{name} must have q's batch size {q.shape[0]}, got {t.shape[0]}")
    if additional_keys is not None or additional_values is not None:
        check_additional_kv(q, k, v, additional_keys, additional_values)

        def neighborhood():
            return neighborhood_attention(q, k, v, kernel_size, dilation, stride, is_causal, na_dim=na_dim,
                                          layout=layout, backend=backend, scale=scale, return_lse=True)
        return with_additional_kv(neighborhood, q, additional_keys, additional_values, na_dim=na_dim,
                                  scale=scale, backend=backend, return_lse=return_lse)
    if torch.compiler.is_compiling():
        return natten_ops.traced_call(q, k, v, kernel_size, dilation, stride, is_causal, na_dim=na_dim,
                                      layout=layout, backend=backend, scale=scale, return_lse=return_lse)
    plan = _call_plan(grid, kernel_size, dilation, stride, is_causal, layout, q.device)
    pattern, tiled = plan.pattern, plan.tiled
    chosen = [] if key is not None else None
    if plan.per_dilation_group:
        out = _per_dilation_group(q, k, v, pattern, na_dim, backend, scale, return_lse, chosen)
        _remember_grid_call(key, chosen, grid, None, return_lse)
        return out
    if plan.padded is not None:
        padded = _padded_run(q, k, v, plan, na_dim, scale, return_lse, backend, chosen)
        if padded is not None:
            _remember_grid_call(key, chosen, grid, plan.padded, return_lse)
            return padded if return_lse else padded[0]
    batch, n = q.shape[0], math.prod(grid)
    flat = [t.reshape(batch, n, *t.shape[1 + na_dim:]) for t in (q, k, v)]
    in_kernel = None
    if plan.grid_order is not None and plan.padded is None:
        in_kernel = _grid_order_run(flat, plan.grid_order, plan.grid_order_key, scale, return_lse, backend,
                                    chosen)
    if in_kernel is not None:
        _remember_grid_call(key, chosen, grid, None, return_lse)
        o, lse = in_kernel
        o = o.reshape(batch, *grid, *o.shape[2:])
        return (o, lse.reshape(batch, lse.shape[1], *grid)) if return_lse else o
    if tiled is not None:
        flat = [tiled.permute(t, 1) for t in flat]
        pattern = Permuted(pattern, tiled)
    o, lse = unrouted_attention(*flat, pattern=pattern, scale=scale, return_lse=return_lse, backend=backend)
    lse = lse if return_lse else None
    if tiled is not None:
        o = tiled.unpermute(o, 1)
        lse = None if lse is None else tiled.unpermute(lse, 2)
    o = o.reshape(batch, *grid, *o.shape[2:])
    if lse is None:
        return o
    return o, lse.reshape(batch, lse.shape[1], *grid)


# Signature of a ``neighborhood_attention`` call (its arguments with their types; q, k, v shapes,
# strides, dtypes and devices) -> (``route_settings.generation()`` when it was kept, the call as
# one ``PreparedRun.grid_call``): a repeat call skips the checks, the call plan and the reshapes'
# autograd nodes. Kept for calls one prepared run took whole (grid order, a dilation fold, or a
# padded grid read extent-only); valid while no setting of natten or the kernels has changed.
_GRID_CALLS: dict = {}


def _grid_call_key(q, k, v, arguments: tuple) -> Optional[tuple]:
    """The ``_GRID_CALLS`` key of a call (None where q, k, v are not all tensors); unhashable
    when an argument is."""
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        return None
    return arguments, tuple(map(_types, arguments)), _tensor_signature((q, k, v))


def _remember_grid_call(key, chosen: Optional[list], grid: tuple, padded: Optional[tuple],
                        return_lse: bool) -> None:
    """Keep under ``key`` the call that the one prepared run in ``chosen`` took whole: its lse
    reshaped to the grid, or cut from the ``padded`` grid (extent-only runs)."""
    if key is None or len(chosen) != 1 or not isinstance(chosen[0], PreparedRun):
        return
    prepared, tokens = chosen[0], math.prod(grid)

    def grid_call(q, k, v):
        o, lse = prepared.grid_call(q, k, v, tokens)
        if not return_lse:
            return o
        if padded is not None:
            return o, unpad_grid(lse, grid, padded, 2)
        return o, lse.reshape(lse.shape[0], lse.shape[1], *grid)
    if len(_GRID_CALLS) >= MAX_PREPARED:
        _GRID_CALLS.clear()
    _GRID_CALLS[key] = (route_settings.generation(), grid_call)


def _wants_triton(backend: str, device: torch.device) -> bool:
    _check_backend_name(backend)
    wants = backend == "triton" or (backend == "auto" and device.type == "cuda")
    return wants and "triton" in registry.available_backends()


def _padded_run(q, k, v, plan: _CallPlan, na_dim: int, scale, return_lse: bool, backend: str,
                chosen=None):
    """``(o, lse)`` (grid-shaped; lse None unless ``return_lse``) of a call whose layout's tiles
    do not divide the grid, run in grid order over the padded grid (``PaddedNeighborhood``:
    padding keys are never seen by the grid's queries, padding queries' outputs are dropped), or
    None when the call does not go to the Triton backend or that backend cannot take it. The
    Gluon kernels read q, k, v unpadded where they take the call (``_extent_only_run``); else q,
    k and v are zero-padded and o cut back. ``chosen``: as ``_extent_only_run``'s, for the
    extent-only run alone."""
    if not _wants_triton(backend, q.device):
        return None
    grid, padded = plan.pattern.grid, plan.padded
    batch, n = q.shape[0], math.prod(grid)
    flat = [t.reshape(batch, n, *t.shape[1 + na_dim:]) for t in (q, k, v)]
    out = _extent_only_run(flat, plan, scale, return_lse, backend, chosen) if PAD_IN_KERNEL else None
    if out is not None:
        o = out[0].reshape(batch, *grid, *out[0].shape[2:])
    else:
        out = _grid_order_run(pad_grids([q, k, v], grid, padded), plan.grid_order, plan.grid_order_key,
                              scale, return_lse, backend)
        if out is None:
            return None
        o = unpad_grid(out[0], grid, padded, 1)
    return o, (unpad_grid(out[1], grid, padded, 2) if return_lse else None)


# Signatures (``_extent_only_signature``) of calls the Triton backend declined to run extent-only.
_EXTENT_ONLY_DECLINED: set = set()


def _extent_only_run(flat, plan: _CallPlan, scale, return_lse: bool, backend: str, chosen=None):
    """``(o [B, S, H, D_v], lse [B, H, S_padded])`` of a padded grid's call run by the Gluon kernels
    on the unpadded grid-order ``flat`` q, k, v (``AttentionCall.extent_only``), or None where the
    backend declines it (remembered per signature). ``chosen``: a list the prepared run that ran
    it is appended to."""
    signature = _extent_only_signature(flat, plan.grid_order_key, backend, scale, return_lse)
    prepared = _prepared(signature)
    if prepared is not None:
        return _run_prepared(prepared, flat, chosen)
    if signature in _EXTENT_ONLY_DECLINED:
        return None
    call, _ = _build_call(*flat, scale=scale, return_lse=return_lse)
    call.pattern, call.grid_order, call.pattern_key = plan.grid_order, True, plan.grid_order_key
    call.extent_only = True
    out = _run_and_prepare(call, signature, chosen)
    if out is None:
        if len(_EXTENT_ONLY_DECLINED) >= MAX_PREPARED:
            _EXTENT_ONLY_DECLINED.clear()
        _EXTENT_ONLY_DECLINED.add(signature)
    return out


def _grid_order_run(flat, pattern: Permuted, key, scale, return_lse: bool, backend: str, chosen=None):
    """``(o, lse)`` of the Triton kernels run on grid-order ``[B, S, H, D]`` tensors with the tiled
    ``pattern`` (whose ``pattern_key`` is ``key``) addressed in-kernel, or None when the call does
    not go to the Triton backend or that backend cannot take it (then the caller reorders the
    tensors). ``chosen``: as ``_extent_only_run``'s."""
    signature = _grid_order_signature(flat, key, backend, scale, return_lse)
    prepared = _prepared(signature)
    if prepared is not None:
        return _run_prepared(prepared, flat, chosen)
    if not _wants_triton(backend, flat[0].device):
        return None
    call, _ = _build_call(*flat, pattern=pattern, scale=scale, return_lse=return_lse)
    call.grid_order = True
    call.pattern_key = key
    return _run_and_prepare(call, signature, chosen)


# Signature of a grid-order or folded call (its path, pattern key, backend, scale, return_lse and
# q, k, v shapes, strides, dtypes and devices) -> the Triton backend's prepared run of it, which
# skips the checks and call building that an earlier call with that signature passed.
_PREPARED: dict = {}
MAX_PREPARED = 256


def _tensor_signature(flat) -> tuple:
    return tuple((t.shape, t.stride(), t.dtype, t.device) for t in flat)


def _grid_order_signature(flat, key, backend: str, scale, return_lse: bool) -> tuple:
    return ("grid order", key, backend, type(scale), scale, return_lse, _tensor_signature(flat))


def _extent_only_signature(flat, key, backend: str, scale, return_lse: bool) -> tuple:
    return ("extent only", key, backend, type(scale), scale, return_lse, _tensor_signature(flat))


def _fold_signature(flat, key, dilation, backend: str, scale, return_lse: bool) -> tuple:
    return ("fold", key, dilation, backend, type(scale), scale, return_lse, _tensor_signature(flat))


def _prepared(signature):
    try:
        return _PREPARED.get(signature)
    except TypeError:  # an unhashable argument: the call's checks will name it
        return None


def _run_prepared(prepared, flat, chosen=None):
    """``prepared(*flat)``, with ``prepared`` appended to ``chosen`` where given."""
    if chosen is not None:
        chosen.append(prepared)
    return prepared(*flat)


def _run_and_prepare(call, signature, chosen=None):
    """Run ``call`` on the Triton backend (None when it declines) and keep its prepared run under
    ``signature`` when the backend prepares it (appended to ``chosen`` where given)."""
    triton_backend = registry.get_backend("triton")
    if triton_backend.supports(call) is not None:
        return None
    prepared = triton_backend.prepare(call) if triton_backend.prepare is not None else None
    if prepared is None:
        return triton_backend.run(call)
    if len(_PREPARED) >= MAX_PREPARED:
        _PREPARED.clear()
    _PREPARED[signature] = prepared
    return _run_prepared(prepared, (call.q, call.k, call.v), chosen)


def neighborhood_attention_gradients(do, q, k, v, o, lse, kernel_size, dilation=1, stride=1,
                                     is_causal=False, *, na_dim: int, layout="auto",
                                     backend: str = "auto", scale: Optional[float] = None, dlse=None):
    """``(dq, dk, dv)`` of ``neighborhood_attention`` (same arguments) for the output gradient
    ``do [B, *grid, H_q, D_v]`` and the lse gradient ``dlse`` (like lse; None: none), given that
    call's ``o`` and ``lse [B, H_q, *grid]`` (as it returned them with ``return_lse``). A call the
    Triton backend ran in grid order (undilated or through a dilation fold, 16-bit) takes its
    backward kernels on o and lse; any other call recomputes its forward under autograd."""
    grid = tuple(q.shape[1:1 + na_dim])
    plan = _call_plan(grid, kernel_size, dilation, stride, is_causal, layout, q.device)
    batch, n = q.shape[0], math.prod(grid)
    flat = [t.reshape(batch, n, *t.shape[1 + na_dim:]) for t in (q, k, v)]
    signature = None
    if plan.per_dilation_group:
        pattern = plan.pattern
        tiles = _group_padding(pattern, backend, q.device)
        if tiles is not None:
            return _padded_group_gradients(do, q, k, v, o, lse, pattern, tiles, na_dim, backend, scale, dlse)
        _sub, _order, key = _group_plan(grid, pattern.kernel, pattern.dilation, pattern.stride,
                                        pattern.causal, q.device.type)
        signature = _fold_signature(flat, key, pattern.dilation, backend, scale, True)
    elif plan.padded is not None:
        extent_only = (_prepared(_extent_only_signature(flat, plan.grid_order_key, backend, scale, True))
                       if PAD_IN_KERNEL else None)
        if extent_only is not None:
            grads = extent_only.backward(*flat, o.reshape(batch, n, *o.shape[1 + na_dim:]),
                                         pad_grid(lse, grid, plan.padded, 2),
                                         do.reshape(batch, n, *do.shape[1 + na_dim:]),
                                         None if dlse is None else pad_grid(dlse, grid, plan.padded, 2))
            return tuple(g.reshape(t.shape) for g, t in zip(grads, (q, k, v)))
        flat = pad_grids([q, k, v], grid, plan.padded)
        signature = _grid_order_signature(flat, plan.grid_order_key, backend, scale, True)
    elif plan.grid_order is not None:
        signature = _grid_order_signature(flat, plan.grid_order_key, backend, scale, True)
    backward = getattr(_prepared(signature), "backward", None) if signature is not None else None
    if backward is not None and plan.padded is not None:
        # Padding rows: o and do zero, lse 0 (finite); their gradients are dropped.
        grads = backward(*flat, pad_grid(o, grid, plan.padded, 1), pad_grid(lse, grid, plan.padded, 2),
                         pad_grid(do, grid, plan.padded, 1),
                         None if dlse is None else pad_grid(dlse, grid, plan.padded, 2))
        return tuple(unpad_grid(g, grid, plan.padded, 1) for g in grads)
    if backward is not None:
        grads = backward(*flat, o.reshape(batch, n, *o.shape[1 + na_dim:]), lse.reshape(*lse.shape[:2], n),
                         do.reshape(batch, n, *do.shape[1 + na_dim:]),
                         None if dlse is None else dlse.reshape(*dlse.shape[:2], n))
        return tuple(g.reshape(t.shape) for g, t in zip(grads, (q, k, v)))

    def forward(q, k, v):
        return neighborhood_attention(q, k, v, kernel_size, dilation, stride, is_causal, na_dim=na_dim,
                                      layout=layout, backend=backend, scale=scale, return_lse=True)
    return recomputed_gradients(forward, (q, k, v), do, dlse)


def na1d(q, k, v, kernel_size, dilation=1, stride=1, is_causal=False, *, layout="auto",
         backend="auto", scale=None, return_lse=False, additional_keys=None, additional_values=None):
    """1-D neighborhood attention (NATTEN ``na1d``).

    Shapes: q ``[B, L, H_q, D]``, k ``[B, L, H_kv, D]``, v ``[B, L, H_kv, D_v]`` (GQA:
    ``H_q % H_kv == 0``) -> o ``[B, L, H_q, D_v]``, and with ``return_lse`` also lse
    ``[B, H_q, L]`` (float32, natural log).

    ``kernel_size``, ``dilation``, ``stride`` (int) and ``is_causal`` (bool) follow NATTEN exactly
    (see ``tessera.patterns.neighborhood.Neighborhood``): ``kernel_size * dilation <= L``,
    ``stride <= kernel_size``. ``layout``: ``"row-major"`` (tokens in input order), a tile shape
    (tokens reordered tile by tile for the kernels; the result is the same), or ``"auto"`` (a tile
    shape chosen by ``choose_tile_shape`` on CUDA, the block itself for blocked attention
    (``blocked_tile_shape``), row-major elsewhere; a dilation that divides the length first splits
    the tokens into their dilation groups, ``dilation_groups``, whose sub-grid is padded as below
    where no tile shape divides it). ``scale`` defaults to
    ``1/sqrt(D)``; ``backend`` as in ``tessera.attention``. An undilated neighborhood whose tiles
    do not divide the grid (no 64-token tile shape divides it, under "auto") runs on the Triton
    kernels in a grid padded up to whole tiles (padding tokens never reach the grid's outputs,
    ``PaddedNeighborhood``): on Hopper the Gluon kernels read and write the grid unpadded
    (``PAD_IN_KERNEL``), elsewhere q, k and v are zero-padded and o cut back.

    ``additional_keys`` ``[B, S_x, H_kv, D]`` and ``additional_values`` ``[B, S_x, H_kv, D_v]``
    (both or neither): extra tokens every query attends to as well, in one softmax with its
    neighborhood (NATTEN's arguments of these names; ``tessera.natten_additional``). lse is
    differentiable, with or without them.
    """
    return neighborhood_attention(q, k, v, kernel_size, dilation, stride, is_causal, na_dim=1,
                                  layout=layout, backend=backend, scale=scale, return_lse=return_lse,
                                  additional_keys=additional_keys, additional_values=additional_values)


def na2d(q, k, v, kernel_size, dilation=1, stride=1, is_causal=False, *, layout="auto",
         backend="auto", scale=None, return_lse=False, additional_keys=None, additional_values=None):
    """2-D neighborhood attention (NATTEN ``na2d``) on ``[B, X, Y, H, D]`` tensors.

    As ``na1d`` with per-axis parameters: ``kernel_size``, ``dilation``, ``stride`` an int or a
    tuple of 2 ints, ``is_causal`` a bool or a tuple of 2 bools; ``layout`` a tile shape ``(tx, ty)``.
    Returns o ``[B, X, Y, H_q, D_v]`` (and lse ``[B, H_q, X, Y]``).
    """
    return neighborhood_attention(q, k, v, kernel_size, dilation, stride, is_causal, na_dim=2,
                                  layout=layout, backend=backend, scale=scale, return_lse=return_lse,
                                  additional_keys=additional_keys, additional_values=additional_values)


def na3d(q, k, v, kernel_size, dilation=1, stride=1, is_causal=False, *, layout="auto",
         backend="auto", scale=None, return_lse=False, additional_keys=None, additional_values=None):
    """3-D neighborhood attention (NATTEN ``na3d``) on ``[B, X, Y, Z, H, D]`` tensors (video:
    ``X`` frames).

    As ``na1d`` with per-axis parameters (ints or tuples of 3); ``layout`` a tile shape
    ``(tx, ty, tz)``. Returns o ``[B, X, Y, Z, H_q, D_v]`` (and lse ``[B, H_q, X, Y, Z]``).
    """
    return neighborhood_attention(q, k, v, kernel_size, dilation, stride, is_causal, na_dim=3,
                                  layout=layout, backend=backend, scale=scale, return_lse=return_lse,
                                  additional_keys=additional_keys, additional_values=additional_values)


__all__ = ["dilation_groups", "na1d", "na2d", "na3d", "neighborhood_attention",
           "neighborhood_attention_gradients"]

from . import natten_ops  # noqa: E402  (registers the custom ops torch.compile traces to)

route_settings.watch(sys.modules[__name__])
