"""The run of a prepared softmax call (``backend.prepare``), with its kernel routes settled once.

Each call of a prepared run has the shapes, strides, dtypes and device of the first (its caller
keys the cache on them), so the routes the backend picks for it (the Gluon forward, dq and dk/dv
kernels, their tiles and variants) are the same on every call, except where they read what the
key leaves out: the tensors' base alignment, and the routes' module settings. ``PreparedRun``
settles the forward's and the backward's launches on the first call whose tensors are 16-byte
aligned and keeps them while ``route_settings.generation()`` is unchanged and
``tuning.OVERRIDES`` is empty; any other call takes the backend's full path (``forward``,
``gradients``), which decides everything again. The autograd node, ``PreparedAttention``, takes
q, k, v alone, without the backend node's bias, sinks and factor slots.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

import torch

from . import route_settings, tuning


def _aligned(*tensors: torch.Tensor) -> bool:
    address = 0
    for t in tensors:
        address |= t.data_ptr()
    return address & 15 == 0


def _watch_kernel_modules() -> None:
    """Watch every loaded module of the kernel packages (the routes read their settings); not
    the packages, which gain an attribute per submodule imported."""
    for name, module in list(sys.modules.items()):
        if (name.startswith(("tessera.kernels.triton.", "tessera.kernels.gluon.")) and module is not None
                and not hasattr(module, "__path__")):
            route_settings.watch(module)


class PreparedRun:
    """``(q, k, v) -> (o [B, S_q, H_q, D_v], lse float32 [B, H_q, S_q])`` of one prepared softmax
    call, through ``PreparedAttention`` where q, k or v needs a gradient; ``backward(q, k, v, o,
    lse, do, dlse=None) -> (dq, dk, dv)`` runs the backward kernels on a forward's o and lse.

    ``settle_forward(q, k, v)``: the launch ``(q, k, v) -> (o, lse)`` the backend would run for
    tensors like these, or None (then ``forward`` runs); ``settle_backward(q, k, v, do)``: the
    launch ``(do, q, k, v, o, lse, dlse) -> (dq, dk, dv)``, or None (then ``gradients``, with the
    same arguments as ``backward``, runs). ``head_contiguous``: whether q, k, v of this call have
    a contiguous last dim (else they are copied first); ``contiguous_do``: the backward reads do
    whole-contiguous (extent-only calls), else with a contiguous last dim."""

    __slots__ = ("_settle_forward", "_settle_backward", "_forward", "_gradients", "_head_contiguous",
                 "_contiguous_do", "_forward_launch", "_backward_launch")

    def __init__(self, settle_forward: Callable, settle_backward: Callable, forward: Callable,
                 gradients: Callable, head_contiguous: bool, contiguous_do: bool):
        self._settle_forward = settle_forward
        self._settle_backward = settle_backward
        self._forward = forward
        self._gradients = gradients
        self._head_contiguous = head_contiguous
        self._contiguous_do = contiguous_do
        self._forward_launch: Optional[tuple] = None    # (generation, launch or None)
        self._backward_launch: Optional[tuple] = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        if not self._head_contiguous:
            q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return PreparedAttention.apply(q, k, v, self)
        return self.forward(q, k, v)

    def grid_call(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens: int):
        """``(o [B, *grid, H_q, D_v], lse [B, H_q, S])`` of this call on grid-shaped ``q [B,
        *grid, H_q, D]``, ``k``, ``v``, whose flattened ``[B, tokens, H, D]`` views are the
        call's q, k, v: one autograd node for the flattening and the kernels (no view nodes)."""
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return PreparedAttention.apply(q, k, v, self, tokens)
        o, lse = self.forward(*(self.flat(t, tokens) for t in (q, k, v)))
        return o.reshape(*q.shape[:-1], o.shape[-1]), lse

    @staticmethod
    def flat(t: torch.Tensor, tokens: int) -> torch.Tensor:
        """``t [B, *grid, H, D]`` as this call's ``[B, tokens, H, D]`` (last dim contiguous)."""
        t = t.reshape(t.shape[0], tokens, t.shape[-2], t.shape[-1])
        return t if t.stride(-1) == 1 else t.contiguous()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """``(o, lse)`` of the forward kernels (no autograd node)."""
        if _aligned(q, k, v) and not tuning.OVERRIDES:
            settled = self._forward_launch
            generation = route_settings.generation()
            if settled is None or settled[0] != generation:
                settled = self._forward_launch = (generation, self._settle_forward(q, k, v))
                _watch_kernel_modules()
            if settled[1] is not None:
                return settled[1](q, k, v)
        return self._forward(q, k, v)

    def backward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                 lse: torch.Tensor, do: torch.Tensor, dlse: Optional[torch.Tensor] = None):
        """``(dq, dk, dv)`` for the output gradient ``do`` and the lse gradient ``dlse`` (None:
        zero) of a forward of this call that returned ``o`` and ``lse``."""
        if not self._head_contiguous:
            q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        if self._contiguous_do or do.stride(-1) != 1:
            do = do.contiguous()
        if (do.stride() == q.stride() and do.dtype == q.dtype and _aligned(q, k, v, do)
                and not tuning.OVERRIDES):
            settled = self._backward_launch
            generation = route_settings.generation()
            if settled is None or settled[0] != generation:
                settled = self._backward_launch = (generation, self._settle_backward(q, k, v, do))
                _watch_kernel_modules()
            if settled[1] is not None:
                return settled[1](do, q, k, v, o, lse, dlse)
        return self._gradients(q, k, v, o, lse, do, dlse)


class PreparedAttention(torch.autograd.Function):
    """Autograd node of a ``PreparedRun``: inputs q, k, v (and the run, and ``tokens``: None for
    the call's own ``[B, S, H, D]`` tensors, else the S that grid-shaped ones flatten to,
    ``PreparedRun.grid_call``), outputs o (shaped as q but for its last dim) and lse, both
    differentiable."""

    @staticmethod
    def forward(ctx, q, k, v, run: PreparedRun, tokens=None):
        shapes = (q.shape, k.shape, v.shape)
        if tokens is not None:
            q, k, v = (run.flat(t, tokens) for t in (q, k, v))
        o, lse = run.forward(q, k, v)
        # The flat views are saved (the backward's kernels read them), not the inputs.
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.run, ctx.tokens, ctx.shapes = run, tokens, shapes
        # Unused outputs get no gradient (None) instead of a zero tensor filled per call.
        ctx.set_materialize_grads(False)
        if tokens is not None:
            o = o.reshape(*shapes[0][:-1], o.shape[-1])
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        if do is None and dlse is None:
            return None, None, None, None, None
        q, k, v, o, lse = ctx.saved_tensors
        run, tokens = ctx.run, ctx.tokens
        if do is None:
            do = torch.zeros_like(o)
        elif tokens is not None:
            do = run.flat(do, tokens)
        dq, dk, dv = run.backward(q, k, v, o, lse, do, dlse)
        if tokens is not None:
            q_shape, k_shape, v_shape = ctx.shapes
            dq, dk, dv = dq.reshape(q_shape), dk.reshape(k_shape), dv.reshape(v_shape)
        return dq, dk, dv, None, None
