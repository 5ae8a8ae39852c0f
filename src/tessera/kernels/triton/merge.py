"""Merging two attentions over disjoint key sets through their lse, forward and backward, each in one
Triton pass (``tessera.merge_attentions``).

Forward: ``lse = log(exp(lse_1) + exp(lse_2))``, ``o = w_1 o_1 + w_2 o_2`` with ``w_i = exp(lse_i -
lse)``. Backward, for the gradients ``do`` of o and ``dlse`` of lse: ``do_i = w_i do`` and ``dlse_i
= w_i (do . o_i - do . o + dlse)``, with ``o`` recomputed in float32 from ``o_1``, ``o_2``. Rows whose
two lses are ``-inf`` give ``o = 0``, ``lse = -inf`` and zero gradients. o, do: ``[B, T, H, D]`` with
a contiguous last dim (any other strides); lse, dlse: float32 ``[B, H, T]`` contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .host_math import cdiv, padded_width
from .launcher import Launcher

# Tokens per program (memory-bound: enough rows per program to stream).
ROWS = 32


@triton.jit
def _weights(L1, L2, stats, inside):
    """``(w_1, w_2, lse)`` of the rows at ``stats``: lse merged, ``w_i = exp(lse_i - lse)`` (0 and
    -inf where both lses are -inf)."""
    lse1 = tl.load(L1 + stats, mask=inside, other=float("-inf"))
    lse2 = tl.load(L2 + stats, mask=inside, other=float("-inf"))
    top = tl.maximum(lse1, lse2)
    top = tl.where(top == float("-inf"), 0.0, top)
    total = tl.exp(lse1 - top) + tl.exp(lse2 - top)
    seen = total > 0
    lse = tl.where(seen, top + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
    anchor = tl.where(seen, lse, 0.0)
    return tl.exp(lse1 - anchor), tl.exp(lse2 - anchor), lse


@triton.jit
def _block(H, T, D: tl.constexpr, D_PAD: tl.constexpr, ROWS: tl.constexpr):
    """This program's ``ROWS`` tokens of one (batch, head): ``(b, h, t, cols, inside, ok,
    stats)``: t the token column ``[ROWS, 1]``, ``ok`` the ``[ROWS, D_PAD]`` mask of real
    elements, ``stats`` the rows' offsets in ``[B, H, T]``."""
    bh = tl.program_id(1)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, D_PAD)
    inside = rows < T
    ok = inside[:, None] & (cols[None, :] < D)
    stats = bh.to(tl.int64) * T + rows
    return (bh // H).to(tl.int64), (bh % H).to(tl.int64), rows.to(tl.int64)[:, None], cols, inside, ok, stats


@triton.jit(do_not_specialize=["T"])
def _merge_forward(O1, O2, L1, L2, O, LSE, s1b, s1t, s1h, s2b, s2t, s2h, sob, sot, soh, H, T,
                   D: tl.constexpr, D_PAD: tl.constexpr, ROWS: tl.constexpr):
    b, h, t, cols, inside, ok, stats = _block(H, T, D, D_PAD, ROWS)
    w1, w2, lse = _weights(L1, L2, stats, inside)
    o1 = tl.load(O1 + b * s1b + h * s1h + t * s1t + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    o2 = tl.load(O2 + b * s2b + h * s2h + t * s2t + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    o = w1[:, None] * o1 + w2[:, None] * o2
    tl.store(O + b * sob + h * soh + t * sot + cols[None, :], o.to(O.dtype.element_ty), mask=ok)
    tl.store(LSE + stats, lse, mask=inside)


@triton.jit(do_not_specialize=["T"])
def _merge_backward(DO, O1, O2, L1, L2, DLSE, DO1, DO2, DL1, DL2, sdb, sdt, sdh, s1b, s1t, s1h,
                    s2b, s2t, s2h, H, T, D: tl.constexpr, D_PAD: tl.constexpr, ROWS: tl.constexpr,
                    HAS_DLSE: tl.constexpr):
    b, h, t, cols, inside, ok, stats = _block(H, T, D, D_PAD, ROWS)
    w1, w2, _lse = _weights(L1, L2, stats, inside)
    # do, do1 and do2 share one layout (the caller allocates do_i like do).
    at_do = b * sdb + h * sdh + t * sdt + cols[None, :]
    do = tl.load(DO + at_do, mask=ok, other=0.0).to(tl.float32)
    o1 = tl.load(O1 + b * s1b + h * s1h + t * s1t + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    o2 = tl.load(O2 + b * s2b + h * s2h + t * s2t + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    dot1 = tl.sum(do * o1, 1)
    dot2 = tl.sum(do * o2, 1)
    shift = w1 * dot1 + w2 * dot2
    if HAS_DLSE:
        shift = shift - tl.load(DLSE + stats, mask=inside, other=0.0)
    tl.store(DO1 + at_do, (w1[:, None] * do).to(DO1.dtype.element_ty), mask=ok)
    tl.store(DO2 + at_do, (w2[:, None] * do).to(DO2.dtype.element_ty), mask=ok)
    tl.store(DL1 + stats, w1 * (dot1 - shift), mask=inside)
    tl.store(DL2 + stats, w2 * (dot2 - shift), mask=inside)


_FORWARD = Launcher(_merge_forward)
_BACKWARD = Launcher(_merge_backward)


def merge_forward(o1: torch.Tensor, o2: torch.Tensor, lse1: torch.Tensor, lse2: torch.Tensor):
    """``(o, lse)``: o ``[B, T, H, D]`` contiguous in o1's dtype, lse float32 ``[B, H, T]``."""
    batch, tokens, heads, dim = o1.shape
    o = torch.empty(o1.shape, dtype=o1.dtype, device=o1.device)
    lse = torch.empty(batch, heads, tokens, dtype=torch.float32, device=o1.device)
    if o.numel() == 0:
        return o, lse.fill_(float("-inf"))
    _FORWARD[(cdiv(tokens, ROWS), batch * heads)](
        o1, o2, lse1, lse2, o, lse, o1.stride(0), o1.stride(1), o1.stride(2), o2.stride(0), o2.stride(1),
        o2.stride(2), o.stride(0), o.stride(1), o.stride(2), heads, tokens, D=dim, D_PAD=padded_width(dim),
        ROWS=ROWS, num_warps=4)
    return o, lse


def merge_backward(do: torch.Tensor, o1: torch.Tensor, o2: torch.Tensor, lse1: torch.Tensor,
                   lse2: torch.Tensor, dlse):
    """``(do1, do2, dlse1, dlse2)`` for the gradients ``do`` (``[B, T, H, D]``, contiguous) of o
    and ``dlse`` (float32 ``[B, H, T]`` contiguous, or None) of lse."""
    batch, tokens, heads, dim = o1.shape
    do1, do2 = torch.empty_like(do), torch.empty_like(do)
    dl1 = torch.empty(batch, heads, tokens, dtype=torch.float32, device=do.device)
    dl2 = torch.empty_like(dl1)
    if do.numel() == 0:
        return do1, do2, dl1, dl2
    _BACKWARD[(cdiv(tokens, ROWS), batch * heads)](
        do, o1, o2, lse1, lse2, dlse if dlse is not None else lse1, do1, do2, dl1, dl2,
        do.stride(0), do.stride(1), do.stride(2), o1.stride(0), o1.stride(1), o1.stride(2),
        o2.stride(0), o2.stride(1), o2.stride(2), heads, tokens, D=dim, D_PAD=padded_width(dim),
        ROWS=ROWS, HAS_DLSE=dlse is not None, num_warps=4)
    return do1, do2, dl1, dl2
