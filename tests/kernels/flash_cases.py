"""Shared helpers of the Triton flash-kernel tests: build a call, run the ``triton`` backend and the
reference, and check the FlashAttention error rule against float64.

Rule: ``tessera.bench.error_rule`` (``err(kernel) <= factor * err(same-dtype reference) +
atol``, both errors ``rel_err`` against the float64 reference; factor 2 for the forward (o, lse),
3 for the gradients).
"""

from __future__ import annotations

import math

import torch

from tessera.bench.error_rule import rel_err, within_rule
from tessera.kernels.reference import reference_attention
from tessera.kernels.registry import AttentionCall
from tessera.kernels.triton.backend import run, supports


def make_inputs(batch, q_len, k_len, heads, kv_heads, dim, dtype, device="cpu", dim_v=None,
                layout="bshd", requires_grad=True):
    """Fresh random q, k, v in bshd logical order (bhsd layout: transposed views of bhsd storage)."""
    dim_v = dim if dim_v is None else dim_v

    def one(length, h, d):
        if layout == "bhsd":
            t = torch.randn(batch, h, length, d, device=device, dtype=dtype).transpose(1, 2)
        else:
            t = torch.randn(batch, length, h, d, device=device, dtype=dtype)
        return t.requires_grad_(requires_grad)

    return one(q_len, heads, dim), one(k_len, kv_heads, dim), one(k_len, kv_heads, dim_v)


def make_call(q, k, v, pattern=None, *, scale=None, score="softmax", sigmoid_bias=None, bias=None,
              softcap=None, sinks=None) -> AttentionCall:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return AttentionCall(q, k, v, pattern, False, scale, score, sigmoid_bias, bias, softcap, sinks,
                         True)


def _leaf_like(t, dtype):
    return t.detach().to(dtype).requires_grad_(t.requires_grad)


def _cast_extra(extra: dict, dtype):
    """Copies of the learnable tensors of a call (sinks, bias parameters) in ``dtype``."""
    from tessera.bias import ALiBi, LowRank, RelativePosition, TensorBias
    out = dict(extra)
    if extra.get("sinks") is not None:
        out["sinks"] = _leaf_like(extra["sinks"], torch.float64 if dtype == torch.float64 else extra["sinks"].dtype)
    bias = extra.get("bias")
    if isinstance(bias, TensorBias):
        out["bias"] = TensorBias(_leaf_like(bias.tensor, torch.float64 if dtype == torch.float64 else bias.tensor.dtype))
    if isinstance(bias, ALiBi):
        out["bias"] = ALiBi(_leaf_like(bias.slopes, torch.float64 if dtype == torch.float64 else bias.slopes.dtype))
    if isinstance(bias, LowRank):
        to = torch.float64 if dtype == torch.float64 else bias.u.dtype
        out["bias"] = LowRank(_leaf_like(bias.u, to), _leaf_like(bias.w, to))
    if isinstance(bias, RelativePosition):
        to = torch.float64 if dtype == torch.float64 else bias.table.dtype
        out["bias"] = RelativePosition(_leaf_like(bias.table, to), bias.grid)
    return out


def _learnables(extra: dict) -> list[torch.Tensor]:
    from tessera.bias import ALiBi, LowRank, RelativePosition, TensorBias
    found = []
    if extra.get("sinks") is not None and extra["sinks"].requires_grad:
        found.append(extra["sinks"])
    bias = extra.get("bias")
    if isinstance(bias, TensorBias) and bias.tensor.requires_grad:
        found.append(bias.tensor)
    if isinstance(bias, ALiBi) and bias.slopes.requires_grad:
        found.append(bias.slopes)
    if isinstance(bias, LowRank):
        found += [t for t in (bias.u, bias.w) if t.requires_grad]
    if isinstance(bias, RelativePosition) and bias.table.requires_grad:
        found.append(bias.table)
    return found


def _attend(backend, q, k, v, pattern, extra, do, dlse=None):
    """``(o, lse, gradients)`` of ``backend`` on the call; the gradients of q, k, v (those that
    require one) and the call's learnables for the output gradient ``do`` (none when None) and,
    when given, the lse gradient ``dlse``."""
    call = make_call(q, k, v, pattern, **extra)
    o, lse = backend(call)
    inputs = [t for t in (q, k, v) if t.requires_grad] + _learnables(extra)
    grads = []
    if do is not None and inputs:
        outputs, gradients = ((o,), (do,)) if dlse is None else ((o, lse), (do, dlse.to(lse.dtype)))
        grads = torch.autograd.grad(outputs, inputs, gradients, allow_unused=False)
    return o, lse, list(grads)


def check_against_reference(q, k, v, pattern=None, *, backward=True, fwd_factor=2.0,
                            bwd_factor=3.0, lse_gradient=False, **extra) -> dict:
    """Run the Triton backend and the references on the same inputs; assert the error rule.
    ``lse_gradient``: the backward also carries a random gradient of lse (every row must see a
    key). Returns the measured errors (for messages)."""
    call = make_call(q, k, v, pattern, **extra)
    reason = supports(call)
    assert reason is None, reason
    dtype = q.dtype
    do = torch.randn(q.shape[:-1] + (v.shape[-1],), dtype=dtype, device=q.device) if backward else None
    dlse = (torch.randn(q.shape[0], q.shape[2], q.shape[1], dtype=torch.float64, device=q.device)
            if backward and lse_gradient else None)

    o, lse, grads = _attend(run, q, k, v, pattern, extra, do, dlse)
    e64 = _cast_extra(extra, torch.float64)
    q64, k64, v64 = (_leaf_like(t, torch.float64) for t in (q, k, v))
    o64, lse64, grads64 = _attend(reference_attention, q64, k64, v64, pattern, e64,
                                  None if do is None else do.double(), dlse)
    esame = _cast_extra(extra, dtype)
    qs, ks, vs = (_leaf_like(t, dtype) for t in (q, k, v))
    os_, lses, gradss = _attend(reference_attention, qs, ks, vs, pattern, esame, do, dlse)

    errors = {}
    pairs = [("o", o, os_, o64, fwd_factor)]
    if lse64 is not None:
        assert lse is not None
        pairs.append(("lse", lse, lses, lse64, fwd_factor))
    names = ["dq", "dk", "dv", "dextra0", "dextra1"]
    for i, (g, gs, g64) in enumerate(zip(grads, gradss, grads64)):
        pairs.append((names[i], g, gs, g64, bwd_factor))
    for name, out, same, ref, factor in pairs:
        assert out.shape == ref.shape, (name, out.shape, ref.shape)
        assert not torch.isnan(out).any(), f"{name} has NaN"
        err, err_same = rel_err(out, ref), rel_err(same, ref)
        errors[name] = (err, err_same)
        assert within_rule(err, err_same, dtype, factor), \
            f"{name}: kernel {err:.3g} vs reference {err_same:.3g}"
    return errors


def grid_order_outputs(q, k, v, do, pattern, grid_order: bool) -> list:
    """``[o, lse, dq, dk, dv]`` of the Triton backend for ``Permuted(Neighborhood, GridLayout)``
    on grid-order q, k, v: addressed through the tiled order in-kernel (``grid_order``), or
    reordered into the tiled order around the call."""
    layout = pattern.layout
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    if grid_order:
        call = make_call(*leaves, pattern)
        call.grid_order = True
        o, lse = run(call)
    else:
        o, lse = run(make_call(*(layout.permute(t, 1) for t in leaves), pattern))
        o, lse = layout.unpermute(o, 1), layout.unpermute(lse, 2)
    o.backward(do)
    return [o, lse] + [t.grad for t in leaves]
