"""A materialized float64 attention, written independently of tessera's backends, for tests only.

It builds the full ``[B, H_q, S_q, S_k]`` logits, bias and mask (fine at test sizes) straight from
the definitions in ``tessera.attention``'s docstring and returns float64 ``(o, lse)`` in ``bshd``.
Biases are rebuilt from their parameters with their own formulas (not through ``Bias.block``);
patterns are evaluated elementwise through ``Pattern.mask``.
"""

from __future__ import annotations

import itertools
import math

import torch

from tessera.bias import ALiBi, LowRank, RelativePosition, TensorBias


def naive_attention(q, k, v, *, pattern=None, causal=False, scale=None, score="softmax",
                    bias=None, softcap=None, sinks=None, sigmoid_bias=None, layout="bshd",
                    cu_seqlens_q=None, cu_seqlens_k=None):
    """Returns ``(o [B, S_q, H_q, D_v], lse [B, H_q, S_q] or None)`` in float64, bshd."""
    if layout == "bhsd":
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q, k, v = q.double(), k.double(), v.double()
    if cu_seqlens_q is None:
        full_bias = None if bias is None else _bias(bias, q.shape[1], k.shape[1], q.shape[2])
        return _single(q, k, v, pattern, causal, scale, score, full_bias, softcap, sinks,
                       sigmoid_bias)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    packed_bias = None
    if isinstance(bias, (TensorBias, LowRank, torch.Tensor)):
        packed_bias = _bias(bias, q.shape[1], k.shape[1], q.shape[2])
    for i in range(len(cq) - 1):
        a, b, c, d = cq[i], cq[i + 1], ck[i], ck[i + 1]
        if bias is None:
            seq_bias = None
        elif packed_bias is not None:
            seq_bias = packed_bias[:, :, a:b, c:d]
        else:
            seq_bias = _bias(bias, b - a, d - c, q.shape[2])
        o, lse = _single(q[:, a:b], k[:, c:d], v[:, c:d], pattern, causal, scale, score, seq_bias,
                         softcap, sinks, sigmoid_bias)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs, 1), (None if lses[0] is None else torch.cat(lses, 2))


def _bias(bias, q_len, k_len, heads):
    """Full float64 bias broadcastable to ``[B, H_q, q_len, k_len]``."""
    if isinstance(bias, torch.Tensor):
        t = bias.double()
        return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    if isinstance(bias, TensorBias):
        return bias.tensor.double()
    if isinstance(bias, ALiBi):
        dist = torch.tensor([[abs(i + k_len - q_len - j) for j in range(k_len)]
                             for i in range(q_len)], dtype=torch.float64)
        return torch.stack([-bias.slopes[h].double() * dist for h in range(heads)]).unsqueeze(0)
    if isinstance(bias, LowRank):
        return torch.einsum("bhir,bhjr->bhij", bias.u.double(), bias.w.double())
    if isinstance(bias, RelativePosition):
        grid = bias.grid
        coords = list(itertools.product(*(range(g) for g in grid)))     # row-major order
        table = bias.table.double()
        entries = []
        for ci in coords:
            row = []
            for cj in coords:
                idx = tuple(a - b + g - 1 for a, b, g in zip(ci, cj, grid))
                row.append(table[(slice(None),) + idx])
            entries.append(torch.stack(row, -1))
        return torch.stack(entries, -2).unsqueeze(0)                    # [1, H, N, N]
    raise TypeError(f"unknown bias {bias!r}")


def _single(q, k, v, pattern, causal, scale, score, bias, softcap, sinks, sigmoid_bias):
    batch, q_len, heads, dim = q.shape
    k_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scale = 1 / math.sqrt(dim) if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias
    qi = torch.arange(q_len).view(-1, 1) + (k_len - q_len)
    kj = torch.arange(k_len).view(1, -1)
    allowed = torch.ones(heads, q_len, k_len, dtype=torch.bool)
    if causal:
        allowed = allowed & (kj <= qi)
    if pattern is not None:
        if isinstance(pattern, str):
            from tessera.patterns import parse
            pattern = parse(pattern)
        allowed = allowed & pattern.dense_mask(q_len, k_len, heads)
    allowed = allowed.unsqueeze(0).expand(batch, heads, q_len, k_len)

    if score == "sigmoid":
        b = -math.log(k_len) if sigmoid_bias is None else sigmoid_bias
        w = torch.sigmoid(s + b) * allowed
        return torch.einsum("bhij,bjhd->bihd", w, v), None

    s = s.masked_fill(~allowed, -math.inf)
    if sinks is not None:
        sink_col = sinks.double().view(1, heads, 1, 1).expand(batch, heads, q_len, 1)
        s = torch.cat([s, sink_col], dim=-1)
    has_any = torch.isfinite(s).any(-1, keepdim=True)
    s_safe = torch.where(has_any, s, torch.zeros_like(s))
    lse = torch.logsumexp(s_safe, dim=-1, keepdim=True)
    p = torch.where(has_any, torch.exp(s_safe - lse), torch.zeros_like(s))
    lse = torch.where(has_any, lse, torch.full_like(lse, -math.inf)).squeeze(-1)
    p = p[..., :k_len]
    return torch.einsum("bhij,bjhd->bihd", p, v), lse
