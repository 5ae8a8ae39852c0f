"""Non-causal (global) linear attention, as used by vision models: every query reads the state of its
whole sequence, ``o_t = scale phi(q_t) S`` with ``S = S_0 + sum_s phi(k_s)^T v_s``.

Two matrix products per sequence (``[F, T] x [T, V]``, then ``[T, F] x [F, V]``), which cuBLAS runs
at full speed on any device; no chunking or Triton kernel is needed.
"""

from __future__ import annotations

from typing import Optional

import torch

from .naive import compute_dtype, sequence_bounds


def global_linear_attention(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, scale: float,
                            initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor]):
    """``(o [B, T, H, V], S [N, H, F, V])`` for feature-mapped ``fq, fk [B, T, H, F]`` and ``v [B, T, H, V]``.

    ``initial_state [N, H, F, V]`` (or None) is added to every sequence's state; with ``cu_seqlens``
    (``B == 1``) each packed sequence has its own state. Both results are float32 (float64 for float64
    inputs); the state is the one a causal pass would end with.
    """
    dtype = compute_dtype(fq, fk, v, initial_state)
    fq, fk, v = fq.to(dtype), fk.to(dtype), v.to(dtype)
    if cu_seqlens is None:
        S = torch.einsum("bthf,bthv->bhfv", fk, v)
        if initial_state is not None:
            S = S + initial_state.to(dtype)
        return scale * torch.einsum("bthf,bhfv->bthv", fq, S), S
    outputs, states = [], []
    for n, (_, start, end) in enumerate(sequence_bounds(cu_seqlens, 1, fq.shape[1])):
        S = torch.einsum("thf,thv->hfv", fk[0, start:end], v[0, start:end])
        if initial_state is not None:
            S = S + initial_state[n].to(dtype)
        outputs.append(scale * torch.einsum("thf,hfv->thv", fq[0, start:end], S))
        states.append(S)
    return torch.cat(outputs).unsqueeze(0), torch.stack(states)
