"""Single-token decode steps: ``*_step(q_t, k_t, v_t, ..., state) -> (o_t, new_state)``.

One token per sequence: q_t, k_t ``[B, H, K]``, v_t ``[B, H, V]``, per-token scalars ``[B, H]``,
GLA's gate ``[B, H, K]``; ``state``: ``[B, H, K, V]`` or ``None`` (zeros). Same semantics as the
matching op in ``tessera.linear.ops`` for one more token: feeding a prefix's final state and then
the remaining tokens one by one reproduces the op on the whole sequence. ``o_t`` comes back in
``q_t``'s dtype, the new state in float32 (float64 for float64 inputs).
"""

from __future__ import annotations


import torch

from .feature_maps import FeatureMap, resolve_feature_map
from .naive import NORMALIZER_EPS, compute_dtype, lightning_log_decay


def _prepare(q_t, k_t, v_t, state, *extra):
    for name, x, nd in (("q_t", q_t, 3), ("k_t", k_t, 3), ("v_t", v_t, 3)):
        if not isinstance(x, torch.Tensor) or x.dim() != nd:
            raise ValueError(f"{name} must be a [B, H, D] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    B, H, K = q_t.shape
    V = v_t.shape[-1]
    if tuple(k_t.shape) != (B, H, K) or tuple(v_t.shape[:2]) != (B, H):
        raise ValueError(f"k_t must be {(B, H, K)} and v_t {(B, H, 'V')}, got {tuple(k_t.shape)}, {tuple(v_t.shape)}")
    dtype = compute_dtype(q_t, k_t, v_t, state, *extra)
    if state is None:
        state = torch.zeros(B, H, K, V, dtype=dtype, device=q_t.device)
    elif tuple(state.shape) != (B, H, K, V):
        raise ValueError(f"state must have shape {(B, H, K, V)}, got {tuple(state.shape)}")
    return dtype, state.to(dtype)


def _read(q_t, S):
    return (q_t.unsqueeze(-1) * S).sum(-2)


def _write(k_t, v_t):
    return k_t.unsqueeze(-1) * v_t.unsqueeze(-2)


def simple_gla_step(q_t, k_t, v_t, g_t=None, state=None, scale=None):
    """``S = exp(g_t) S + k_t^T v_t``; ``o_t = scale q_t S``. ``g_t``: ``[B, H]`` log-decay or None."""
    dtype, S = _prepare(q_t, k_t, v_t, state, g_t)
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    if g_t is not None:
        S = S * g_t.to(dtype).exp()[..., None, None]
    S = S + _write(k_t.to(dtype), v_t.to(dtype))
    return (scale * _read(q_t.to(dtype), S)).to(q_t.dtype), S


def lightning_attn_step(q_t, k_t, v_t, layer_idx: int, num_layers: int, state=None, scale=None):
    """One token of Lightning Attention-2 (constant per-head decay, see ``naive.lightning_log_decay``)."""
    g = lightning_log_decay(q_t.shape[1], layer_idx, num_layers, device=q_t.device)
    return simple_gla_step(q_t, k_t, v_t, g.expand(q_t.shape[0], -1), state, scale)


def gla_step(q_t, k_t, v_t, g_t, state=None, scale=None):
    """``S = diag(exp(g_t)) S + k_t^T v_t``; ``o_t = scale q_t S``. ``g_t``: ``[B, H, K]``."""
    dtype, S = _prepare(q_t, k_t, v_t, state, g_t)
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    S = S * g_t.to(dtype).exp()[..., None] + _write(k_t.to(dtype), v_t.to(dtype))
    return (scale * _read(q_t.to(dtype), S)).to(q_t.dtype), S


def gated_delta_rule_step(q_t, k_t, v_t, g_t, beta_t, state=None, scale=None):
    """``S' = exp(g_t) S``; ``S = S' + beta_t k_t^T (v_t - k_t S')``; ``o_t = scale q_t S``.
    ``g_t``: ``[B, H]`` or None; ``beta_t``: ``[B, H]``; ``k_t`` used as given (normalise it yourself)."""
    dtype, S = _prepare(q_t, k_t, v_t, state, g_t, beta_t)
    scale = q_t.shape[-1] ** -0.5 if scale is None else scale
    k = k_t.to(dtype)
    if g_t is not None:
        S = S * g_t.to(dtype).exp()[..., None, None]
    delta = (v_t.to(dtype) - _read(k, S)) * beta_t.to(dtype)[..., None]
    S = S + _write(k, delta)
    return (scale * _read(q_t.to(dtype), S)).to(q_t.dtype), S


def delta_rule_step(q_t, k_t, v_t, beta_t, state=None, scale=None):
    """``S = S + beta_t k_t^T (v_t - k_t S)``; ``o_t = scale q_t S``."""
    return gated_delta_rule_step(q_t, k_t, v_t, None, beta_t, state, scale)


def linear_attention_step(q_t, k_t, v_t, feature_map: FeatureMap = None, normalize: bool = False, state=None,
                          scale=None):
    """One token of ``ops.linear_attention``; with ``normalize`` the state is the pair ``(S, z)``
    (``z``: ``[B, H, F]``) and may be ``None``."""
    phi = resolve_feature_map(feature_map)
    fq, fk = phi(q_t), phi(k_t)
    if not normalize:
        return simple_gla_step(fq, fk, v_t, None, state, scale)
    S, z = (None, None) if state is None else state
    o_num, S = simple_gla_step(fq.to(compute_dtype(fq, S)), fk, v_t, None, S, scale)
    dtype = S.dtype
    z = (torch.zeros_like(fk, dtype=dtype) if z is None else z.to(dtype)) + fk.to(dtype)
    scale = fq.shape[-1] ** -0.5 if scale is None else scale
    denom = scale * (fq.to(dtype) * z).sum(-1, keepdim=True) + NORMALIZER_EPS
    return (o_num.to(dtype) / denom).to(q_t.dtype), (S, z)
