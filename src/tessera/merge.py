"""Merging attentions over disjoint key sets into the attention over their union, through their lse.

For one query, attention over keys ``K_1`` returns ``(o_1, lse_1)`` and over ``K_2`` returns
``(o_2, lse_2)``; over ``K_1 + K_2`` it is ``lse = log(exp(lse_1) + exp(lse_2))`` and ``o =
exp(lse_1 - lse) o_1 + exp(lse_2 - lse) o_2``. Every backend's lse is differentiable, so the
merged result's gradients are those of the attention over the union.
"""

from __future__ import annotations

from typing import Sequence

import torch


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
        raise ValueError(f"outputs[0] must be [B, *tokens, H, D_v] (at least 4-D), got shape {tuple(first.shape)}")
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


__all__ = ["merge_attentions"]
