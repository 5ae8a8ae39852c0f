"""``tessera.attention`` with a sparse pattern under ``torch.compile``: one opaque node each way.

Traced by ``torch.compile``, ``tessera.attention`` calls the custom op ``tessera::attention`` for
calls whose pattern a spec string expresses (``patterns.to_spec``: windows, sinks, S2 shards,
Power, blocks, neighborhoods, Swin, MaxViT, Halo, criss-cross, Radial and their unions and
intersections), or dense and causal calls that ask for lse, and that carry no bias, sinks tensor
or varlen lengths; the pattern reaches the op as its spec. The op runs the eager path (same
kernels, same results bit for bit) and returns ``(o, lse)``; its backward,
``tessera::attention_backward``, takes the forward's o and lse (and lse's gradient) into the
Triton backend's backward kernels (``backend.prepare``) where that backend runs the call in 16
bits, and recomputes the forward under autograd elsewhere. Other calls (dense, causal, biases,
per-head patterns) trace as before: dense and causal calls without lse trace into SDPA.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from . import api, tiled_grid_patterns
from .compile_support import lse_dtype, recomputed_gradients, register_backward
from .kernels import registry
from .patterns import Pattern, parse, to_spec


def pattern_spec(pattern, return_lse: bool = False) -> Optional[str]:
    """The spec string of ``pattern`` (a ``Pattern``, a spec string or None for dense) when the op
    carries the call, else None: dense or causal alone trace into SDPA, unless ``return_lse``
    (which SDPA does not return)."""
    if pattern is None:
        return "dense" if return_lse else None
    try:
        spec = to_spec(parse(pattern) if isinstance(pattern, str) else pattern)
    except (ValueError, TypeError):
        return None
    return None if spec in ("dense", "causal") and not return_lse else spec


@functools.lru_cache(maxsize=256)
def _pattern(spec: str) -> Pattern:
    return parse(spec)


def _eager(q, k, v, spec, causal, scale, score, softcap, sigmoid_bias, backend, deterministic,
           return_lse: bool):
    return api.attention(q, k, v, pattern=_pattern(spec), causal=causal, scale=scale, score=score,
                         softcap=softcap, sigmoid_bias=sigmoid_bias, backend=backend,
                         deterministic=deterministic, return_lse=return_lse)


@torch.library.custom_op("tessera::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: str, causal: bool,
                 scale: Optional[float], score: str, softcap: Optional[float],
                 sigmoid_bias: Optional[float], backend: str,
                 deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o [B, S_q, H_q, D_v], lse [B, H_q, S_q])`` of ``tessera.attention`` on ``bshd``
    tensors under the pattern of ``spec`` (lse float32, float64 for float64 inputs; empty for
    sigmoid scores, which have none)."""
    with torch.no_grad():
        if score == "sigmoid":
            o = _eager(q, k, v, spec, causal, scale, score, softcap, sigmoid_bias, backend,
                       deterministic, False)
            return o.contiguous(), q.new_empty(0, dtype=torch.float32)
        o, lse = _eager(q, k, v, spec, causal, scale, score, softcap, sigmoid_bias, backend,
                        deterministic, True)
    return o.contiguous(), lse.contiguous()


@attention_op.register_fake
def _(q, k, v, spec, causal, scale, score, softcap, sigmoid_bias, backend, deterministic):
    o = q.new_empty((*q.shape[:-1], v.shape[-1]))
    if score == "sigmoid":
        return o, q.new_empty(0, dtype=torch.float32)
    return o, q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=lse_dtype(q.dtype))


@torch.library.custom_op("tessera::attention_backward", mutates_args=())
def attention_backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          o: torch.Tensor, lse: torch.Tensor, dlse: Optional[torch.Tensor], spec: str,
                          causal: bool,
                          scale: Optional[float], score: str, softcap: Optional[float],
                          sigmoid_bias: Optional[float], backend: str,
                          deterministic: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` like ``q``, ``k``, ``v`` for the gradients ``do`` of o and ``dlse`` of
    lse (None: none), given the forward's ``o`` and ``lse``."""
    params = (spec, causal, scale, score, softcap, sigmoid_bias, backend, deterministic)
    backward = _prepared_backward(q, k, v, *params)
    if backward is not None:
        return tuple(g.contiguous() for g in backward(q, k, v, o, lse, do, dlse))
    softmax = score != "sigmoid"

    def forward(*qkv):
        out = _eager(*qkv, *params, softmax)
        return out if softmax else (out, None)
    grads = recomputed_gradients(forward, (q, k, v), do, dlse if softmax else None)
    return tuple(g.contiguous() for g in grads)


@attention_backward_op.register_fake
def _(do, q, k, v, o, lse, dlse, spec, causal, scale, score, softcap, sigmoid_bias, backend, deterministic):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


# Signature of a compiled call (its arguments, and q, k, v shapes, strides, dtypes and devices)
# -> the Triton backend's prepared run of it, or None where that backend does not take it.
_PREPARED: dict = {}
MAX_PREPARED = 256


def _prepared_backward(q, k, v, spec, causal, scale, score, softcap, sigmoid_bias, backend,
                       deterministic):
    """The Triton backend's ``backward(q, k, v, o, lse, do, dlse)`` for this call where it runs it
    as eager mode does and prepares it (the tiled route's grid-order call where that route takes
    it), else None: calls that eager mode sends through natten's path or the tiled route's
    gathers recompute their forward, so that their gradients equal eager mode's bit for bit."""
    signature = (spec, causal, scale, score, softcap, sigmoid_bias, backend, deterministic,
                 tuple((t.shape, t.stride(), t.dtype, t.device) for t in (q, k, v)))
    if signature not in _PREPARED:
        call, _ = api._build_call(q, k, v, pattern=_pattern(spec), causal=causal, scale=scale,
                                  score=score, softcap=softcap, sigmoid_bias=sigmoid_bias,
                                  return_lse=score != "sigmoid", deterministic=deterministic)
        prepared = None
        if not api.takes_natten_path(call, backend):
            in_kernel = tiled_grid_patterns.in_kernel_call(call, backend)
            if in_kernel is not None:
                prepared = registry.get_backend("triton").prepare(in_kernel)
            elif tiled_grid_patterns.call_form(call, backend) is None:
                chosen = api._choose_backend(call, backend)
                prepared = chosen.prepare(call) if chosen.name == "triton" and chosen.prepare else None
        if len(_PREPARED) >= MAX_PREPARED:
            _PREPARED.clear()
        _PREPARED[signature] = getattr(prepared, "backward", None)
    return _PREPARED[signature]


register_backward(attention_op, attention_backward_op, params=8)


def traced_call(q, k, v, spec: str, *, causal: bool, scale, score: str, softcap, sigmoid_bias,
                return_lse: bool, layout: str, backend: str, deterministic: bool):
    """What ``tessera.attention`` returns, through the custom op (called while ``torch.compile``
    traces a call that ``pattern_spec`` expresses)."""
    if score == "sigmoid" and return_lse:
        raise ValueError("return_lse: sigmoid scores have no log-sum-exp (score='sigmoid')")
    if layout == "bhsd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    o, lse = attention_op(q, k, v, spec, causal, None if scale is None else float(scale), score,
                          None if softcap is None else float(softcap),
                          None if sigmoid_bias is None else float(sigmoid_bias), backend, deterministic)
    if layout == "bhsd":
        o = o.transpose(1, 2)
    return (o, lse) if return_lse else o
