"""Public linear / recurrent attention ops: argument checking and backend dispatch.

Every op takes ``[B, T, H, D]`` tensors and returns ``(o, final_state)``, with fla's argument names:
``scale=None`` (``1/sqrt(K)``), ``initial_state=None`` (``[N, H, K, V]``), ``output_final_state=False``,
``cu_seqlens=None`` (int ``[N + 1]`` offsets of packed sequences, then ``B == 1``; otherwise ``N == B``).
``o`` has ``v``'s shape and ``q``'s dtype; the final state is float32 ``[N, H, K, V]`` (float64 for float64
inputs), or ``None`` unless asked for. The recurrences are written out in ``tessera.linear.naive``.

Backends (``backend=``): ``"triton"`` (chunked Triton kernels; CUDA, or CPU under ``TRITON_INTERPRET=1``),
``"torch"`` (chunked PyTorch forms of ``tessera.linear.chunk``, any device, float64 capable), and
``"auto"``: Triton on CUDA where a kernel exists for the op and the shapes, else torch.
Triton kernels exist for ``simple_gla``, ``lightning_attn``, causal ``linear_attention``, ``gla``, and
``delta_rule`` / ``gated_delta_rule`` with ``K <= 128``; ``"auto"`` chooses them on CUDA. Causal
``linear_attention`` with more than 256 features (BASED's Taylor map) runs them in groups of features. Non-causal
``linear_attention`` is two matrix products per sequence and runs in PyTorch (``"auto"`` or ``"torch"``).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from . import chunk as torch_chunk
from .feature_maps import FeatureMap, resolve_feature_map
from .naive import NORMALIZER_EPS, lightning_log_decay
from .noncausal import global_linear_attention

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_BACKENDS = ("auto", "triton", "torch")
_TRITON_MAX_DIM = 256
# Features per launch when a feature map has more than _TRITON_MAX_DIM: the head size the GPU tests cover.
_FEATURE_GROUP = 128
# The delta rule's Triton path pads smaller key and value dims to this with zero channels (exact: zero key
# channels never enter k k^T and q reads none of them; zero value channels of v, S_0 and hence of every state
# stay zero). On sm_90 with Triton 3.6 its kernels at K = 32 fault or return wrong results for every launch
# candidate, and its backward at V = 32 returns wrong gradients, in bf16 on an H200; K and V of 64 and 128
# are right (benchmarks/results/tuning/2026-11-30-h200-linear-candidates-delta.json, tests/linear/test_gpu.py).
_DELTA_TRITON_MIN_DIM = 64


def _check_tensor(name: str, x, ndim: int):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")


def _check_shape(name: str, x: torch.Tensor, expected: tuple):
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(x.shape)}")


def _check_common(q, k, v, scale, initial_state, cu_seqlens, backend, state_is_pair=False):
    """Validate the arguments every op shares; returns ``(scale, N)``."""
    _check_tensor("q", q, 4)
    _check_tensor("k", k, 4)
    _check_tensor("v", v, 4)
    B, T, H, K = q.shape
    _check_shape("k", k, (B, T, H, K))
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"v must have shape {(B, T, H, 'V')}, got {tuple(v.shape)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if scale is None:
        scale = K ** -0.5
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale > 0:
        raise ValueError(f"scale must be a positive number or None, got {scale!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    N = B
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (
                torch.int32, torch.int64):
            raise TypeError(f"cu_seqlens must be a 1-D int32/int64 tensor, got {cu_seqlens!r}")
        if B != 1:
            raise ValueError(f"q must have batch size 1 with cu_seqlens (packed sequences), got {B}")
        if cu_seqlens.numel() < 2 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T:
            raise ValueError(f"cu_seqlens must start at 0 and end at T={T}, got {cu_seqlens.tolist()}")
        if bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
            raise ValueError(f"cu_seqlens must be non-decreasing, got {cu_seqlens.tolist()}")
        N = cu_seqlens.numel() - 1
    if initial_state is not None and not state_is_pair:
        _check_tensor("initial_state", initial_state, 4)
        _check_shape("initial_state", initial_state, (N, H, K, v.shape[-1]))
    return float(scale), N


def _check_per_token(name: str, x, q, trailing: tuple = ()):
    _check_tensor(name, x, 3 + len(trailing))
    _check_shape(name, x, tuple(q.shape[:3]) + trailing)


def _use_triton(backend: str, q: torch.Tensor, v: torch.Tensor, has_kernel: bool, op: str,
                max_k: int = _TRITON_MAX_DIM) -> bool:
    """Whether the call runs the Triton kernels."""
    fits = q.shape[-1] <= max_k and v.shape[-1] <= _TRITON_MAX_DIM and q.dtype != torch.float64
    if backend == "triton":
        if not has_kernel:
            raise ValueError(f"backend must be 'torch' or 'auto' for {op} (no Triton kernel yet), got 'triton'")
        if not fits:
            raise ValueError(f"backend='triton' needs K <= {max_k}, V <= {_TRITON_MAX_DIM} and no float64 for {op}, "
                             f"got K={q.shape[-1]}, V={v.shape[-1]}, dtype={q.dtype}")
        return True
    if backend == "torch":
        return False
    return has_kernel and fits and q.is_cuda


def _finish(o: torch.Tensor, final, q: torch.Tensor, output_final_state: bool):
    return o.to(q.dtype), (final if output_final_state else None)


def simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False,
               cu_seqlens=None, backend: str = "auto"):
    """Scalar-gated linear attention: ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``.

    q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; g: ``[B, T, H]`` log-decay (``<= 0`` for a decay), or
    g_gamma: ``[H]`` constant log-decay per head; neither: plain causal linear attention.
    Returns ``(o [B, T, H, V], final_state [N, H, K, V] or None)``.
    """
    scale, _ = _check_common(q, k, v, scale, initial_state, cu_seqlens, backend)
    if g is not None and g_gamma is not None:
        raise ValueError("g and g_gamma must not both be given, got both")
    if g_gamma is not None:
        _check_tensor("g_gamma", g_gamma, 1)
        _check_shape("g_gamma", g_gamma, (q.shape[2],))
        g = g_gamma.view(1, 1, -1).expand(*q.shape[:3])
    elif g is not None:
        _check_per_token("g", g, q)
    if _use_triton(backend, q, v, True, "simple_gla"):
        from .triton.simple_gla import chunk_simple_gla_triton
        o, final = chunk_simple_gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    else:
        o, final = torch_chunk.chunk_simple_gla_torch(q, k, v, g, scale, initial_state, output_final_state,
                                                      cu_seqlens)
    return _finish(o, final, q, output_final_state)


def lightning_attn(q, k, v, layer_idx: int, num_layers: int, scale=None, initial_state=None,
                   output_final_state=False, cu_seqlens=None, backend: str = "auto"):
    """Lightning Attention-2: linear attention with fla's constant per-head decay
    ``-(8 / H) * (1 - layer_idx / num_layers) * h`` (see ``naive.lightning_log_decay``)."""
    for name, value in (("layer_idx", layer_idx), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if num_layers < 1 or not 0 <= layer_idx < num_layers:
        raise ValueError(f"layer_idx must be in [0, num_layers={num_layers}), got {layer_idx}")
    g_gamma = lightning_log_decay(q.shape[2], layer_idx, num_layers, device=q.device)
    return simple_gla(q, k, v, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                      output_final_state=output_final_state, cu_seqlens=cu_seqlens, backend=backend)


def gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
        backend: str = "auto"):
    """Gated linear attention: ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t``.

    g: ``[B, T, H, K]`` log-decay per key channel. Returns ``(o, final_state or None)``.
    """
    scale, _ = _check_common(q, k, v, scale, initial_state, cu_seqlens, backend)
    _check_per_token("g", g, q, (q.shape[-1],))
    if _use_triton(backend, q, v, True, "gla"):
        from .triton.gla import chunk_gla_triton
        o, final = chunk_gla_triton(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    else:
        o, final = torch_chunk.chunk_gla_torch(q, k, v, g, scale, initial_state, output_final_state, cu_seqlens)
    return _finish(o, final, q, output_final_state)


def gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel: bool = False, cu_seqlens=None, backend: str = "auto"):
    """Gated delta rule: ``S' = exp(g_t) S_{t-1}``, ``S_t = S' + beta_t k_t^T (v_t - k_t S')``,
    ``o_t = scale q_t S_t``.

    g: ``[B, T, H]`` log-decay or None (plain delta rule); beta: ``[B, T, H]``.
    As in fla, ``k`` is used as given: L2-normalise it yourself, or pass ``use_qk_l2norm_in_kernel=True``
    to normalise ``q`` and ``k`` over their last dimension here.
    """
    scale, _ = _check_common(q, k, v, scale, initial_state, cu_seqlens, backend)
    if g is not None:
        _check_per_token("g", g, q)
    _check_per_token("beta", beta, q)
    if use_qk_l2norm_in_kernel:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    if _use_triton(backend, q, v, True, "gated_delta_rule", max_k=128):
        from .triton.delta_rule import chunk_gated_delta_rule_triton
        K, V = q.shape[-1], v.shape[-1]
        pad_k, pad_v = max(0, _DELTA_TRITON_MIN_DIM - K), max(0, _DELTA_TRITON_MIN_DIM - V)
        if pad_k or pad_v:
            q, k, v = F.pad(q, (0, pad_k)), F.pad(k, (0, pad_k)), F.pad(v, (0, pad_v))
            initial_state = None if initial_state is None else F.pad(initial_state, (0, pad_v, 0, pad_k))
        o, final = chunk_gated_delta_rule_triton(q, k, v, g, beta, scale, initial_state, output_final_state,
                                                 cu_seqlens)
        if pad_k or pad_v:
            o = o[..., :V]
            final = None if final is None else final[:, :, :K, :V]
    else:
        o, final = torch_chunk.chunk_gated_delta_rule_torch(q, k, v, g, beta, scale, initial_state,
                                                            output_final_state, cu_seqlens)
    return _finish(o, final, q, output_final_state)


def delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
               use_qk_l2norm_in_kernel: bool = False, cu_seqlens=None, backend: str = "auto"):
    """Delta rule (DeltaNet): ``S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1})``, ``o_t = scale q_t S_t``.

    beta: ``[B, T, H]``; ``k`` used as given unless ``use_qk_l2norm_in_kernel`` (see ``gated_delta_rule``).
    """
    return gated_delta_rule(q, k, v, None, beta, scale, initial_state, output_final_state,
                            use_qk_l2norm_in_kernel, cu_seqlens, backend)


def linear_attention(q, k, v, feature_map: FeatureMap = None, normalize: bool = False, scale=None,
                     initial_state=None, output_final_state=False, cu_seqlens=None, causal: bool = True,
                     backend: str = "auto"):
    """Linear attention with a feature map ``phi`` applied to q and k.

    Causal (default): ``o_t = scale phi(q_t) S_t`` with ``S_t = S_{t-1} + phi(k_t)^T v_t``. Non-causal
    (``causal=False``, global attention for images): every query reads its whole sequence's state
    ``S = S_0 + sum_s phi(k_s)^T v_s``. With ``normalize=True``, ``o_t`` is divided by
    ``scale phi(q_t) . z + 1e-10`` (``z`` the running or whole sum of ``phi(k_s)``, from ``z_0``), and
    states are pairs ``(S [N, H, F, V], z [N, H, F])``. ``feature_map``: None (identity), "elu"
    (elu + 1), "relu", "taylor" (BASED), or a callable such as ``HedgehogFeatureMap``. ``scale``
    defaults to ``1/sqrt(F)``. The final state is the same in both modes.
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    phi = resolve_feature_map(feature_map)
    _check_tensor("q", q, 4)
    _check_tensor("k", k, 4)
    fq, fk = phi(q), phi(k)
    if not normalize and causal and not _in_feature_groups(backend, fq, v):
        return simple_gla(fq, fk, v, scale=scale, initial_state=initial_state,
                          output_final_state=output_final_state, cu_seqlens=cu_seqlens, backend=backend)
    scale, N = _check_common(fq, fk, v, scale, None if normalize else initial_state, cu_seqlens, backend)
    B, T, H, Fd = fq.shape
    V = v.shape[-1]
    init = _augmented_state(initial_state, N, H, Fd, V) if normalize else initial_state
    # Normalized: the value gains a channel of ones, whose output is the denominator and whose state is z.
    v_in = torch.cat([v, torch.ones(B, T, H, 1, dtype=v.dtype, device=v.device)], dim=-1) if normalize else v
    if causal and _in_feature_groups(backend, fq, v_in):
        o, final = _causal_in_feature_groups(fq, fk, v_in, scale, init, output_final_state, cu_seqlens, backend)
    elif causal:
        o, final = simple_gla(fq, fk, v_in, scale=scale, initial_state=init, output_final_state=output_final_state,
                              cu_seqlens=cu_seqlens, backend=backend)
    else:
        _use_triton(backend, fq, v, False, "linear_attention with causal=False")  # raises for backend="triton"
        o, final = global_linear_attention(fq, fk, v_in, scale, init, cu_seqlens)
    if normalize:
        o = o.float() if o.dtype != torch.float64 else o
        o = o[..., :V] / (o[..., V:] + NORMALIZER_EPS)
        if final is not None:
            final = (final[..., :V], final[..., V])
    return _finish(o, final, q, output_final_state)


def _in_feature_groups(backend: str, fq: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton kernels should run a causal feature-map attention with more features than one
    launch takes (e.g. BASED's Taylor map of 16 channels: 273 features) in groups of features."""
    wants_triton = backend == "triton" or (backend == "auto" and fq.is_cuda)
    return (wants_triton and fq.shape[-1] > _TRITON_MAX_DIM and v.shape[-1] <= _TRITON_MAX_DIM
            and fq.dtype != torch.float64)


def _causal_in_feature_groups(fq, fk, v, scale: float, initial_state, output_final_state: bool, cu_seqlens,
                              backend: str):
    """Causal linear attention over features ``fq, fk [B, T, H, F]`` in groups of at most ``_FEATURE_GROUP``.

    The attention is a sum over any partition of the features (``o_t = scale sum_g phi_g(q_t) S_g,t``), so
    each group runs the kernels on its own (zero features pad the last group to a multiple of 32), the
    outputs add in float32 and the final state stacks the groups' states along F. Returns ``(o float32,
    final [N, H, F, V] or None)``.
    """
    Fd = fq.shape[-1]
    o, states = None, []
    for lo in range(0, Fd, _FEATURE_GROUP):
        hi = min(lo + _FEATURE_GROUP, Fd)
        pad = -(hi - lo) % 32
        q_g, k_g = F.pad(fq[..., lo:hi], (0, pad)), F.pad(fk[..., lo:hi], (0, pad))
        h0 = None if initial_state is None else F.pad(initial_state[:, :, lo:hi], (0, 0, 0, pad))
        o_g, s_g = simple_gla(q_g, k_g, v, scale=scale, initial_state=h0, output_final_state=output_final_state,
                              cu_seqlens=cu_seqlens, backend=backend)
        o = o_g.float() if o is None else o + o_g.float()
        if output_final_state:
            states.append(s_g[:, :, :hi - lo])
    return o, torch.cat(states, dim=2) if output_final_state else None


def _augmented_state(initial_state, N: int, H: int, Fd: int, V: int):
    """The normalized state pair ``(S [N, H, F, V], z [N, H, F])`` as one ``[N, H, F, V + 1]`` state
    (float32, or float64 for float64 inputs), or None."""
    if initial_state is None:
        return None
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
        raise TypeError(f"initial_state must be a pair (S, z) with normalize=True, got {type(initial_state).__name__}")
    kv_init, z_init = initial_state
    _check_tensor("initial_state[0]", kv_init, 4)
    _check_shape("initial_state[0]", kv_init, (N, H, Fd, V))
    _check_tensor("initial_state[1]", z_init, 3)
    _check_shape("initial_state[1]", z_init, (N, H, Fd))
    dtype = torch.float64 if kv_init.dtype == torch.float64 else torch.float32
    return torch.cat([kv_init.to(dtype), z_init.unsqueeze(-1).to(dtype)], dim=-1)
