"""Merging attentions over disjoint key sets into the attention over their union, through their lse.

For one query, attention over keys ``K_1`` returns ``(o_1, lse_1)`` and over ``K_2`` returns
``(o_2, lse_2)``; over ``K_1 + K_2`` it is ``lse = log(exp(lse_1) + exp(lse_2))`` and ``o =
exp(lse_1 - lse) o_1 + exp(lse_2 - lse) o_2``. Every backend's lse is differentiable, so the
merged result's gradients are those of the attention over the union.

On CUDA (and on CPU with the Triton kernels interpreted) 16- and 32-bit outputs with float32 lses
merge pairwise in one Triton pass each way (``kernels.triton.merge``); elsewhere, and under
``torch.compile``, in torch operations (float32 sums, float64 for float64).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

# Off: every merge runs the torch operations (the fused kernels' A/B switch).
FUSED = True


def _check(outputs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]) -> None:
    if not isinstance(outputs, (list, tuple)) or not isinstance(lses, (list, tuple)):
        raise TypeError("outputs and lses must be lists or tuples of tensors")
    if len(outputs) == 0 or len(outputs) != len(lses):
        raise ValueError(f"outputs and lses must be non-empty and of one length, got {len(outputs)} "
                         f"outputs and {len(lses)} lses")
    first = outputs[0]
    for name, group in (("outputs", outputs), ("lses", lses)):
        for i, t in enumerate(group):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
            if not t.dtype.is_floating_point:
                raise ValueError(f"{name}[{i}] must be floating point, got {t.dtype}")
            if t.device != first.device:
                raise ValueError(f"{name}[{i}] must be on {first.device}, got {t.device}")
    if first.dim() < 4:
        raise ValueError(f"outputs[0] must be [B, *tokens, H, D_v] (at least 4-D), "
                         f"got shape {tuple(first.shape)}")
    lse_shape = (first.shape[0], first.shape[-2], *first.shape[1:-2])
    for i, (o, lse) in enumerate(zip(outputs, lses)):
        if o.shape != first.shape or o.dtype != first.dtype:
            raise ValueError(f"outputs[{i}] must have outputs[0]'s shape {tuple(first.shape)} and dtype "
                             f"{first.dtype}, got {tuple(o.shape)} {o.dtype}")
        if tuple(lse.shape) != lse_shape:
            raise ValueError(f"lses[{i}] must be [B, H, *tokens] = {lse_shape} for outputs of shape "
                             f"{tuple(first.shape)}, got {tuple(lse.shape)}")


def merge_attentions(outputs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]):
    """Merge attentions of the same queries over disjoint key sets.

    Args:
        outputs: ``o_i`` ``[B, *tokens, H, D_v]``, one shape and dtype (``tessera.attention``'s
            ``[B, S, H, D_v]``, ``natten``'s ``[B, *grid, H, D_v]``).
        lses: ``lse_i`` ``[B, H, *tokens]`` (natural log, as ``return_lse`` gives them).

    Returns ``(o, lse)``: ``lse = log(sum_i exp(lse_i))`` in the lses' promoted dtype and ``o =
    sum_i exp(lse_i - lse) o_i`` in the outputs' dtype, summed in float32 (float64 for float64).
    Rows whose every ``lse_i`` is ``-inf`` (no key in any set) give ``o = 0`` and ``lse = -inf``,
    with finite gradients. Differentiable in every input.
    """
    _check(outputs, lses)
    if len(outputs) == 1:
        return outputs[0], lses[0]
    if _fused(outputs, lses):
        o, lse = outputs[0], lses[0]
        for o_next, lse_next in zip(outputs[1:], lses[1:]):
            o, lse = _MergeTwo.apply(o, o_next, lse, lse_next)
        return o, lse
    lse_dtype = lses[0].dtype
    for lse in lses[1:]:
        lse_dtype = torch.promote_types(lse_dtype, lse.dtype)
    acc = torch.float64 if torch.float64 in (lse_dtype, outputs[0].dtype) else torch.float32
    stacked = torch.stack([lse.to(acc) for lse in lses])
    top = stacked.amax(0).detach()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(stacked - top).sum(0)
    seen = total > 0
    lse = torch.where(seen, top + torch.log(torch.where(seen, total, torch.ones_like(total))),
                      torch.full_like(total, -torch.inf))
    anchor = torch.where(seen, lse, torch.zeros_like(lse))
    o = None
    for o_i, lse_i in zip(outputs, stacked):
        weight = torch.exp(lse_i - anchor).movedim(1, -1).unsqueeze(-1)
        term = weight * o_i.to(acc)
        o = term if o is None else o + term
    return o.to(outputs[0].dtype), lse.to(lse_dtype)


def _fused(outputs, lses) -> bool:
    """Whether the merge takes the Triton kernels: 16- or 32-bit outputs and float32 lses on CUDA,
    or on CPU with the kernels interpreted."""
    if not FUSED or outputs[0].dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if torch.compiler.is_compiling():
        return False   # traced as torch operations, which the compiler fuses itself
    if any(lse.dtype != torch.float32 for lse in lses):
        return False
    device = outputs[0].device
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    from .kernels import registry
    if "triton" not in registry.available_backends():
        return False
    from .kernels.triton.backend import kernels_interpreted
    return kernels_interpreted()


def _rows(o: torch.Tensor) -> torch.Tensor:
    """``[B, *tokens, H, D]`` as ``[B, T, H, D]`` with a contiguous last dim."""
    o = o.reshape(o.shape[0], math.prod(o.shape[1:-2]), *o.shape[-2:])
    return o if o.stride(-1) == 1 else o.contiguous()


def _stats(lse: torch.Tensor) -> torch.Tensor:
    """``[B, H, *tokens]`` as contiguous ``[B, H, T]``."""
    return lse.reshape(lse.shape[0], lse.shape[1], -1).contiguous()


class _MergeTwo(torch.autograd.Function):
    """Two attentions merged by ``kernels.triton.merge`` (forward and backward)."""

    @staticmethod
    def forward(ctx, o1, o2, lse1, lse2):
        from .kernels.triton.merge import merge_forward
        rows1, rows2, stats1, stats2 = _rows(o1), _rows(o2), _stats(lse1), _stats(lse2)
        o, lse = merge_forward(rows1, rows2, stats1, stats2)
        ctx.save_for_backward(rows1, rows2, stats1, stats2)
        ctx.shapes = (o1.shape, lse1.shape)
        ctx.set_materialize_grads(False)
        return o.view(o1.shape), lse.view(lse1.shape)

    @staticmethod
    def backward(ctx, do, dlse):
        from .kernels.triton.merge import merge_backward
        if do is None and dlse is None:
            return None, None, None, None
        rows1, rows2, stats1, stats2 = ctx.saved_tensors
        o_shape, lse_shape = ctx.shapes
        do = torch.zeros_like(rows1) if do is None else _rows(do).contiguous()
        dlse = None if dlse is None else _stats(dlse)
        do1, do2, dl1, dl2 = merge_backward(do, rows1, rows2, stats1, stats2, dlse)
        return do1.view(o_shape), do2.view(o_shape), dl1.view(lse_shape), dl2.view(lse_shape)


__all__ = ["merge_attentions"]
