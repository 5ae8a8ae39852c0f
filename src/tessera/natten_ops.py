"""``na1d`` / ``na2d`` / ``na3d`` under ``torch.compile``: one opaque graph node each way.

Traced by ``torch.compile``, ``tessera.natten.neighborhood_attention`` calls the custom op
``tessera::neighborhood_attention`` instead of its Python path (plan caches, tile maps, kernel
launches: none of it traceable), so a model compiles with ``fullgraph=True`` and, with
``mode="reduce-overhead"``, replays the attention's kernels from CUDA graphs (a gain where one
graph holds many layers: ``benchmarks/natten_compile.py``). The op runs the eager path (the same kernels, the same results bit for bit) and returns
``(o, lse)``; its backward, the op ``tessera::neighborhood_attention_backward``, takes the
forward's o and lse (``natten.neighborhood_attention_gradients``): the Triton backend's kernels
without a second forward where the call ran on them in grid order, a recomputed forward
elsewhere. lse is differentiable, as in eager mode.

Layouts reach the op as text ("auto", "row-major" or a tile shape such as "8x8"); a
``GridLayout`` object cannot, so such calls run eagerly behind a graph break.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import natten
from .compile_support import lse_dtype, register_backward
from .patterns.layout import GridLayout, as_axes, as_flags


def layout_text(layout) -> Optional[str]:
    """``layout`` ("auto", "row-major" or a tile shape) as the op's text, or None for what text
    cannot carry (a ``GridLayout``)."""
    if isinstance(layout, str):
        return layout
    if isinstance(layout, (tuple, list)) and all(isinstance(t, int) and not isinstance(t, bool) for t in layout):
        return "x".join(str(t) for t in layout)
    return None


def _layout_of(text: str):
    if text in ("auto", "row-major"):
        return text
    try:
        return tuple(int(part) for part in text.split("x"))
    except ValueError:
        return text   # the eager path names the bad value


def _eager(q, k, v, kernel_size, dilation, stride, is_causal, layout, backend, scale):
    return natten.neighborhood_attention(
        q, k, v, tuple(kernel_size), tuple(dilation), tuple(stride), tuple(is_causal),
        na_dim=len(kernel_size), layout=_layout_of(layout), backend=backend, scale=scale,
        return_lse=True)


@torch.library.custom_op("tessera::neighborhood_attention", mutates_args=())
def neighborhood_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              kernel_size: list[int], dilation: list[int], stride: list[int],
                              is_causal: list[bool], layout: str, backend: str,
                              scale: Optional[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o [B, *grid, H_q, D_v], lse [B, H_q, *grid])`` (lse float32, float64 for float64
    inputs) of ``neighborhood_attention``
    on ``q [B, *grid, H_q, D]``, ``k``, ``v`` (per-axis parameters, one per grid axis)."""
    with torch.no_grad():
        o, lse = _eager(q, k, v, kernel_size, dilation, stride, is_causal, layout, backend, scale)
    return o.contiguous(), lse.contiguous()


@neighborhood_attention_op.register_fake
def _(q, k, v, kernel_size, dilation, stride, is_causal, layout, backend, scale):
    grid = q.shape[1:1 + len(kernel_size)]
    o = q.new_empty((*q.shape[:-1], v.shape[-1]))
    lse = q.new_empty((q.shape[0], q.shape[-2], *grid), dtype=lse_dtype(q.dtype))
    return o, lse


@torch.library.custom_op("tessera::neighborhood_attention_backward", mutates_args=())
def neighborhood_attention_backward_op(
        do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
        lse: torch.Tensor, dlse: Optional[torch.Tensor], kernel_size: list[int], dilation: list[int],
        stride: list[int], is_causal: list[bool], layout: str, backend: str,
        scale: Optional[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` like ``q``, ``k``, ``v`` for the gradients ``do`` of o and ``dlse`` of
    lse (None: none), given the forward's ``o`` and ``lse``."""
    grads = natten.neighborhood_attention_gradients(
        do, q, k, v, o, lse, tuple(kernel_size), tuple(dilation), tuple(stride), tuple(is_causal),
        na_dim=len(kernel_size), layout=_layout_of(layout), backend=backend, scale=scale, dlse=dlse)
    return tuple(g.contiguous() for g in grads)


@neighborhood_attention_backward_op.register_fake
def _(do, q, k, v, o, lse, dlse, kernel_size, dilation, stride, is_causal, layout, backend, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


register_backward(neighborhood_attention_op, neighborhood_attention_backward_op, params=7)


def traced_call(q, k, v, kernel_size, dilation, stride, is_causal, *, na_dim: int, layout,
                backend: str, scale, return_lse: bool):
    """What ``neighborhood_attention`` returns, through the custom op (called while
    ``torch.compile`` traces it); a ``GridLayout`` runs eagerly behind a graph break."""
    text = layout_text(layout)
    if text is None:
        if not isinstance(layout, GridLayout):
            raise TypeError(f"layout must be 'auto', 'row-major', a tile shape tuple or a GridLayout, "
                            f"got {type(layout).__name__} ({layout!r})")
        return _eager_behind_break(q, k, v, kernel_size, dilation, stride, is_causal, na_dim=na_dim,
                                   layout=layout, backend=backend, scale=scale, return_lse=return_lse)
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    o, lse = neighborhood_attention_op(
        q, k, v, list(as_axes("kernel_size", kernel_size, na_dim)),
        list(as_axes("dilation", dilation, na_dim)), list(as_axes("stride", stride, na_dim)),
        list(as_flags("is_causal", is_causal, na_dim)), text, backend,
        None if scale is None else float(scale))
    return (o, lse) if return_lse else o


@torch.compiler.disable
def _eager_behind_break(q, k, v, kernel_size, dilation, stride, is_causal, **kwargs):
    return natten.neighborhood_attention(q, k, v, kernel_size, dilation, stride, is_causal, **kwargs)
