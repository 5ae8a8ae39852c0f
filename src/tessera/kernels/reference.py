"""The reference backend: pure torch, any device and dtype (float64 included), autograd backward.

Ground truth for every other backend. It computes exactly the semantics of ``tessera.attention``:
    s = scale * q . k;  s = softcap * tanh(s / softcap) (if softcap);  s += bias;  mask by pattern;
    softmax: o = sum_j p_ij v_j, p_ij = exp(s_ij) / (exp(sink_h) + sum_k exp(s_ik)) (sink optional),
             lse = log(exp(sink_h) + sum_k exp(s_ik));
    sigmoid: o = sum_j sigmoid(s_ij + sigmoid_bias) v_j (no normalization, no lse).
Fully masked rows give o = 0 and lse = -inf (with a sink: lse = sink), with finite gradients.

Memory. Queries are processed in chunks whose score block ``[B, H_q, rows, keys]`` stays under
``CHUNK_ELEMENTS``; when autograd records, each chunk runs under ``torch.utils.checkpoint`` so only
the chunk's inputs and outputs are kept and backward recomputes one chunk at a time. Each chunk
reads only the span of keys its pattern can reach (found from the pattern's tile classification),
so causal and local patterns also skip the work outside their band.

Precision. float64 and float32 inputs are computed in their own dtype. float16/bfloat16 inputs
are multiplied in their own dtype (``q @ k^T`` and ``p @ v``, as a same-dtype naive implementation
would) while the logits, the running max and the softmax sum are kept in float32.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from ..patterns.base import Pattern
from ..patterns.tilemap import EMPTY
from .registry import AttentionCall, register_backend

# Upper bound on the elements of one chunk's score block [B, H_q, rows, keys].
CHUNK_ELEMENTS = 1 << 24
# Key granularity used to find the span of keys a query chunk can reach.
_KEY_SPAN_BLOCK = 256


def default_sigmoid_bias(k_len: int) -> float:
    """FlashSigmoid's default logit shift for a sequence of ``k_len`` keys: ``-log(k_len)``."""
    return -math.log(k_len)


def reference_attention(call: AttentionCall) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run ``call``; returns ``o [B, S_q, H_q, D_v]`` in q's dtype and ``lse [B, H_q, S_q]``
    (None for sigmoid scores): float32, or float64 for float64 inputs so that the reference keeps
    float64 accuracy end to end."""
    if call.cu_seqlens_q is None:
        return _attend(call, call.q, call.k, call.v, call.bias)
    cu_q = call.cu_seqlens_q.tolist()
    cu_k = call.cu_seqlens_k.tolist()
    outs, lses = [], []
    for i in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]
        bias = None if call.bias is None else call.bias.for_sequence(q0, q1, k0, k1)
        o, lse = _attend(call, call.q[:, q0:q1], call.k[:, k0:k1], call.v[:, k0:k1], bias)
        outs.append(o)
        lses.append(lse)
    o = torch.cat(outs, dim=1)
    lse = None if call.score == "sigmoid" else torch.cat(lses, dim=2)
    return o, lse


def _attend(call: AttentionCall, q, k, v, bias):
    """One (non-varlen) problem: q ``[B, S_q, H_q, D]``, k ``[B, S_k, H_kv, D]``, v ``[..., D_v]``."""
    batch, q_len, heads, _ = q.shape
    k_len, kv_heads, d_v = k.shape[1], k.shape[2], v.shape[3]
    softmax = call.score == "softmax"
    if q_len == 0 or k_len == 0:
        return _no_keys(call, q, d_v)

    sigmoid_bias = call.sigmoid_bias
    if not softmax and sigmoid_bias is None:
        sigmoid_bias = default_sigmoid_bias(k_len)
    rows = max(1, min(q_len, CHUNK_ELEMENTS // max(1, batch * heads * k_len)))
    extra = [] if bias is None else bias.tensors()
    sinks = [] if call.sinks is None else [call.sinks]
    record = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, *extra, *sinks))

    # Chunk results are written into preallocated outputs rather than collected and concatenated:
    # small long-lived allocations between the chunks' large temporaries would fragment the heap
    # of CPU allocators and grow the resident memory well beyond one chunk's worth.
    o = lse = None
    if rows < q_len:
        o = q.new_empty(batch, q_len, heads, d_v)
        if softmax:
            lse = torch.empty(batch, heads, q_len, device=q.device, dtype=_lse_dtype(q.dtype))
    for start in range(0, q_len, rows):
        stop = min(q_len, start + rows)
        k_start, k_stop = _key_span(call.pattern, start, stop, q_len, k_len, heads)

        def chunk(q_c, k_c, v_c, *_tensors, start=start, stop=stop, k_start=k_start, k_stop=k_stop):
            return _chunk(call, q_c, k_c, v_c, bias, start, stop, q_len, k_len, k_start, k_stop,
                          kv_heads, sigmoid_bias)

        args = (q[:, start:stop], k[:, k_start:k_stop], v[:, k_start:k_stop], *extra, *sinks)
        if record:
            o_c, lse_c = checkpoint(chunk, *args, use_reentrant=False)
        else:
            o_c, lse_c = chunk(*args)
        if o is None:
            return o_c, lse_c
        o[:, start:stop] = o_c
        if softmax:
            lse[:, :, start:stop] = lse_c
        del o_c, lse_c
    return o, lse


def _key_span(pattern: Optional[Pattern], start: int, stop: int, q_len: int, k_len: int,
              heads: int) -> tuple[int, int]:
    """The smallest key range ``[k_start, k_stop)`` holding every key that query rows
    ``start:stop`` may see in any head (``(0, 0)`` when they see none). Keys outside it are masked
    anyway, so skipping them changes nothing but the work."""
    if pattern is None:
        return 0, k_len
    block = _KEY_SPAN_BLOCK
    offset = k_len - q_len
    n = torch.arange(-(-k_len // block), dtype=torch.int64)
    k_lo = n * block
    k_hi = torch.clamp(k_lo + block, max=k_len) - 1
    q_lo = torch.tensor(start + offset, dtype=torch.int64)
    q_hi = torch.tensor(stop - 1 + offset, dtype=torch.int64)
    h = torch.arange(heads if pattern.head_dependent else 1, dtype=torch.int64).view(-1, 1)
    states = pattern.classify(q_lo, q_hi, k_lo, k_hi, h)
    states = states.expand(h.shape[0], n.shape[0])
    reachable = (states != EMPTY).any(0).nonzero()           # UNKNOWN counts as reachable
    if reachable.numel() == 0:
        return 0, 0
    first, last = int(reachable[0]), int(reachable[-1])
    return first * block, min(k_len, (last + 1) * block)


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _no_keys(call: AttentionCall, q: torch.Tensor, d_v: int):
    """Rows that see no key: o = 0, lse = -inf (sink when there is one). The zero output stays
    attached to q's graph so that backward yields zero (finite) gradients."""
    batch, rows, heads, _ = q.shape
    o = q.new_zeros(batch, rows, heads, d_v) + 0 * q.sum()
    if call.score != "softmax":
        return o, None
    dtype = _lse_dtype(q.dtype)
    if call.sinks is None:
        return o, torch.full((batch, heads, rows), -math.inf, device=q.device, dtype=dtype)
    return o, call.sinks.to(dtype).view(1, heads, 1).expand(batch, heads, rows).contiguous()


def _chunk(call: AttentionCall, q, k, v, bias, start: int, stop: int, q_len: int, k_len: int,
           k_start: int, k_stop: int, kv_heads: int, sigmoid_bias: Optional[float]):
    """Attention of query rows ``start:stop`` (q: ``[B, rows, H_q, D]``) against keys
    ``k_start:k_stop`` (k: ``[B, keys, H_kv, D]``). Returns o ``[B, rows, H_q, D_v]`` and lse
    ``[B, H_q, rows]`` (None for sigmoid)."""
    batch, rows, heads, dim = q.shape
    keys, d_v = k.shape[1], v.shape[3]
    group = heads // kv_heads
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32

    if keys == 0:
        return _no_keys(call, q, d_v)

    # Query head h reads kv head h // group: group the query heads instead of repeating k, v.
    qg = q.reshape(batch, rows, kv_heads, group, dim).permute(0, 2, 3, 1, 4)
    qg = qg.reshape(batch, kv_heads, group * rows, dim) * call.scale       # [B, Hkv, G*rows, D]
    s = qg @ k.permute(0, 2, 3, 1)                                          # [B, Hkv, G*rows, keys]
    s = s.view(batch, heads, rows, keys).to(acc)
    if call.softcap is not None:
        s = call.softcap * torch.tanh(s / call.softcap)
    if bias is not None:
        s = s + bias.block(start, stop, q_len, k_len, k_start, k_stop).to(acc)
    if call.pattern is not None:
        q_pos = torch.arange(start, stop, device=q.device) + (k_len - q_len)
        k_pos = torch.arange(k_start, k_stop, device=q.device)
        head = torch.arange(heads, device=q.device).view(heads, 1, 1)
        allowed = call.pattern.mask(q_pos.view(1, rows, 1), k_pos.view(1, 1, keys), head)
        # -inf gives weight 0 under both exp and sigmoid, with zero gradient.
        s = s.masked_fill_(~allowed, -math.inf)

    if call.score == "sigmoid":
        weights = torch.sigmoid(s.add_(sigmoid_bias))
        o = weights.to(v.dtype).view(batch, kv_heads, group * rows, keys) @ v.permute(0, 2, 1, 3)
        o = o.view(batch, heads, rows, d_v).permute(0, 2, 1, 3).to(q.dtype)
        return o, None

    m = s.detach().amax(dim=-1)                                             # [B, H, rows]
    if call.sinks is not None:
        sink = call.sinks.to(acc).view(1, heads, 1)
        m = torch.maximum(m, sink.detach())
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.sub(s, m.unsqueeze(-1)).exp_()
    l = p.sum(dim=-1)
    if call.sinks is not None:
        l = l + torch.exp(sink - m)
    empty = l == 0
    l_safe = torch.where(empty, torch.ones_like(l), l)
    lse = torch.where(empty, torch.full_like(l, -math.inf), m + torch.log(l_safe))
    # Normalize after p @ v (one [rows, D_v] division instead of one over [rows, keys]).
    o = p.to(v.dtype).view(batch, kv_heads, group * rows, keys) @ v.permute(0, 2, 1, 3)
    o = o.view(batch, heads, rows, d_v) / l_safe.unsqueeze(-1)
    return o.permute(0, 2, 1, 3).to(q.dtype), lse.to(_lse_dtype(q.dtype))


def _supports(call: AttentionCall) -> Optional[str]:
    return None


register_backend("reference", reference_attention, _supports)
