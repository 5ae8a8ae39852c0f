"""Export a pattern to PyTorch FlexAttention: a ``mask_mod`` and a ``BlockMask`` built from tessera's
exact TileMap (never by evaluating every element, as ``create_block_mask`` does)."""

from __future__ import annotations

from typing import Callable

import torch

from .base import Pattern, _check_positive_int
from .tilemap import TileMap


def _check_block_size(block_size) -> tuple[int, int]:
    if isinstance(block_size, tuple) and len(block_size) == 2:
        return (_check_positive_int("block_size[0]", block_size[0]),
                _check_positive_int("block_size[1]", block_size[1]))
    if isinstance(block_size, int) and not isinstance(block_size, bool):
        size = _check_positive_int("block_size", block_size)
        return size, size
    raise TypeError(f"block_size must be an int or a (q_block, kv_block) tuple of ints, got {block_size!r}")


def _select(tiles: TileMap, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count int32 [1, H, n_q], index int32 [1, H, n_q, n_k]) of the listed tiles where ``keep``;
    ascending, padded with 0 up to the full key-tile count (FlexAttention's layout)."""
    listed = (torch.arange(tiles.max_listed, device=tiles.kv_count.device)
              < tiles.kv_count[..., None]) & keep
    nk = tiles.n_k_tiles
    slot = torch.where(listed, listed.cumsum(-1) - 1, nk)
    index = torch.zeros(*listed.shape[:-1], nk + 1, dtype=torch.int32, device=listed.device)
    index.scatter_(-1, slot, tiles.kv_index)
    count = listed.sum(-1, dtype=torch.int32)
    return count[None].contiguous(), index[None, ..., :nk].contiguous()


def flex_mask_mod(pattern: Pattern, q_len: int, k_len: int) -> Callable:
    """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` of ``pattern`` for a ``(q_len, k_len)`` problem.

    FlexAttention passes the query *row* as ``q_idx`` and applies no alignment of its own; the
    returned function adds ``k_len - q_len`` so that rows are bottom-right aligned like everywhere
    in tessera: ``mask_mod(b, h, q_idx, kv_idx) = pattern.mask(q_idx + k_len - q_len, kv_idx, h)``.
    """
    offset = k_len - q_len

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.mask(q_idx + offset, kv_idx, h)

    mask_mod.__name__ = f"tessera_{type(pattern).__name__.lower()}_mask"
    return mask_mod


def to_flex(pattern: Pattern, q_len: int, k_len: int, num_heads: int = 1, block_size=128,
            device: torch.device | str | None = None):
    """``(mask_mod, block_mask)`` for ``torch.nn.attention.flex_attention.flex_attention``.

    Args:
        pattern: any tessera Pattern.
        q_len, k_len: query and key lengths the BlockMask is built for (``S_q != S_k`` allowed:
            bottom-right aligned, see ``flex_mask_mod``).
        num_heads: heads of the BlockMask (one suffices unless the pattern is head-dependent;
            FlexAttention broadcasts a single head and a single batch entry).
        block_size: FlexAttention block size, an int or ``(q_block, kv_block)``.
        device: where the BlockMask lives (default CPU).
    Returns:
        ``mask_mod(b, h, q_idx, kv_idx)`` and a ``BlockMask`` of batch 1 whose partial blocks
        (``kv_num_blocks`` / ``kv_indices``) and full blocks (``full_kv_num_blocks`` /
        ``full_kv_indices``) are exactly tessera's TileMap for these tile sizes. A tile at a
        ragged sequence end is full when all of its real pairs are allowed (``create_block_mask``
        calls it partial); FlexAttention masks keys past ``k_len`` in every block, so both agree.
    """
    from torch.nn.attention.flex_attention import BlockMask

    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a tessera Pattern, got {type(pattern).__name__}")
    q_block, kv_block = _check_block_size(block_size)
    device = torch.device("cpu" if device is None else device)
    tiles = pattern.tile_map(q_len, k_len, q_block, kv_block, num_heads, device)
    count, index = _select(tiles, ~tiles.kv_full)
    full_count, full_index = _select(tiles, tiles.kv_full)
    mask_mod = flex_mask_mod(pattern, q_len, k_len)
    # One eager call on the device: tables a mask reads (e.g. ``Permuted``'s token positions) are
    # copied there now and cached; copied while FlexAttention traces the mask, they would be
    # buffers, which Inductor cannot create inside the mask's pointwise subgraph.
    zero = torch.zeros((), dtype=torch.long, device=device)
    mask_mod(zero, zero, zero, zero)
    block_mask = BlockMask.from_kv_blocks(count, index, full_count, full_index,
                                          BLOCK_SIZE=(q_block, kv_block), mask_mod=mask_mod,
                                          seq_lengths=(q_len, k_len))
    return mask_mod, block_mask
