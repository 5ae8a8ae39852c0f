"""The ``sdpa`` backend: torch.nn.functional.scaled_dot_product_attention.

Runs plain softmax attention, dense or causal. SDPA's ``is_causal`` is top-left aligned, so causal
calls go through it only when ``S_q == S_k`` (where both alignments agree). It returns no
log-sum-exp and takes no softcap, sinks, pattern or varlen, and its fused backward kernels are not
guaranteed deterministic; ``supports`` names whichever of these rules out a call.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .registry import AttentionCall, register_backend


def _plain_causal(call: AttentionCall) -> bool:
    from ..patterns.local import Causal
    return type(call.pattern) is Causal


def supports(call: AttentionCall) -> Optional[str]:
    """None if SDPA can run ``call``, else the reason it cannot."""
    if call.score != "softmax":
        return f"SDPA computes softmax attention only, got score={call.score!r}"
    if call.return_lse:
        return "SDPA does not return the log-sum-exp (return_lse=True)"
    if call.bias is not None:
        return "tessera passes no bias to SDPA (it would need the full S_q x S_k tensor)"
    if call.softcap is not None:
        return "SDPA has no softcap"
    if call.sinks is not None:
        return "SDPA has no sink logits"
    if call.cu_seqlens_q is not None:
        return "SDPA takes no cu_seqlens (varlen)"
    if call.pattern is not None:
        if not _plain_causal(call):
            return (f"SDPA runs only dense or causal attention, got pattern {call.pattern!r}")
        if call.q.shape[1] != call.k.shape[1]:
            return (f"SDPA's is_causal is top-left aligned; tessera's causal is bottom-right, and "
                    f"they agree only for S_q == S_k, got S_q={call.q.shape[1]}, "
                    f"S_k={call.k.shape[1]}")
    if call.deterministic and any(t.requires_grad for t in (call.q, call.k, call.v)):
        return "SDPA's fused backward kernels are not guaranteed deterministic (deterministic=True)"
    return None


def sdpa_attention(call: AttentionCall) -> tuple[torch.Tensor, None]:
    """o ``[B, S_q, H_q, D_v]`` (a view of SDPA's ``[B, H_q, S_q, D_v]`` output); lse None."""
    q, k, v = (t.transpose(1, 2) for t in (call.q, call.k, call.v))    # [B, H, S, D] views
    gqa = q.shape[1] != k.shape[1]
    o = F.scaled_dot_product_attention(q, k, v, is_causal=call.pattern is not None,
                                       scale=call.scale, enable_gqa=gqa)
    return o.transpose(1, 2), None


register_backend("sdpa", sdpa_attention, supports)
