"""``tessera.attention``: argument checking, layout handling and backend dispatch.

Every argument is checked once, here; backends receive a validated ``AttentionCall`` with q, k, v
as ``[B, S, H, D]`` (possibly strided) views and never re-validate user input.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

import torch

from .bias import Bias, RelativePosition, as_bias
from .kernels import registry
from .kernels.registry import AttentionCall
from .patterns.base import Dense, Pattern
from .patterns.local import Causal
from .patterns.vision import MaxViTBlock, MaxViTGrid, equivalent_neighborhood
from .tiled_grid_patterns import tiled_grid_call

LAYOUTS = ("bshd", "bhsd")
SCORES = ("softmax", "sigmoid")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              pattern: Union[Pattern, str, None] = None, causal: bool = False,
              scale: Optional[float] = None, score: str = "softmax",
              bias: Union[torch.Tensor, Bias, None] = None, softcap: Optional[float] = None,
              sinks: Optional[torch.Tensor] = None, return_lse: bool = False,
              layout: str = "bshd", backend: str = "auto", sigmoid_bias: Optional[float] = None,
              cu_seqlens_q: Optional[torch.Tensor] = None,
              cu_seqlens_k: Optional[torch.Tensor] = None, deterministic: bool = False):
    """Attention of q over k, v under a pattern, with an optional score variant and bias.

    Shapes (``layout="bshd"``; with ``"bhsd"`` swap the S and H dims, inputs are read through
    strides and the output comes back as a ``bhsd`` view):
        q ``[B, S_q, H_q, D]``, k ``[B, S_k, H_kv, D]``, v ``[B, S_k, H_kv, D_v]`` ->
        o ``[B, S_q, H_q, D_v]`` in q's dtype, and with ``return_lse`` also
        lse ``[B, H_q, S_q]`` float32 (float64 for float64 inputs on the reference backend).
        lse is differentiable (every backend that returns it): merging partial attentions
        through it (``merge_attentions``) gives the gradients of the merged attention.
    q, k, v share one floating dtype (float16, bfloat16, float32, float64) and one device.
    GQA: ``H_q % H_kv == 0``; query head ``h`` reads kv head ``h // (H_q // H_kv)``.

    Logits: ``s = scale * q . k`` (``scale`` defaults to ``1/sqrt(D)``); with ``softcap``,
    ``s = softcap * tanh(s / softcap)``; then ``s += bias``; then pairs outside the pattern are
    removed. Positions: key ``j`` is at ``j``, query row ``i`` at ``i + S_k - S_q`` (bottom-right
    alignment when ``S_q != S_k``: the last query is the newest token).

    Args:
        pattern: a ``tessera.patterns.Pattern``, a pattern spec string (``tessera.patterns.parse``),
            or None (dense). ``causal=True`` intersects it with ``Causal()``.
        score: ``"softmax"``: ``o_i = sum_j p_ij v_j``, ``p_ij = exp(s_ij) / (exp(sink_h) +
            sum_k exp(s_ik))`` (sink term only with ``sinks``), ``lse_i = log(exp(sink_h) + sum_k
            exp(s_ik))``. ``"sigmoid"`` (FlashSigmoid): ``o_i = sum_j sigmoid(s_ij + sigmoid_bias)
            v_j``, not normalized; ``sigmoid_bias`` defaults to ``-log(S_k)`` (per sequence for
            varlen). Sigmoid scores have no log-sum-exp and no denominator, so ``return_lse`` and
            ``sinks`` are errors with them.
        bias: a tensor broadcastable to ``[B, H_q, S_q, S_k]`` or a ``tessera.bias.Bias``
            (``ALiBi``, ``LowRank``, ``RelativePosition``). Gradients reach its learnable tensors.
        softcap: positive finite float, or None.
        sinks: float ``[H_q]``, one learnable logit per head joining the softmax denominator.
        cu_seqlens_q, cu_seqlens_k: int32 ``[N + 1]`` cumulative lengths for packed variable-length
            sequences (``B == 1``); each sequence is attended on its own, positions restarting at 0.
        backend: ``"auto"``, ``"reference"``, ``"sdpa"`` or any registered name. ``"auto"`` picks
            the reference on CPU; on CUDA, SDPA when it supports the call, else Triton when it is
            registered and supports the call, else the reference. ``explain`` says why.
        deterministic: ask for a backward pass without atomics (run-to-run identical gradients).

    Fully masked query rows give ``o = 0`` and ``lse = -inf`` (``lse = sink`` with sinks), with
    finite gradients.

    A ``Neighborhood`` pattern with nothing else on the scores runs as ``tessera.natten`` runs it
    on the Triton kernels (tiled token orders, padded grids): the same attention, faster. So do
    unshifted ``Swin`` windows and MaxViT block attention, which are neighborhoods
    (``patterns.vision.equivalent_neighborhood``), and MaxViT grid attention, a dilated
    neighborhood whose groups the kernels address in place (else block attention on its tokens
    reordered into blocks, ``MaxViTGrid.as_blocks``). Other grid patterns (shifted
    Swin windows, halos, CSWin, criss-cross) run on the Triton kernels in a tiled token order
    where it lists far fewer key tiles (``tessera.tiled_grid_patterns``).

    Under ``torch.compile``, a call whose pattern has a spec string and that has no bias, sinks
    or varlen lengths is one custom op each way (``tessera.attention_ops``; ``fullgraph=True``
    and CUDA graphs work), dense and causal calls with ``return_lse`` too; other dense and causal
    calls trace into SDPA where it takes them.
    """
    if torch.compiler.is_compiling() and bias is None and sinks is None and cu_seqlens_q is None \
            and cu_seqlens_k is None:
        spec = attention_ops.pattern_spec(pattern, return_lse)
        if spec is not None:
            return attention_ops.traced_call(q, k, v, spec, causal=causal, scale=scale, score=score,
                                             softcap=softcap, sigmoid_bias=sigmoid_bias,
                                             return_lse=return_lse, layout=layout, backend=backend,
                                             deterministic=deterministic)
    call, layout = _build_call(q, k, v, pattern=pattern, causal=causal, scale=scale, score=score,
                               bias=bias, softcap=softcap, sinks=sinks, return_lse=return_lse,
                               layout=layout, sigmoid_bias=sigmoid_bias,
                               cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                               deterministic=deterministic)
    routed = _neighborhood_call(call, backend)
    if routed is None:
        routed = tiled_grid_call(call, backend, lambda tiled: _choose_backend(tiled, backend).run(tiled))
    o, lse = routed if routed is not None else _choose_backend(call, backend).run(call)
    if layout == "bhsd":
        o = o.transpose(1, 2)
    return (o, lse) if return_lse else o


def unrouted_attention(q, k, v, *, backend: str = "auto", **kwargs):
    """``(o, lse)`` from the backend that ``attention(q, k, v, backend=backend, **kwargs)``
    chooses, on ``[B, S, H, D]`` tensors, without the routes of grid patterns (natten's path, tiled
    orders; lse as the backend returns it): ``tessera.natten``'s own row-major and reordered runs,
    which those routes would send back to it."""
    call, _ = _build_call(q, k, v, **kwargs)
    return _choose_backend(call, backend).run(call)


def _routable(call: AttentionCall, backend: str) -> bool:
    """Whether a call may leave for natten's path or a reordered run: nothing on its scores but
    the pattern (softmax, no causal flag, bias, softcap, sinks, varlen lengths or determinism
    request), on the Triton kernels (``backend`` "triton", or "auto" on CUDA)."""
    if (call.causal or call.score != "softmax" or call.bias is not None or call.softcap is not None
            or call.sinks is not None or call.cu_seqlens_q is not None or call.deterministic):
        return False
    return backend == "triton" or (backend == "auto" and call.q.device.type == "cuda")


def takes_natten_path(call: AttentionCall, backend: str) -> bool:
    """Whether ``_neighborhood_call`` runs ``call`` (through ``tessera.natten``)."""
    return _natten_pattern(call, backend) is not None


# MaxViT grid attention runs through natten's dilation fold up to this head dim, swapped into
# blocks above it. H200, bf16, CUDA graphs, fold / swap ms (results/tuning/2026-12-03-h200-fold-configs.json):
# 56 x 56, 7 x 7 groups, B 64, H 2, D 32: fwd 0.121 / 0.148, fwd+bwd 0.458 / 0.465; 28 x 28, H 4,
# D 32: 0.063 / 0.088, 0.242 / 0.259; D 64, H 2: fwd 0.048 (2 warps) / 0.070, fwd+bwd 0.193 (4
# warps in all three kernels) / 0.214. Larger head dims are not measured.
MAXVIT_FOLD_MAX_HEAD_DIM = 64


def _natten_pattern(call: AttentionCall, backend: str):
    """What ``_neighborhood_call`` runs ``call`` as: its ``equivalent_neighborhood``, or its
    ``MaxViTGrid`` pattern (swapped into blocks) where natten's dilation fold does not take that
    neighborhood or the head dim exceeds ``MAXVIT_FOLD_MAX_HEAD_DIM``, or None where it leaves
    the call."""
    if call.pattern is None or not _routable(call, backend):
        return None
    pattern = equivalent_neighborhood(call.pattern)
    if type(call.pattern) is MaxViTGrid and not (
            max(call.q.shape[-1], call.v.shape[-1]) <= MAXVIT_FOLD_MAX_HEAD_DIM
            and _natten().folds_in_kernel(pattern, backend, call.q.device)):
        pattern = call.pattern
    return pattern if pattern is not None and pattern.ndim <= 3 else None


def _natten():
    from . import natten
    return natten


def _neighborhood_call(call: AttentionCall, backend: str):
    """``(o, lse)`` (``[B, S, H, D]``; lse None unless asked for) of a ``_routable`` call whose
    pattern is a plain ``Neighborhood``, or a vision pattern that is one
    (``equivalent_neighborhood``: unshifted Swin windows, MaxViT block attention), run through
    ``tessera.natten``: its tiled orders, padded grids and grid-order kernels instead of the
    row-major order. MaxViT grid attention, a neighborhood with dilation ``L / G``, runs as one
    tile pair per dilation group addressed in place (natten's dilation fold) where the Triton
    kernels take it, else as block attention on its tokens reordered into blocks
    (``MaxViTGrid.as_blocks``: one copy in and out, where its dilation groups would take
    gathers). None for any other call."""
    pattern = _natten_pattern(call, backend)
    if pattern is None:
        return None
    if type(pattern) is MaxViTGrid:
        grid_attention = call.pattern
        blocks = dataclasses.replace(call, q=grid_attention.as_blocks(call.q), k=grid_attention.as_blocks(call.k),
                                     v=grid_attention.as_blocks(call.v), pattern_key=None,
                                     pattern=MaxViTBlock(grid_attention.grid, grid_attention.grid_size))
        o, lse = _neighborhood_call(blocks, backend)
        return grid_attention.from_blocks(o), (None if lse is None else grid_attention.from_blocks(lse, 2))
    neighborhood_attention = _natten().neighborhood_attention
    batch, seq = call.q.shape[:2]
    shaped = [t.reshape(batch, *pattern.grid, *t.shape[2:]) for t in (call.q, call.k, call.v)]
    o, lse = neighborhood_attention(*shaped, pattern.kernel, pattern.dilation, pattern.stride, pattern.causal,
                                    na_dim=pattern.ndim, backend=backend, scale=call.scale, return_lse=True)
    return o.reshape(batch, seq, *o.shape[-2:]), (lse.reshape(*lse.shape[:2], seq) if call.return_lse else None)


def explain(q, k, v, **kwargs) -> dict[str, Optional[str]]:
    """For the same arguments as ``attention``: per registered backend, None if it can run the call,
    else the reason it cannot; key ``"auto"`` names the backend ``backend="auto"`` would pick."""
    backend = kwargs.pop("backend", "auto")
    _check_backend_name(backend)
    call, _ = _build_call(q, k, v, **kwargs)
    reasons = {name: registry.get_backend(name).supports(call)
               for name in registry.available_backends()}
    reasons["auto"] = _auto_backend(call).name
    return reasons


# ---- dispatch ---------------------------------------------------------------------------------

def _check_backend_name(backend) -> None:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {['auto'] + registry.available_backends()}, "
                        f"got {type(backend).__name__}")
    if backend != "auto" and backend not in registry.available_backends():
        raise ValueError(f"backend must be one of {['auto'] + registry.available_backends()}, "
                         f"got {backend!r}")


def _auto_backend(call: AttentionCall) -> registry.Backend:
    if call.q.device.type == "cuda":
        for name in ("sdpa", "triton"):
            if name in registry.available_backends():
                candidate = registry.get_backend(name)
                if candidate.supports(call) is None:
                    return candidate
    return registry.get_backend("reference")


def _choose_backend(call: AttentionCall, backend) -> registry.Backend:
    _check_backend_name(backend)
    if backend == "auto":
        return _auto_backend(call)
    chosen = registry.get_backend(backend)
    reason = chosen.supports(call)
    if reason is not None:
        raise ValueError(f"backend={backend!r} cannot run this call: {reason}")
    return chosen


# ---- validation -------------------------------------------------------------------------------

def _build_call(q, k, v, *, pattern=None, causal=False, scale=None, score="softmax", bias=None,
                softcap=None, sinks=None, return_lse=False, layout="bshd", sigmoid_bias=None,
                cu_seqlens_q=None, cu_seqlens_k=None, deterministic=False):
    """Check every argument and return ``(AttentionCall, layout)``."""
    _check_layout(layout)
    for name, flag in (("causal", causal), ("return_lse", return_lse),
                       ("deterministic", deterministic)):
        _check_bool(name, flag)
    q, k, v = _check_qkv(q, k, v, layout)
    batch, q_len, heads, dim = q.shape
    k_len = k.shape[1]
    _check_score(score)
    scale = 1.0 / math.sqrt(dim) if scale is None else _check_finite("scale", scale)
    if softcap is not None:
        softcap = _check_finite("softcap", softcap)
        if softcap <= 0:
            raise ValueError(f"softcap must be > 0 (or None), got {softcap}")
    if score == "sigmoid":
        if return_lse:
            raise ValueError("return_lse=True is not available with score='sigmoid': sigmoid "
                             "attention has no normalizer, so there is no log-sum-exp to return")
        if sinks is not None:
            raise ValueError("sinks must be None with score='sigmoid': a sink logit only acts "
                             "through the softmax denominator, which sigmoid attention does not have")
        if sigmoid_bias is not None:
            sigmoid_bias = _check_finite("sigmoid_bias", sigmoid_bias)
    elif sigmoid_bias is not None:
        raise ValueError(f"sigmoid_bias applies only to score='sigmoid', got sigmoid_bias="
                         f"{sigmoid_bias!r} with score={score!r}")

    varlen = _check_cu_seqlens(cu_seqlens_q, cu_seqlens_k, q, k)
    bias = as_bias(bias)
    if bias is not None:
        bias.check(batch, heads, q_len, k_len, q.device)
        if isinstance(bias, RelativePosition):
            if varlen:
                lengths_q = torch.diff(cu_seqlens_q).tolist()
                lengths_k = torch.diff(cu_seqlens_k).tolist()
                for lq, lk in zip(lengths_q, lengths_k):
                    bias.check_lengths(lq, lk)
            else:
                bias.check_lengths(q_len, k_len)
    if sinks is not None:
        _check_sinks(sinks, heads, q)
    pattern, causal = _resolve_pattern(pattern, causal)
    if pattern is not None and hasattr(pattern, "check_lengths"):
        pairs = (zip(torch.diff(cu_seqlens_q).tolist(), torch.diff(cu_seqlens_k).tolist())
                 if varlen else [(q_len, k_len)])
        for lq, lk in pairs:
            try:
                pattern.check_lengths(lq, lk, heads)
            except (ValueError, TypeError) as e:
                raise type(e)(f"pattern {pattern!r} does not fit this call: {e}") from None

    call = AttentionCall(q=q, k=k, v=v, pattern=pattern, causal=causal, scale=scale, score=score,
                         sigmoid_bias=sigmoid_bias, bias=bias, softcap=softcap, sinks=sinks,
                         return_lse=return_lse, cu_seqlens_q=cu_seqlens_q,
                         cu_seqlens_k=cu_seqlens_k, deterministic=deterministic)
    return call, layout


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")


def _check_layout(layout) -> None:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")


def _check_score(score) -> None:
    if not isinstance(score, str) or score not in SCORES:
        raise ValueError(f"score must be one of {list(SCORES)}, got {score!r}")


def _check_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_qkv(q, k, v, layout: str):
    """Type/shape/dtype/device checks; returns ``[B, S, H, D]`` views of q, k, v."""
    dims = "[B, S, H, D]" if layout == "bshd" else "[B, H, S, D]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D {dims} (layout={layout!r}), "
                             f"got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float16, bfloat16, float32 or float64, "
                            f"got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")
    if layout == "bhsd":
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    (b, s_q, h_q, d), (bk, s_k, h_kv, dk), (bv, s_v, h_v, _) = q.shape, k.shape, v.shape
    if bk != b or bv != b:
        raise ValueError(f"k and v must have q's batch size B={b}, got k: {bk}, v: {bv}")
    if s_v != s_k:
        raise ValueError(f"v must have k's sequence length S_k={s_k}, got {s_v}")
    if h_v != h_kv:
        raise ValueError(f"v must have k's number of heads H_kv={h_kv}, got {h_v}")
    if dk != d:
        raise ValueError(f"k must have q's head dim D={d}, got {dk}")
    if h_kv == 0 or h_q % h_kv != 0:
        raise ValueError(f"k's number of heads H_kv must divide q's H_q={h_q} (GQA), got H_kv={h_kv}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.numel() == 0:
            raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)} "
                             f"(as [B, S, H, D])")
    return q, k, v


def _check_sinks(sinks, heads: int, q: torch.Tensor) -> None:
    if not isinstance(sinks, torch.Tensor):
        raise TypeError(f"sinks must be a torch.Tensor [H_q] or None, got {type(sinks).__name__}")
    if sinks.dtype not in FLOAT_DTYPES:
        raise TypeError(f"sinks must have a floating dtype, got {sinks.dtype}")
    if tuple(sinks.shape) != (heads,):
        raise ValueError(f"sinks must have shape [H_q] = [{heads}], got {list(sinks.shape)}")
    if sinks.device != q.device:
        raise ValueError(f"sinks must be on q's device {q.device}, got {sinks.device}")


def _check_cu_seqlens(cu_q, cu_k, q: torch.Tensor, k: torch.Tensor) -> bool:
    """Returns True for a varlen call."""
    if cu_q is None and cu_k is None:
        return False
    if cu_q is None or cu_k is None:
        missing = "cu_seqlens_q" if cu_q is None else "cu_seqlens_k"
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must be given together, got {missing}=None")
    if q.shape[0] != 1:
        raise ValueError(f"q must have batch size B=1 with cu_seqlens (sequences are packed along "
                         f"S), got B={q.shape[0]}")
    for name, cu, total in (("cu_seqlens_q", cu_q, q.shape[1]), ("cu_seqlens_k", cu_k, k.shape[1])):
        if not isinstance(cu, torch.Tensor):
            raise TypeError(f"{name} must be an int32 torch.Tensor, got {type(cu).__name__}")
        if cu.dtype != torch.int32:
            raise TypeError(f"{name} must have dtype torch.int32, got {cu.dtype}")
        if cu.dim() != 1 or cu.shape[0] < 2:
            raise ValueError(f"{name} must be 1-D [N + 1] with N >= 1, got shape {tuple(cu.shape)}")
        if cu.device != q.device:
            raise ValueError(f"{name} must be on q's device {q.device}, got {cu.device}")
        values = cu.tolist()
        if values[0] != 0:
            raise ValueError(f"{name} must start at 0, got {values[0]}")
        if any(b < a for a, b in zip(values, values[1:])):
            raise ValueError(f"{name} must be non-decreasing, got {values}")
        if values[-1] != total:
            raise ValueError(f"{name} must end at the packed length {total}, got {values[-1]}")
    if cu_q.shape[0] != cu_k.shape[0]:
        raise ValueError(f"cu_seqlens_k must hold as many sequences as cu_seqlens_q "
                         f"({cu_q.shape[0] - 1}), got {cu_k.shape[0] - 1}")
    return True


def _resolve_pattern(pattern, causal: bool):
    """(pattern with causal folded in or None for dense, causal flag)."""
    if isinstance(pattern, str):
        from .patterns import parse
        try:
            pattern = parse(pattern)
        except (ValueError, TypeError) as e:
            raise ValueError(f"pattern: invalid spec string {pattern!r}: {e}") from None
    elif pattern is not None and not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a tessera.patterns.Pattern, a spec string or None, "
                        f"got {type(pattern).__name__}")
    if type(pattern) is Dense:
        pattern = None
    if type(pattern) is Causal:
        causal = True
    if causal:
        if pattern is None or type(pattern) is Causal:
            pattern = Causal()
        else:
            pattern = pattern & Causal()
    return pattern, causal


from . import attention_ops  # noqa: E402  (registers the custom ops torch.compile traces to)
