"""The ``"triton"`` attention backend: block-sparse flash kernels behind ``tessera.attention``.

``run(call)`` returns ``(o [B, S_q, H_q, D_v], lse float32 [B, H_q, S_q])`` (lse None for sigmoid
scores) and records an autograd node when any input tensor requires grad: gradients reach q, k, v,
``sinks``, ALiBi ``slopes``, a ``TensorBias`` tensor, ``LowRank`` factors ``u``, ``w`` (rank up
to 64; the bias ``u @ w^T`` is formed per tile in-kernel, never as a whole) and a
``RelativePosition`` table (grids of up to 3 dims; gathered per tile in-kernel; its gradient is
summed per (batch, head, query tile) in the dq kernel, then in torch). The backward is
deterministic (no atomics). Varlen calls (``cu_seqlens``) launch the kernels once per sequence.
Not supported (``supports`` says so): float64 q/k/v.

Runs on CUDA tensors; on CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's interpreter, slow:
for tests). fp32 inputs use tf32 dot products when ``torch.backends.cuda.matmul.allow_tf32`` is
set, exact fp32 otherwise.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from triton.runtime.errors import OutOfResources

from ...bias import ALiBi, LowRank, RelativePosition, TensorBias
from ...patterns.base import Dense
from ...patterns.layout import Permuted
from ...patterns.neighborhood import Neighborhood, PaddedNeighborhood
from ...patterns.tilemap import EMPTY, FULL, PARTIAL
from ..registry import AttentionCall, register_backend
from . import backward_route, flash_bwd, flash_fwd, forward_route, masks, tuning
from .prepared_run import PreparedRun
from .row_dot import row_dot
from .masks import (MASK_BAND, MASK_NEIGHBORHOOD, MASK_NONE, get_plan, grid_order_params, neighborhood_params,
                    offset_band, pattern_key, remembered)
from .scoring import INTERPRETED
from .tuning import KernelConfig, MaskShape, kernel_config

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256
_MAX_RANK = 64


def kernels_interpreted() -> bool:
    """Whether the kernels were defined under ``TRITON_INTERPRET=1`` (Triton decides compiled vs
    interpreted when a kernel is defined, and its own library functions when it is imported, so
    the variable must be set before ``import triton``)."""
    return INTERPRETED


@dataclass(frozen=True)
class _Spec:
    """The non-tensor part of a call, as the autograd node keeps it."""

    pattern: object
    scale: float
    softcap: Optional[float]
    sigmoid_bias: Optional[float]
    precision: str
    interpret: bool
    grid: Optional[tuple] = None        # RelativePosition token grid
    grid_order: bool = False            # AttentionCall.grid_order
    pattern_key: object = None          # masks.pattern_key(pattern), computed once per call
    fold: object = None                 # AttentionCall.dilation_fold
    lengths: Optional[tuple] = None     # the padded grid's (S, S) of an AttentionCall.extent_only
    rows: object = None                 # AttentionCall.grid_rows


def _lengths(spec: _Spec, q, k) -> tuple[int, int]:
    """``(S_q, S_k)`` of the attention problem: the tensors' lengths, one dilation group's under
    a fold (the tensors hold every group), or the padded grid's when the tensors hold only its
    extent."""
    if spec.lengths is not None:
        return spec.lengths
    groups = spec.fold.groups if spec.fold is not None else 1
    return q.shape[1] // groups, k.shape[1] // groups


def supports(call: AttentionCall) -> Optional[str]:
    q, k, v = call.q, call.k, call.v
    if INTERPRETED:
        if q.device.type != "cpu":
            return f"kernels are interpreted (TRITON_INTERPRET=1): needs CPU tensors, got {q.device.type}"
    elif q.device.type != "cuda":
        return (f"needs CUDA tensors (or TRITON_INTERPRET=1 set before importing triton, to "
                f"emulate on CPU), got device {q.device.type}")
    if q.dtype not in _DTYPES:
        return f"dtype must be float16, bfloat16 or float32, got {q.dtype}"
    if not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    if max(q.shape[-1], v.shape[-1]) > _MAX_HEAD_DIM:
        return f"head dims up to {_MAX_HEAD_DIM}, got D={q.shape[-1]}, D_v={v.shape[-1]}"
    if call.bias is not None and not isinstance(call.bias, (ALiBi, TensorBias, LowRank,
                                                            RelativePosition)):
        return (f"bias {type(call.bias).__name__} is not supported (TensorBias, ALiBi, LowRank and "
                f"RelativePosition are); materialize it as a TensorBias")
    if isinstance(call.bias, RelativePosition):
        reason = _rel_pos_reason(call)
        if reason is not None:
            return reason
    if isinstance(call.bias, LowRank) and call.bias.u.shape[-1] > _MAX_RANK:
        return (f"LowRank rank up to {_MAX_RANK}, got R={call.bias.u.shape[-1]}; materialize it as "
                f"a TensorBias")
    if call.score == "sigmoid" and call.sinks is not None:
        return "sinks join a softmax denominator; sigmoid scores have none"
    if call.cu_seqlens_q is None and (q.shape[1] == 0 or k.shape[1] == 0):
        return "empty sequences are not supported"
    if call.extent_only:
        return _extent_only_reason(call)
    if call.grid_order:
        return _grid_order_reason(call)
    return None


def _grid_order_reason(call: AttentionCall) -> Optional[str]:
    if call.bias is not None or call.cu_seqlens_q is not None:
        return "grid-order calls take no bias and no cu_seqlens"
    if call.q.shape[1] != call.k.shape[1]:
        return f"grid-order calls need S_q == S_k, got {call.q.shape[1]} and {call.k.shape[1]}"
    fold = call.dilation_fold
    if fold is not None and call.q.shape[1] != math.prod(fold.grid):
        return f"a dilation fold over grid {fold.grid} needs S = {math.prod(fold.grid)}, got {call.q.shape[1]}"
    rows = call.grid_rows
    if rows is not None and (fold is not None or call.extent_only):
        return "grid rows (a roll or a row map) take no dilation fold and no extent-only tensors"
    if isinstance(rows, masks.GridRows):
        if type(call.pattern) is not Permuted or rows.size != call.q.shape[1]:
            return (f"a row map of {rows.size} rows needs a Permuted pattern over as many tokens, "
                    f"got {call.pattern!r} over {call.q.shape[1]}")
        return None
    if not _addressable_in_grid_order(call.pattern, call.pattern_key):
        return ("grid-order calls need a grid pattern (at most 3 axes) in a GridLayout whose tiles "
                f"divide the grid, got {call.pattern!r}")
    if rows is not None:
        layout_grid = tuple(call.pattern.layout.grid)
        grid = (1,) * (3 - len(layout_grid)) + layout_grid
        if rows.grid != grid:
            return f"a grid roll over {rows.grid} needs the pattern's grid, got {grid}"
    return None


def _extent_only_reason(call: AttentionCall) -> Optional[str]:
    """Why an ``extent_only`` call cannot run (None: it can): it needs the Gluon kernels
    forward and backward (``forward_route.gluon_variant``, ``backward_route.routes``), so a
    Hopper GPU, plain softmax in grid order over a ``PaddedNeighborhood``, 16-bit contiguous q,
    k, v holding its extent, and the routes' scope."""
    pattern = call.pattern
    if (not call.grid_order or type(pattern) is not Permuted
            or type(pattern.pattern) is not PaddedNeighborhood or call.dilation_fold is not None):
        return "extent-only calls need grid order over a PaddedNeighborhood (no dilation fold)"
    if (call.score != "softmax" or call.softcap is not None or call.sinks is not None
            or call.bias is not None or call.cu_seqlens_q is not None):
        return "extent-only calls take plain softmax: no softcap, sinks, bias or cu_seqlens"
    extent = math.prod(pattern.pattern.extent)
    if not all(t.shape[1] == extent and t.is_contiguous() for t in (call.q, call.k, call.v)):
        return f"extent-only calls need contiguous q, k, v holding the extent's {extent} tokens"
    if not forward_route.on_hopper(call.q):
        return "extent-only calls run on the Gluon kernels, which need a Hopper GPU"
    q, k, v = call.q, call.k, call.v
    spec = _spec_of(call, q, k, None)
    configs = _configs(spec, q, k, v)
    if _gluon_forward(spec, q, k, v, _plan(spec, q, k, configs["fwd"])) is None:
        return "the Gluon forward does not take this extent-only call"
    if not all(backward_route.routes(q, k, v, q, _plan(spec, q, k, configs["dq"]),
                                     _plan(spec, q, k, configs["dkdv"]))):
        return "the Gluon dq and dk/dv kernels do not both take this extent-only call"
    return None


# pattern_key -> whether the kernels can address that pattern's tiled order in grid order.
_GRID_ORDER_OK: dict = {}


def _addressable_in_grid_order(pattern, key=None) -> bool:
    """Whether the kernels can address ``pattern``'s positions in grid order
    (``grid_order_params``), remembered per ``key`` (its ``pattern_key``) when the caller gives
    one."""
    def addressable():
        return grid_order_params(pattern, 64, 64) is not None
    return addressable() if key is None else remembered(_GRID_ORDER_OK, key, addressable)


def _rel_pos_reason(call: AttentionCall) -> Optional[str]:
    bias: RelativePosition = call.bias
    if len(bias.grid) > 3:
        return f"RelativePosition grids of up to 3 dims, got {bias.grid}"
    if call.cu_seqlens_q is None:
        lengths = [(call.q.shape[1], call.k.shape[1])]
    else:
        cu_q, cu_k = call.cu_seqlens_q.tolist(), call.cu_seqlens_k.tolist()
        lengths = [(cu_q[i + 1] - cu_q[i], cu_k[i + 1] - cu_k[i]) for i in range(len(cu_q) - 1)]
    for q_len, k_len in lengths:
        if q_len != bias.num_tokens or k_len != bias.num_tokens:
            return (f"RelativePosition over grid {bias.grid} needs S_q == S_k == {bias.num_tokens}, "
                    f"got S_q={q_len}, S_k={k_len}")
    return None


def _head_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# Products of float32 inputs on a GPU when torch's TF32 matmuls are off: "ieee" (exact products,
# no tensor cores) or "tf32x3" (three TF32 tensor-core products, about float32 accuracy). An A/B
# switch until the GPU has timed both (benchmarks/gpu_fp32_ab.py): sm_90 compiles of the "ieee"
# forward hold 32 registers and spill 7 KB per thread.
FP32_PRECISION = os.environ.get("TESSERA_FP32_PRECISION", "ieee")


def _precision(dtype: torch.dtype, interpret: bool, low_rank: bool = False) -> str:
    """``input_precision`` of the kernels' products. Calls with a low-rank bias keep "ieee" under
    "tf32x3": their dk/dv kernel hits an illegal memory access with it on the H200 at every dk/dv
    config tried, with or without factor gradients (results/tuning/2026-11-30-h200-fp32-bisect.json)."""
    if dtype == torch.float32 and not interpret:
        if torch.backends.cuda.matmul.allow_tf32:
            return "tf32"
        return "ieee" if low_rank and FP32_PRECISION == "tf32x3" else FP32_PRECISION
    return "ieee" if dtype == torch.float32 else "tf32"


def _mask_shape(pattern, q_len: int, k_len: int, heads: int, device, key=None) -> Optional[MaskShape]:
    """The pattern's tile map at 64 x 64 tiles as the tile-size choice sees it (None: dense):
    its fraction of partial tiles, whether they are masked by one offset band, and whether by the
    N-D neighborhood mask. ``key``: the pattern's ``pattern_key`` when known."""
    if pattern is None or isinstance(pattern, Dense):
        return None
    plan = get_plan(pattern, q_len, k_len, 64, 64, heads, device, key)
    return MaskShape(plan.partial_fraction(), plan.mask_mode in (MASK_NONE, MASK_BAND),
                     neighborhood=plan.mask_mode == MASK_NEIGHBORHOOD,
                     tiled=isinstance(pattern, Permuted), tiled_grid_rule=_tiled_grid_rule(pattern),
                     one_tile=q_len <= 64 and k_len <= 64)


def _tiled_grid_rule(pattern) -> bool:
    return isinstance(pattern, Permuted) and not isinstance(pattern.pattern, Neighborhood)


def forward_tiles(pattern, q_len: int, k_len: int, heads: int, dim: int,
                  dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """``(block_m, block_n)`` of the forward kernel on a GPU for ``pattern`` at these lengths,
    heads and head dim (the tile map the kernel walks; tile plans are built on the CPU here)."""
    shape = _mask_shape(pattern, q_len, k_len, heads, torch.device("cpu"))
    config = kernel_config("fwd", dim, dtype, False, shape)
    return config.block_m, config.block_n


def _states_mask_shape(pattern, q_len: int, k_len: int, heads: int) -> Optional[MaskShape]:
    """``_mask_shape`` from the pattern's 64 x 64 tile states alone, without the plan's bitmasks
    (seconds for a 4,096-token pattern whose tiles are all partial): the same except for bitmask
    patterns whose partial tiles all share one offset band, which a built plan masks by that band."""
    if pattern is None or isinstance(pattern, Dense):
        return None
    states = pattern.tile_states(q_len, k_len, 64, 64, heads if pattern.head_dependent else 1).clone()
    if q_len % 64:
        states[:, -1, :][states[:, -1, :] == FULL] = PARTIAL
    if k_len % 64:
        states[:, :, -1][states[:, :, -1] == FULL] = PARTIAL
    listed, partial = int((states != EMPTY).sum()), int((states == PARTIAL).sum())
    neighborhood = (partial > 0 and masks.ANALYTIC_NEIGHBORHOOD and offset_band(pattern) is None
                    and neighborhood_params(pattern, 64, 64) is not None)
    return MaskShape(partial / listed if listed else 0.0, partial == 0 or offset_band(pattern) is not None,
                     neighborhood=neighborhood, tiled=isinstance(pattern, Permuted),
                     tiled_grid_rule=_tiled_grid_rule(pattern), one_tile=q_len <= 64 and k_len <= 64)


def estimated_forward_tiles(pattern, q_len: int, k_len: int, heads: int, dim: int,
                            dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """``forward_tiles`` from the tile states alone (``_states_mask_shape``), for costing orders
    that may never run."""
    config = kernel_config("fwd", dim, dtype, False, _states_mask_shape(pattern, q_len, k_len, heads))
    return config.block_m, config.block_n


# (pattern_key, lengths, heads, head dim, dtype, interpret, device) -> the three kernel configs.
_CONFIGS: dict[tuple, dict] = {}


def _configs(spec: _Spec, q, k, v):
    """The ``fwd``, ``dq`` and ``dkdv`` configs of a call, remembered per problem when the pattern
    key is value-based and no config is forced (``tuning.OVERRIDES``)."""
    dim = max(q.shape[-1], v.shape[-1])
    q_len, k_len = _lengths(spec, q, k)

    def configs():
        shape = None if spec.interpret else _mask_shape(spec.pattern, q_len, k_len, q.shape[2],
                                                        q.device, spec.pattern_key)
        return {name: kernel_config(name, dim, q.dtype, spec.interpret, shape) for name in ("fwd", "dq", "dkdv")}
    if tuning.OVERRIDES:
        return configs()
    return remembered(_CONFIGS, spec.pattern_key, configs, q_len, k_len, q.shape[2], dim,
                      q.dtype, spec.interpret, q.device)


def _plan(spec: _Spec, q, k, config):
    return get_plan(spec.pattern, *_lengths(spec, q, k), config.block_m, config.block_n,
                    q.shape[2], q.device, spec.pattern_key)


# (kernel, chosen config, variant) -> the smaller config that fit in shared memory.
_FITTING: dict[tuple, KernelConfig] = {}


def _smaller(config: KernelConfig) -> Optional[KernelConfig]:
    """Next configuration to try after running out of shared memory (None: nothing smaller)."""
    if config.block_n > 32:
        return replace(config, block_n=config.block_n // 2)
    if config.num_stages > 1:
        return replace(config, num_stages=config.num_stages - 1)
    if config.block_m > 32:
        return replace(config, block_m=config.block_m // 2)
    return None


def _variant(spec: _Spec, q, v, *tensors) -> tuple:
    return (q.dtype, q.shape[-1], v.shape[-1], spec.softcap is not None, spec.sigmoid_bias is not None,
            spec.pattern is None or isinstance(spec.pattern, Dense),
            offset_band(spec.pattern, spec.pattern_key) is None,
            tuple(t is not None and (t.requires_grad, t.dtype) for t in tensors))


def _fitting(kernel: str, config: KernelConfig, variant: tuple) -> KernelConfig:
    return _FITTING.get((kernel, config, variant), config)


def _shrink(kernel: str, original: KernelConfig, current: KernelConfig, variant: tuple,
            error: Exception) -> KernelConfig:
    smaller = _smaller(current)
    if smaller is None:
        raise error
    _FITTING[(kernel, original, variant)] = smaller
    return smaller


def _low_rank(u, w):
    return None if u is None else (u, w)


def _rel_pos(spec: _Spec, table):
    return None if table is None else (table, spec.grid)


def _plain(spec: _Spec) -> bool:
    """Whether calls of ``spec`` (with no bias, sinks, slopes, factors or table) may take the
    Gluon kernels: plain softmax in grid order, positions addressed by the plan's tiles."""
    return (spec.grid_order and spec.rows is None and spec.softcap is None
            and spec.sigmoid_bias is None)


def _forward(spec: _Spec, q, k, v, sinks, slopes, bias, u, w, table):
    original = _configs(spec, q, k, v)["fwd"]
    variant = _variant(spec, q, v, sinks, slopes, bias, u, table)
    config = _fitting("fwd", original, variant)
    plain = _plain(spec) and all(t is None for t in (sinks, slopes, bias, u, table))
    while True:
        plan = _plan(spec, q, k, config)
        gluon = _gluon_forward(spec, q, k, v, plan) if plain else None
        if gluon is not None:
            return gluon(q, k, v)
        if spec.lengths is not None:
            raise RuntimeError("an extent-only call reached the Triton forward, which cannot read it "
                               "(the Gluon forward's route declined it after supports accepted it)")
        try:
            return flash_fwd.forward(q, k, v, plan, scale=spec.scale,
                                     config=config, softcap=spec.softcap, sinks=sinks,
                                     slopes=slopes, bias=bias, low_rank=_low_rank(u, w),
                                     rel_pos=_rel_pos(spec, table), sigmoid_bias=spec.sigmoid_bias,
                                     precision=spec.precision, grid_order=spec.grid_order,
                                     fold=spec.fold, grid_rows=spec.rows)
        except OutOfResources as error:
            config = _shrink("fwd", original, config, variant, error)


def _forward_launch(spec: _Spec, q, k, v) -> Optional[Callable]:
    """The Gluon forward that ``_forward`` picks for a call of ``spec`` on q, k, v alone (no
    bias, sinks or factors), as a function ``(q, k, v) -> (o, lse)`` for tensors with these
    shapes, strides, dtypes, device and base alignment (``prepared_run``); None where the Triton
    kernel runs it."""
    if not _plain(spec):
        return None
    variant = _variant(spec, q, v, None, None, None, None, None)
    config = _fitting("fwd", _configs(spec, q, k, v)["fwd"], variant)
    return _gluon_forward(spec, q, k, v, _plan(spec, q, k, config))


def _gluon_forward(spec: _Spec, q, k, v, plan) -> Optional[Callable]:
    """The Gluon forward of a plain grid-order call over ``plan`` (``forward_route.gluon_variant``)
    as a function ``(q, k, v) -> (o, lse)`` for tensors like these, or None where the Triton
    kernel runs it. The kernel functions are looked up per call (spies in tests see them)."""
    gluon = forward_route.gluon_variant(q, k, v, plan, spec.fold)
    if gluon is None:
        return None
    if gluon.pop("boxes", False):
        from ..gluon import na_forward_boxes as boxes
        box_plan = boxes.call_plan(q, k, v, plan)
        return lambda q, k, v: boxes.na_forward_boxes(q, k, v, box_plan, scale=spec.scale,
                                                      scope_checked=True, **gluon)
    from ..gluon import na_forward as gluon_module
    rows = gluon.pop("block_m", plan.block_m)
    gluon_plan = plan
    if rows != plan.block_m:
        gluon_plan = get_plan(spec.pattern, *_lengths(spec, q, k), rows, plan.block_n,
                              q.shape[2], q.device, spec.pattern_key)
    # The route checked na_forward's scope for ``plan``; a plan at other rows is checked here
    # (cached per plan and tensors).
    if gluon_plan is not plan and not gluon_module.supports(q, k, v, gluon_plan, spec.fold):
        return None
    return lambda q, k, v: gluon_module.na_forward(q, k, v, gluon_plan, scale=spec.scale, fold=spec.fold,
                                                   scope_checked=True, **gluon)


def _sum_to(grad: torch.Tensor, shape) -> torch.Tensor:
    """Sum a ``[B, H, ...]`` gradient over the dims a bias (or factor) of ``shape`` broadcasts
    along."""
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    return grad.sum(dims, keepdim=True) if dims else grad


class FlashAttention(torch.autograd.Function):
    """Autograd node over the forward and backward kernels."""

    @staticmethod
    def forward(ctx, q, k, v, sinks, slopes, bias, u, w, table, spec: _Spec):
        o, lse = _forward(spec, q, k, v, sinks, slopes, bias, u, w, table)
        if lse is None:
            lse = torch.empty(0, dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, o, lse, sinks, slopes, bias, u, w, table)
        ctx.spec = spec
        if lse.numel() == 0:
            ctx.mark_non_differentiable(lse)
        # Unused outputs get no gradient (None) instead of a zero tensor filled per call.
        ctx.set_materialize_grads(False)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        if do is None and dlse is None:
            return (None,) * 10
        if do is None:
            do = torch.zeros_like(ctx.saved_tensors[3])
        return _gradients(ctx.spec, ctx.saved_tensors, ctx.needs_input_grad, do, dlse)


def _gradients(spec: _Spec, saved: tuple, needs_input_grad: tuple, do: torch.Tensor,
               dlse: Optional[torch.Tensor] = None) -> tuple:
    """``FlashAttention.backward``'s gradients (of q, k, v, sinks, slopes, bias, u, w, table,
    and None for the spec) from the forward's ``saved`` tensors ``(q, k, v, o, lse, sinks,
    slopes, bias, u, w, table)``, the output gradient ``do`` and the lse gradient ``dlse`` (like
    lse, or None)."""
    q, k, v, o, lse, sinks, slopes, bias, u, w, table = saved
    original = _configs(spec, q, k, v)
    # The Gluon kernels that alone run an extent-only call read do laid out as q (contiguous).
    do = do.contiguous() if spec.lengths is not None else _head_contiguous(do)
    bias_grad = bias is not None and needs_input_grad[5]
    slope_grad = slopes is not None and needs_input_grad[4]
    low_rank_grad = u is not None and (needs_input_grad[6] or needs_input_grad[7])
    table_grad = table is not None and needs_input_grad[8]
    variant = (_variant(spec, q, v, sinks, slopes, bias, u, table)
               + (bias_grad, slope_grad, low_rank_grad, table_grad))
    configs = {name: _fitting(name, original[name], variant) for name in ("dq", "dkdv")}
    while True:
        try:
            dq, dk, dv, dbias, dslopes, du, dw, dtable = flash_bwd.backward(
                do, q, k, v, o, lse, _plan(spec, q, k, configs["dq"]),
                _plan(spec, q, k, configs["dkdv"]), scale=spec.scale,
                dq_config=configs["dq"], dkdv_config=configs["dkdv"], softcap=spec.softcap,
                slopes=slopes, bias=bias, low_rank=_low_rank(u, w),
                rel_pos=_rel_pos(spec, table), sigmoid_bias=spec.sigmoid_bias,
                bias_grad=bias_grad, slope_grad=slope_grad, low_rank_grad=low_rank_grad,
                rel_pos_grad=table_grad, precision=spec.precision, grid_order=spec.grid_order,
                fold=spec.fold, grid_rows=spec.rows, dlse=dlse)
            break
        except OutOfResources as error:
            name = getattr(error, "kernel", "dq")
            configs[name] = _shrink(name, original[name], configs[name], variant, error)
    dsinks = None
    if sinks is not None and needs_input_grad[3]:
        # d sink_h = -sum_rows exp(sink_h - lse) * (rowsum(o * do) - dlse)
        delta = row_dot(o, do)
        if dlse is not None:
            delta = delta - dlse
        p_sink = torch.exp(sinks.float().view(1, -1, 1) - lse)
        dsinks = -(p_sink * delta).sum((0, 2)).to(sinks.dtype)
    if dbias is not None:
        dbias = _sum_to(dbias, bias.shape).to(bias.dtype)
    if dslopes is not None:
        dslopes = dslopes.to(slopes.dtype)
    if du is not None:
        du = _sum_to(du, u.shape).to(u.dtype) if needs_input_grad[6] else None
        dw = _sum_to(dw, w.shape).to(w.dtype) if needs_input_grad[7] else None
    if dtable is not None:
        if table.shape[0] == 1:
            dtable = dtable.sum(0, keepdim=True)
        dtable = dtable.view(table.shape).to(table.dtype)
    return dq, dk, dv, dsinks, dslopes, dbias, du, dw, dtable, None


def _backward_launch(spec: _Spec, q, k, v, do) -> Optional[Callable]:
    """The Gluon backward (dq and dk/dv) that ``_gradients`` picks for a call of ``spec`` on q,
    k, v alone with output gradient ``do``, as a function ``(do, q, k, v, o, lse, dlse) -> (dq,
    dk, dv)`` for tensors with these shapes, strides, dtypes, device and base alignment
    (``prepared_run``); None where a Triton kernel takes part."""
    if not _plain(spec):
        return None
    original = _configs(spec, q, k, v)
    variant = _variant(spec, q, v, None, None, None, None, None) + (False,) * 4
    plans = [_plan(spec, q, k, _fitting(name, original[name], variant)) for name in ("dq", "dkdv")]
    return flash_bwd.gluon_gradients_launch(q, k, v, do, *plans, scale=spec.scale, fold=spec.fold)


def run(call: AttentionCall):
    """Backend entry point (see ``tessera.kernels.registry``). Varlen calls (``cu_seqlens``) run
    one kernel launch per sequence on views of the packed tensors."""
    if call.cu_seqlens_q is not None:
        return _run_varlen(call)
    return _run_one(call, call.q, call.k, call.v, call.bias)


def _spec_of(call: AttentionCall, q, k, bias_spec) -> _Spec:
    sigmoid_bias = None
    if call.score == "sigmoid":
        sigmoid_bias = call.sigmoid_bias if call.sigmoid_bias is not None else -math.log(k.shape[1])
    grid = bias_spec.grid if isinstance(bias_spec, RelativePosition) else None
    key = call.pattern_key if call.pattern_key is not None else pattern_key(call.pattern)
    lengths = (call.pattern.layout.size,) * 2 if call.extent_only else None
    return _Spec(call.pattern, float(call.scale), call.softcap, sigmoid_bias,
                 _precision(q.dtype, INTERPRETED, isinstance(bias_spec, LowRank)), INTERPRETED, grid,
                 call.grid_order, key, call.dilation_fold, lengths, call.grid_rows)


def prepare(call: AttentionCall) -> Optional[Callable]:
    """``run`` of ``call`` with its non-tensor part settled once: a function ``(q, k, v) -> (o,
    lse)`` for later calls whose q, k, v have the call's shapes, strides, dtypes and device and
    whose other arguments equal the call's (the caller keys its cache on those). None for calls it
    does not prepare: varlen, bias, sinks, float32 (whose precision follows a global switch), or a
    pattern without a value-based key (dense calls, pattern None, are prepared). Unless the call's
    score is sigmoid, the function is a ``prepared_run.PreparedRun``, which settles its kernel
    routes on first use, and its ``backward(q, k, v, o, lse, do, dlse=None) -> (dq, dk, dv)``
    runs the backward kernels on the o and lse it returned, for the gradients ``do`` of o and
    ``dlse`` of lse (``tessera.natten_ops``: the backward of a compiled call)."""
    if (call.cu_seqlens_q is not None or call.bias is not None or call.sinks is not None
            or call.q.dtype == torch.float32):
        return None
    q, k, v = (_head_contiguous(t) for t in (call.q, call.k, call.v))
    spec = _spec_of(call, q, k, None)
    if spec.pattern_key is None and call.pattern is not None:
        return None
    contiguous = all(t.stride(-1) == 1 for t in (call.q, call.k, call.v))
    if call.score == "sigmoid":
        def run_prepared(q, k, v):
            if not contiguous:
                q, k, v = (_head_contiguous(t) for t in (q, k, v))
            return _attend(spec, (q, k, v, None, None, None, None, None, None), True)
        return run_prepared

    def gradients(q, k, v, o, lse, do, dlse=None):
        saved = (q, k, v, o, lse, None, None, None, None, None, None)
        return _gradients(spec, saved, (True,) * 3 + (False,) * 7, do, dlse)[:3]
    return PreparedRun(
        settle_forward=lambda q, k, v: _forward_launch(spec, q, k, v),
        settle_backward=lambda q, k, v, do: _backward_launch(spec, q, k, v, do),
        forward=lambda q, k, v: _forward(spec, q, k, v, None, None, None, None, None, None),
        gradients=gradients, head_contiguous=contiguous, contiguous_do=spec.lengths is not None)


def _run_one(call: AttentionCall, q, k, v, bias_spec):
    q, k, v = (_head_contiguous(t) for t in (q, k, v))
    spec = _spec_of(call, q, k, bias_spec)
    slopes = bias_spec.slopes if isinstance(bias_spec, ALiBi) else None
    bias = bias_spec.tensor if isinstance(bias_spec, TensorBias) else None
    u = w = None
    if isinstance(bias_spec, LowRank):
        u, w = (_factor(t) for t in (bias_spec.u, bias_spec.w))
    table = bias_spec.table.contiguous() if isinstance(bias_spec, RelativePosition) else None
    sinks = call.sinks
    return _attend(spec, (q, k, v, sinks, slopes, bias, u, w, table), call.score == "sigmoid")


def _attend(spec: _Spec, tensors: tuple, sigmoid: bool):
    """``(o, lse)`` of the kernels on ``tensors`` = ``(q, k, v, sinks, slopes, bias, u, w,
    table)``: through the autograd node when any of them needs a gradient; lse None for sigmoid."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        o, lse = FlashAttention.apply(*tensors, spec)
    else:
        o, lse = _forward(spec, *tensors)
    return o, (None if sigmoid else lse)


def _factor(t: torch.Tensor) -> torch.Tensor:
    """A low-rank factor as the kernels read it: float64 computed in float32 (Triton dots have no
    float64), rank dim contiguous."""
    if t.dtype == torch.float64:
        t = t.to(torch.float32)
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _run_varlen(call: AttentionCall):
    q, k, v = call.q, call.k, call.v
    heads = q.shape[2]
    cu_q, cu_k = call.cu_seqlens_q.tolist(), call.cu_seqlens_k.tolist()
    outs, lses = [], []
    for i in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1]
        if q1 == q0:
            continue
        if k1 == k0:
            # No keys: o = 0 and lse = -inf (lse = sink with sinks).
            outs.append(q.new_zeros(1, q1 - q0, heads, v.shape[3]) + 0 * q[:, q0:q1, :, :1].sum())
            lse = torch.full((1, heads, q1 - q0), -math.inf, device=q.device)
            if call.sinks is not None:
                lse = call.sinks.float().view(1, heads, 1).expand_as(lse).contiguous()
            lses.append(lse)
            continue
        bias = None if call.bias is None else call.bias.for_sequence(q0, q1, k0, k1)
        o, lse = _run_one(call, q[:, q0:q1], k[:, k0:k1], v[:, k0:k1], bias)
        outs.append(o)
        lses.append(lse)
    if not outs:
        empty = q.new_zeros(1, 0, heads, v.shape[3])
        return empty, (None if call.score == "sigmoid"
                       else torch.zeros(1, heads, 0, device=q.device))
    o = torch.cat(outs, dim=1)
    lse = None if call.score == "sigmoid" else torch.cat(lses, dim=2)
    return o, lse


register_backend("triton", run, supports, prepare)
