"""Backend registry: the normalized call every attention backend receives, and the dispatch table.

``tessera.attention`` validates its arguments once and hands each backend an ``AttentionCall``;
a backend returns ``(o, lse)``. Backends never re-validate user input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..patterns.base import Pattern


@dataclass
class AttentionCall:
    """Validated arguments of one attention call.

    Shapes (``bshd`` logical order; tensors may be strided views, e.g. of ``bhsd`` inputs):
        q: ``[B, S_q, H_q, D]``; k: ``[B, S_k, H_kv, D]``; v: ``[B, S_k, H_kv, D_v]``;
        ``H_q % H_kv == 0`` (query head ``h`` reads kv head ``h // (H_q // H_kv)``).
        With ``cu_seqlens_q`` / ``cu_seqlens_k`` (int32 ``[N + 1]``, varlen), ``B == 1`` and sequence
        ``i`` occupies rows ``cu_seqlens[i]:cu_seqlens[i + 1]`` of q (resp. k, v); positions restart
        at 0 in every sequence and each is aligned bottom-right on its own.
    Fields:
        pattern: which pairs are allowed (``None`` = all), ``causal`` already folded in.
        causal: True when the call asked for causal masking (lets backends use a causal fast path).
        scale: multiplies ``q @ k^T``.
        score: ``"softmax"`` or ``"sigmoid"``.
        sigmoid_bias: added to every logit before the sigmoid (``score == "sigmoid"`` only);
            ``None`` means ``-log(S_k)`` of each sequence (per sequence for varlen).
        bias: a ``tessera.bias.Bias`` (``TensorBias`` wraps user tensors; ALiBi, LowRank,
            RelativePosition) or ``None``.
        softcap: ``s -> softcap * tanh(s / softcap)`` applied to the scaled logits before the bias.
        sinks: float ``[H_q]`` sink logits joining the softmax denominator, or ``None``.
        return_lse: whether the caller wants the log-sum-exp.
        grid_order: the pattern is ``Permuted(GridPattern, GridLayout)`` (a neighborhood, or a
            vision pattern of ``tessera.tiled_grid_patterns``) but q, k, v (and o, lse) stay in
            the grid's row-major order: position ``p`` of the pattern lives at the grid row of
            tiled position ``p``. Only the Triton backend accepts it (``tessera.natten`` and
            ``tessera.tiled_grid_patterns`` set it).
        pattern_key: the pattern's cache identity (``kernels.triton.masks.pattern_key``) when the
            caller already has it (``tessera.natten`` builds its patterns once per signature);
            None: computed per call.
        dilation_fold: with ``grid_order``, a ``kernels.triton.masks.DilationFold``: the pattern
            is one dilation group's (its sub-grid), q, k, v hold the whole grid, and every group
            runs at once. Only the Triton backend accepts it (``tessera.natten`` sets it).
        grid_rows: with ``grid_order``, where the pattern's positions live in q, k, v (and o,
            lse) when that is not the grid's row-major order: a ``kernels.triton.masks.GridRoll``
            (the tensors hold the grid rolled by ``-shift``, Swin's cyclic shift: the pattern's
            grid coordinate ``c`` lives at the tensors' ``(c + shift) % grid``) or a
            ``kernels.triton.masks.GridRows`` (position ``p`` lives at row ``rows[p]``: any
            ``Permuted`` pattern). Only the Triton backend accepts it
            (``tessera.tiled_grid_patterns`` sets it).
        extent_only: with ``grid_order`` and a ``PaddedNeighborhood`` pattern (a grid padded up
            to whole tiles), q, k, v (and o) hold only the extent's tokens, in its row-major
            order, and no padding; lse still covers the padded grid (``[B, H_q, S]`` of the
            pattern). Only the Triton backend accepts it, on the Gluon kernels, which read and
            write the extent through bulk copies clipped at its borders (``tessera.natten`` sets
            it).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pattern: Optional[Pattern]
    causal: bool
    scale: float
    score: str
    sigmoid_bias: Optional[float]
    bias: Optional[object]
    softcap: Optional[float]
    sinks: Optional[torch.Tensor]
    return_lse: bool
    cu_seqlens_q: Optional[torch.Tensor] = None
    cu_seqlens_k: Optional[torch.Tensor] = None
    deterministic: bool = False
    grid_order: bool = False
    pattern_key: object = None
    dilation_fold: object = None
    extent_only: bool = False
    grid_rows: object = None


# A backend: (call) -> (o [B, S_q, H_q, D_v] in q's dtype, lse float32 [B, H_q, S_q] or None).
# ``supports(call)`` returns None when the backend can run the call, else the reason it cannot.
BackendFn = Callable[[AttentionCall], "tuple[torch.Tensor, Optional[torch.Tensor]]"]
SupportsFn = Callable[[AttentionCall], Optional[str]]
# ``prepare(call)``: a function ``(q, k, v) -> (o, lse)`` that runs calls equal to ``call`` but for
# their q, k, v (same shapes, strides, dtypes, device) with less host work, or None.
PrepareFn = Callable[[AttentionCall], Optional[Callable]]


@dataclass(frozen=True)
class Backend:
    name: str
    run: BackendFn
    supports: SupportsFn
    prepare: Optional[PrepareFn] = None


_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, run: BackendFn, supports: SupportsFn,
                     prepare: Optional[PrepareFn] = None) -> None:
    """Add (or replace) a backend under ``name``."""
    _BACKENDS[name] = Backend(name, run, supports, prepare)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {sorted(_BACKENDS) + ['auto']}, got {name!r}")
    return _BACKENDS[name]


def available_backends() -> list[str]:
    return sorted(_BACKENDS)
