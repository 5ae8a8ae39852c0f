"""Reference recurrences of the linear-attention family: one token at a time, straight from the papers.

These are the ground truth the chunked and Triton paths are tested against. They are slow
(a Python loop over tokens) and exact: pass float64 inputs for a float64 reference.

Shared conventions (those of flash-linear-attention, so that both libraries compute the same function):
    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; per-token scalars (``g``, ``beta``): ``[B, T, H]``;
    GLA's vector gate ``g``: ``[B, T, H, K]``. The state ``S`` is ``[N, H, K, V]`` (key-major), and the
    output row is ``o_t = scale * q_t @ S_t`` (the state *after* token ``t`` is read), ``scale``
    defaulting to ``1 / sqrt(K)``.
    Gates are log-decays: the state is multiplied by ``exp(g_t)`` before token ``t`` is written.
    ``initial_state``: ``[N, H, K, V]`` or ``None`` (zeros). ``output_final_state``: also return
    ``S_T`` (float32, or float64 for float64 inputs); otherwise the second result is ``None``.
    ``cu_seqlens``: int ``[N + 1]`` offsets of ``N`` packed sequences (``B == 1``); each sequence starts
    from its own initial state and returns its own final state. Without it ``N == B``.
Outputs ``o`` come back in ``q``'s dtype.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .feature_maps import resolve_feature_map


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    """float64 when any input is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def sequence_bounds(cu_seqlens: Optional[torch.Tensor], batch: int, length: int) -> list[tuple[int, int, int]]:
    """``(batch_index, start, end)`` of every sequence: rows of one batch entry, or packed segments."""
    if cu_seqlens is None:
        return [(b, 0, length) for b in range(batch)]
    offsets = [int(x) for x in cu_seqlens.tolist()]
    return [(0, offsets[i], offsets[i + 1]) for i in range(len(offsets) - 1)]


def _run(step: Callable, q, k, v, per_token: dict, scale, initial_state, output_final_state, cu_seqlens,
         state_shape_v: int):
    """Drive ``step(S, q_t, k_t, v_t, **per_token_t) -> (o_t, S)`` over every sequence."""
    dtype = compute_dtype(q, k, v, initial_state, *per_token.values())
    B, T, H, K = q.shape
    V = state_shape_v
    if scale is None:
        scale = K ** -0.5
    bounds = sequence_bounds(cu_seqlens, B, T)
    o = torch.zeros(B, T, H, V, dtype=dtype, device=q.device)
    finals = []
    for n, (b, start, end) in enumerate(bounds):
        S = torch.zeros(H, K, V, dtype=dtype, device=q.device)
        if initial_state is not None:
            S = S + initial_state[n].to(dtype)
        for t in range(start, end):
            extras = {name: x[b, t].to(dtype) for name, x in per_token.items()}
            o_t, S = step(S, q[b, t].to(dtype) * scale, k[b, t].to(dtype), v[b, t].to(dtype), **extras)
            o[b, t] = o_t
        finals.append(S)
    final = torch.stack(finals) if output_final_state else None
    return o.to(q.dtype), final


def _outer(k_t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    return k_t.unsqueeze(-1) * v_t.unsqueeze(-2)


def _read(q_t: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    return (q_t.unsqueeze(-1) * S).sum(-2)


def naive_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None,
                     output_final_state=False, cu_seqlens=None):
    """Scalar-gated linear attention: ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``.

    ``g``: ``[B, T, H]`` log-decay per token, or ``g_gamma``: ``[H]`` constant log-decay per head
    (at most one of them; neither = plain causal linear attention).
    """
    if g is None and g_gamma is not None:
        g = g_gamma.view(1, 1, -1).expand(q.shape[0], q.shape[1], -1)

    def step(S, q_t, k_t, v_t, g=None):
        if g is not None:
            S = S * g.exp()[:, None, None]
        S = S + _outer(k_t, v_t)
        return _read(q_t, S), S

    per_token = {} if g is None else {"g": g}
    return _run(step, q, k, v, per_token, scale, initial_state, output_final_state, cu_seqlens, v.shape[-1])


def naive_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Gated linear attention (GLA): ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``.

    ``g``: ``[B, T, H, K]`` log-decay per key channel.
    """
    def step(S, q_t, k_t, v_t, g):
        S = S * g.exp()[:, :, None] + _outer(k_t, v_t)
        return _read(q_t, S), S

    return _run(step, q, k, v, {"g": g}, scale, initial_state, output_final_state, cu_seqlens, v.shape[-1])


def naive_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                           cu_seqlens=None):
    """Gated delta rule (Gated DeltaNet): decay, then one delta-rule write.

    ``S' = exp(g_t) S_{t-1}``; ``S_t = S' + beta_t k_t^T (v_t - k_t S')``; ``o_t = scale q_t S_t``.
    ``g``: ``[B, T, H]`` log-decay; ``beta``: ``[B, T, H]`` write strength. Keys are used as given:
    as in fla, the caller L2-normalises ``k`` (the update is a contraction only for ``|k| = 1`` and
    ``0 <= beta <= 2``).
    """
    def step(S, q_t, k_t, v_t, beta, g=None):
        if g is not None:
            S = S * g.exp()[:, None, None]
        predicted = _read(k_t, S)
        S = S + _outer(k_t, beta[:, None] * (v_t - predicted))
        return _read(q_t, S), S

    per_token = {"beta": beta} if g is None else {"beta": beta, "g": g}
    return _run(step, q, k, v, per_token, scale, initial_state, output_final_state, cu_seqlens, v.shape[-1])


def naive_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Delta rule (DeltaNet): ``S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1})``, ``o_t = scale q_t S_t``.

    ``beta``: ``[B, T, H]``. Keys are used as given (the caller L2-normalises them, as in fla).
    """
    return naive_gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state, cu_seqlens)


def lightning_log_decay(num_heads: int, layer_idx: int, num_layers: int, device=None) -> torch.Tensor:
    """Per-head constant log-decay of Lightning Attention-2 as fla sets it:
    ``-(8 / H) * (1 - layer_idx / num_layers) * h`` for head ``h`` (float32 ``[H]``)."""
    slope = 8.0 / num_heads * (1.0 - layer_idx / num_layers)
    return -slope * torch.arange(num_heads, dtype=torch.float32, device=device)


def naive_lightning_attn(q, k, v, layer_idx, num_layers, scale=None, initial_state=None,
                         output_final_state=False, cu_seqlens=None):
    """Lightning Attention-2: linear attention with a constant decay per head (``lightning_log_decay``)."""
    g_gamma = lightning_log_decay(q.shape[2], layer_idx, num_layers, device=q.device)
    return naive_simple_gla(q, k, v, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, cu_seqlens=cu_seqlens)


NORMALIZER_EPS = 1e-10


def naive_linear_attention(q, k, v, feature_map=None, normalize=False, scale=None, initial_state=None,
                           output_final_state=False, cu_seqlens=None, causal=True):
    """Linear attention with a feature map: ``S_t = S_{t-1} + phi(k_t)^T v_t``.

    Without normalization ``o_t = scale phi(q_t) S_t``. With ``normalize=True`` also ``z_t = z_{t-1} +
    phi(k_t)`` and ``o_t = scale phi(q_t) S_t / (scale phi(q_t) . z_t + 1e-10)``; the state is then the pair
    ``(S [N, H, F, V], z [N, H, F])`` (``F`` = feature size), both for ``initial_state`` and the final state.
    ``causal=False``: every query reads the state after its sequence's last token (``naive_global_linear_attention``).
    ``feature_map``: ``None``/"identity", "elu" (elu + 1), "relu", "taylor" (BASED), or any callable
    (e.g. ``HedgehogFeatureMap``) applied to the last dimension. ``scale`` defaults to ``1/sqrt(F)``.
    """
    if not causal:
        return naive_global_linear_attention(q, k, v, feature_map, normalize, scale, initial_state,
                                             output_final_state, cu_seqlens)
    phi = resolve_feature_map(feature_map)
    fq, fk = phi(q), phi(k)
    if not normalize:
        return naive_simple_gla(fq, fk, v, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    kv_init, z_init = (None, None) if initial_state is None else initial_state
    B, T, H, F = fq.shape
    V = v.shape[-1]
    ones = torch.ones(B, T, H, 1, dtype=v.dtype, device=v.device)
    v_aug = torch.cat([v, ones], dim=-1)
    init = None
    if initial_state is not None:
        init = torch.cat([kv_init.to(compute_dtype(kv_init, z_init)), z_init.unsqueeze(-1).to(compute_dtype(kv_init, z_init))], -1)
    o_aug, final = naive_simple_gla(fq.to(compute_dtype(fq, v)), fk.to(compute_dtype(fq, v)),
                                    v_aug.to(compute_dtype(fq, v)), scale=scale, initial_state=init,
                                    output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    o = o_aug[..., :V] / (o_aug[..., V:] + NORMALIZER_EPS)
    if final is not None:
        final = (final[..., :V], final[..., V])
    return o.to(q.dtype), final


def naive_global_linear_attention(q, k, v, feature_map=None, normalize=False, scale=None, initial_state=None,
                                  output_final_state=False, cu_seqlens=None, query_block: int = 64):
    """Non-causal linear attention in its attention form: ``o_t = scale sum_s (phi(q_t) . phi(k_s)) v_s``
    over every ``s`` of ``t``'s sequence, plus ``scale phi(q_t) S_0``; normalized, divided by
    ``scale (sum_s phi(q_t) . phi(k_s) + phi(q_t) . z_0) + 1e-10``. Scores are formed ``query_block`` rows
    at a time (memory ``O(query_block x T)``). The final state is ``S_0 + sum_s phi(k_s)^T v_s`` (and
    ``z_0 + sum_s phi(k_s)``), as in the causal form.
    """
    phi = resolve_feature_map(feature_map)
    fq, fk = phi(q), phi(k)
    B, T, H, F = fq.shape
    V = v.shape[-1]
    S0 = z0 = None
    if initial_state is not None:
        S0, z0 = initial_state if normalize else (initial_state, None)
    dtype = compute_dtype(fq, fk, v, S0, z0)
    scale = F ** -0.5 if scale is None else scale
    fq, fk, v = fq.to(dtype), fk.to(dtype), v.to(dtype)
    o = torch.zeros(B, T, H, V, dtype=dtype, device=q.device)
    states, sums = [], []
    for n, (b, start, end) in enumerate(sequence_bounds(cu_seqlens, B, T)):
        keys, values = fk[b, start:end], v[b, start:end]
        for row in range(start, end, query_block):
            queries = fq[b, row:min(row + query_block, end)]
            scores = torch.einsum("qhf,shf->hqs", queries, keys)
            num = torch.einsum("hqs,shv->qhv", scores, values)
            den = scores.sum(-1).transpose(0, 1).unsqueeze(-1)
            if S0 is not None:
                num = num + torch.einsum("qhf,hfv->qhv", queries, S0[n].to(dtype))
            if z0 is not None:
                den = den + torch.einsum("qhf,hf->qh", queries, z0[n].to(dtype)).unsqueeze(-1)
            o[b, row:row + queries.shape[0]] = scale * num / (scale * den + NORMALIZER_EPS) if normalize else scale * num
        S = torch.einsum("shf,shv->hfv", keys, values)
        z = keys.sum(0)
        states.append(S if S0 is None else S + S0[n].to(dtype))
        sums.append(z if z0 is None else z + z0[n].to(dtype))
    final = None
    if output_final_state:
        final = (torch.stack(states), torch.stack(sums)) if normalize else torch.stack(states)
    return o.to(q.dtype), final
