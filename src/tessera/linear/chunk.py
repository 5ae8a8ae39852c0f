"""Chunked forms in plain PyTorch: the CPU path of every linear-attention op, differentiable by autograd.

A sequence is cut into chunks of ``C`` tokens. Inside a chunk the output is a small masked
quadratic form (``C x C``); across chunks a ``[K, V]`` state is carried by a loop over chunks.
Memory is ``O(T C)``, never ``T x T``. Arguments and results follow ``naive.py`` (``[B, T, H, D]``,
states ``[N, H, K, V]``); the functions here take already-validated inputs. Arithmetic is float32
(float64 for float64 inputs); ``o`` is returned in that compute dtype, the caller casts it.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .naive import compute_dtype, sequence_bounds


def _per_sequence(inner: Callable, tensors: dict, initial_state, output_final_state, cu_seqlens, dtype):
    """Run ``inner(**tensors, initial_state=...)`` on the batch, or on each packed sequence of ``cu_seqlens``.

    An empty sequence gives no rows and hands its initial state (or zeros) through as its final state."""
    if cu_seqlens is None:
        return inner(**tensors, initial_state=initial_state)
    q, v = tensors["q"], tensors["v"]
    _, T, H, K = q.shape
    V = v.shape[-1]
    outs, finals = [], []
    for n, (_, start, end) in enumerate(sequence_bounds(cu_seqlens, 1, T)):
        init = None if initial_state is None else initial_state[n:n + 1]
        if end == start:
            finals.append(_initial(init, 1, H, K, V, dtype, q.device))
            continue
        part = {name: (None if x is None else x[:, start:end]) for name, x in tensors.items()}
        o, final = inner(**part, initial_state=init)
        outs.append(o)
        finals.append(final)
    o = torch.cat(outs, dim=1) if outs else torch.zeros(1, 0, H, V, dtype=dtype, device=q.device)
    return o, torch.cat(finals, dim=0)


def _to_chunks(x: Optional[torch.Tensor], chunk: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``[B, T, H, ...]`` -> ``[B, H, N, C, ...]`` zero-padded to a multiple of ``chunk``."""
    if x is None:
        return None
    x = x.to(dtype).movedim(1, 2)
    T = x.shape[2]
    pad = (-T) % chunk
    if pad:
        widths = [0, 0] * (x.dim() - 3) + [0, pad]
        x = F.pad(x, widths)
    return x.reshape(*x.shape[:2], -1, chunk, *x.shape[3:])


def _from_chunks(o: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, H, N, C, V]`` -> ``[B, T, H, V]``."""
    return o.flatten(2, 3)[:, :, :T].movedim(2, 1)


def _causal_decay(b: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """``exp(b_i - b_j)`` on ``j <= i`` (``j < i`` when ``strict``), 0 elsewhere; ``b``: ``[..., C]``."""
    C = b.shape[-1]
    keep = torch.ones(C, C, dtype=torch.bool, device=b.device).tril(-1 if strict else 0)
    diff = b.unsqueeze(-1) - b.unsqueeze(-2)
    return diff.masked_fill(~keep, float("-inf")).exp()


def _initial(initial_state, B, H, K, V, dtype, device):
    if initial_state is None:
        return torch.zeros(B, H, K, V, dtype=dtype, device=device)
    return initial_state.to(dtype)


def chunk_simple_gla_torch(q, k, v, g=None, scale=None, initial_state=None, output_final_state=False,
                           cu_seqlens=None, chunk_size: int = 64):
    """Chunked ``naive_simple_gla`` (scalar log-decay ``g [B, T, H]`` or none)."""
    dtype = compute_dtype(q, k, v, g, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def inner(q, k, v, g, initial_state):
        B, T, H, K = q.shape
        V = v.shape[-1]
        qc, kc, vc = (_to_chunks(x, chunk_size, dtype) for x in (q, k, v))
        if g is None:
            b = torch.zeros(qc.shape[:-1], dtype=dtype, device=q.device)
        else:
            b = _to_chunks(g, chunk_size, dtype).cumsum(-1)
        A = (qc @ kc.transpose(-1, -2)) * _causal_decay(b) * scale
        o = A @ vc
        b_last = b[..., -1:]
        kv = (kc * (b_last - b).exp().unsqueeze(-1)).transpose(-1, -2) @ vc
        chunk_decay = b_last.exp().unsqueeze(-1)
        S = _initial(initial_state, B, H, K, V, dtype, q.device)
        states = []
        for n in range(qc.shape[2]):
            states.append(S)
            S = chunk_decay[:, :, n] * S + kv[:, :, n]
        o = o + scale * (qc * b.exp().unsqueeze(-1)) @ torch.stack(states, dim=2)
        return _from_chunks(o, T), S

    o, final = _per_sequence(inner, {"q": q, "k": k, "v": v, "g": g}, initial_state, output_final_state,
                             cu_seqlens, dtype)
    return o, (final if output_final_state else None)


def chunk_gla_torch(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                    chunk_size: int = 16):
    """Chunked ``naive_gla`` (vector log-decay ``g [B, T, H, K]``).

    The intra-chunk scores ``sum_c q_ic k_jc exp(b_ic - b_jc)`` are formed per channel (``[C, C, K]`` per
    chunk), which is exact for any gate values; hence the small default chunk.
    """
    dtype = compute_dtype(q, k, v, g, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def inner(q, k, v, g, initial_state):
        B, T, H, K = q.shape
        V = v.shape[-1]
        qc, kc, vc, gc = (_to_chunks(x, chunk_size, dtype) for x in (q, k, v, g))
        b = gc.cumsum(-2)
        C = chunk_size
        keep = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        diff = (b.unsqueeze(-2) - b.unsqueeze(-3)).masked_fill(~keep[:, :, None], float("-inf"))
        A = (qc.unsqueeze(-2) * kc.unsqueeze(-3) * diff.exp()).sum(-1) * scale
        o = A @ vc
        b_last = b[..., -1:, :]
        kv = (kc * (b_last - b).exp()).transpose(-1, -2) @ vc
        chunk_decay = b_last.exp().transpose(-1, -2)
        S = _initial(initial_state, B, H, K, V, dtype, q.device)
        states = []
        for n in range(qc.shape[2]):
            states.append(S)
            S = chunk_decay[:, :, n] * S + kv[:, :, n]
        o = o + scale * (qc * b.exp()) @ torch.stack(states, dim=2)
        return _from_chunks(o, T), S

    o, final = _per_sequence(inner, {"q": q, "k": k, "v": v, "g": g}, initial_state, output_final_state,
                             cu_seqlens, dtype)
    return o, (final if output_final_state else None)


def chunk_gated_delta_rule_torch(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                                 cu_seqlens=None, chunk_size: int = 64):
    """Chunked ``naive_gated_delta_rule`` (``g`` may be ``None``: the plain delta rule).

    WY / UT form: inside a chunk with local cumulative decay ``b`` and incoming state ``S``, the
    written values are ``u = U - W S`` with ``U = T (beta v)``, ``W = T (beta exp(b) k)`` and
    ``T = (I + tril_strict(beta_i exp(b_i - b_j) k_i . k_j))^-1`` (unit lower triangular).
    Then ``o = scale (exp(b) q S + tril(exp(b_i - b_j) q_i . k_j) u)`` and
    ``S' = exp(b_C) S + (exp(b_C - b) k)^T u``.
    """
    dtype = compute_dtype(q, k, v, g, beta, initial_state)
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def inner(q, k, v, g, beta, initial_state):
        B, T, H, K = q.shape
        V = v.shape[-1]
        qc, kc, vc, betac = (_to_chunks(x, chunk_size, dtype) for x in (q, k, v, beta))
        if g is None:
            b = torch.zeros_like(betac)
        else:
            b = _to_chunks(g, chunk_size, dtype).cumsum(-1)
        kb = kc * betac.unsqueeze(-1)
        C = chunk_size
        eye = torch.eye(C, dtype=dtype, device=q.device)
        M = (kb @ kc.transpose(-1, -2)) * _causal_decay(b, strict=True)
        Tm = torch.linalg.solve_triangular(eye + M, eye.expand_as(M), upper=False, unitriangular=True)
        U = Tm @ (vc * betac.unsqueeze(-1))
        W = Tm @ (kb * b.exp().unsqueeze(-1))
        Aqk = (qc @ kc.transpose(-1, -2)) * _causal_decay(b) * scale
        b_last = b[..., -1:]
        k_tail = kc * (b_last - b).exp().unsqueeze(-1)
        q_head = qc * b.exp().unsqueeze(-1) * scale
        chunk_decay = b_last.exp().unsqueeze(-1)
        S = _initial(initial_state, B, H, K, V, dtype, q.device)
        outs = []
        for n in range(qc.shape[2]):
            u = U[:, :, n] - W[:, :, n] @ S
            outs.append(q_head[:, :, n] @ S + Aqk[:, :, n] @ u)
            S = chunk_decay[:, :, n] * S + k_tail[:, :, n].transpose(-1, -2) @ u
        return _from_chunks(torch.stack(outs, dim=2), T), S

    o, final = _per_sequence(inner, {"q": q, "k": k, "v": v, "g": g, "beta": beta}, initial_state,
                             output_final_state, cu_seqlens, dtype)
    return o, (final if output_final_state else None)
