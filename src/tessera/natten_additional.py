"""Neighborhood attention with additional keys and values (NATTEN's ``additional_keys`` /
``additional_values``): every query also attends to a set of extra tokens (text tokens, registers,
a global summary), one softmax over its neighborhood and those tokens together.

Run as two attentions merged through their lse (``merge_attentions``): the neighborhood, and every
query of the grid against the extra tokens (``tessera.attention``, dense). The gradients are those
of the joint softmax, since lse is differentiable on every backend.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .merge import merge_attentions


def check_additional_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys, values) -> None:
    """Raise a clear error unless ``keys [B, S_x, H_kv, D]`` and ``values [B, S_x, H_kv, D_v]`` fit
    the neighborhood call's q ``[B, *grid, H_q, D]``, k and v (same batch, kv heads, head dims,
    dtype and device)."""
    if keys is None:
        raise ValueError("additional_keys must be given with additional_values")
    if values is None:
        raise ValueError("additional_values must be given with additional_keys")
    for name, t, like in (("additional_keys", keys, k), ("additional_values", values, v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, S_x, H_kv, D], got shape {tuple(t.shape)}")
        want = (q.shape[0], like.shape[-2], like.shape[-1])
        got = (t.shape[0], t.shape[2], t.shape[3])
        if got != want:
            raise ValueError(f"{name} must be [B, S_x, H_kv, D] = [{want[0]}, S_x, {want[1]}, {want[2]}] "
                             f"for these q, k, v, got shape {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must have q's dtype {q.dtype} and device {q.device}, "
                             f"got {t.dtype} on {t.device}")
    if keys.shape[1] != values.shape[1]:
        raise ValueError(f"additional_keys and additional_values must hold one number of tokens, "
                         f"got {keys.shape[1]} and {values.shape[1]}")


# The extra tokens' attention runs on the grid's queries cut into chunks of at least this many
# (each chunk a batch entry with its own copy of the extra keys and values, at most MAX_CHUNKS):
# a few extra keys against every query would leave the dk/dv kernel one program per key tile
# and head, each walking every query.
QUERIES_PER_CHUNK = 1024
MAX_CHUNKS = 64


def query_chunks(tokens: int) -> int:
    """The chunks the ``tokens`` queries of one batch entry are cut into: the largest divisor of
    ``tokens`` that leaves at least ``QUERIES_PER_CHUNK`` queries per chunk, at most
    ``MAX_CHUNKS`` (1 for fewer than twice that many queries)."""
    most = min(MAX_CHUNKS, tokens // QUERIES_PER_CHUNK)
    return max([c for c in range(1, most + 1) if tokens % c == 0], default=1)


def _extra_attention(flat_q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale, backend: str):
    """``(o [B, T, H_q, D_v], lse [B, H_q, T])`` of every query of ``flat_q [B, T, H_q, D]`` over
    ``keys`` and ``values``, the queries in ``query_chunks(T)`` chunks."""
    from .api import attention
    batch, tokens, heads, _ = flat_q.shape
    chunks = query_chunks(tokens)
    if chunks == 1:
        return attention(flat_q, keys, values, scale=scale, backend=backend, return_lse=True)
    per_chunk = [t[:, None].expand(batch, chunks, *t.shape[1:]).reshape(batch * chunks, *t.shape[1:])
                 for t in (keys, values)]
    o, lse = attention(flat_q.reshape(batch * chunks, tokens // chunks, *flat_q.shape[2:]), *per_chunk,
                       scale=scale, backend=backend, return_lse=True)
    lse = lse.reshape(batch, chunks, heads, tokens // chunks).transpose(1, 2).reshape(batch, heads, tokens)
    return o.reshape(batch, tokens, *o.shape[2:]), lse


def with_additional_kv(neighborhood: Callable, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *,
                       na_dim: int, scale, backend: str, return_lse: bool):
    """The neighborhood attention ``neighborhood() -> (o [B, *grid, H_q, D_v], lse [B, H_q,
    *grid])`` merged with the attention of every query of ``q [B, *grid, H_q, D]`` over ``keys``
    / ``values``; returns o, and lse with ``return_lse``."""
    o_local, lse_local = neighborhood()
    batch, grid, heads = q.shape[0], tuple(q.shape[1:1 + na_dim]), q.shape[-2]
    flat_q = q.reshape(batch, math.prod(grid), heads, q.shape[-1])
    o_extra, lse_extra = _extra_attention(flat_q, keys, values, scale, backend)
    o_extra = o_extra.reshape(o_local.shape)
    lse_extra = lse_extra.reshape(batch, heads, *grid)
    o, lse = merge_attentions([o_local, o_extra], [lse_local, lse_extra])
    return (o, lse) if return_lse else o
