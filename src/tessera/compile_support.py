"""What the custom ops that ``torch.compile`` traces to (``natten_ops``, ``attention_ops``) share."""

from __future__ import annotations

import torch

# The dispatcher's thread-local key sets outside any op. A custom op's body runs with autograd's
# keys excluded; a backward that recomputes its forward under autograd (calls that ran on no
# backward kernels of their own) restores these to record that forward's graph.
_TOP_LEVEL_KEYS = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())


def autograd_dispatch():
    """A context in which autograd records again, inside a custom op's body."""
    return torch._C._ForceDispatchKeyGuard(*_TOP_LEVEL_KEYS)


def recomputed_gradients(forward, inputs: tuple, do: torch.Tensor, dlse=None) -> tuple:
    """The gradients of ``inputs`` for the gradients ``do`` of o and ``dlse`` of lse (None: no
    gradient) of ``forward(*inputs) -> (o, lse)``, run again under autograd; inside a custom op's
    body too (``autograd_dispatch``)."""
    with autograd_dispatch(), torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in inputs]
        o, lse = forward(*leaves)
        if dlse is None:
            return torch.autograd.grad(o, leaves, do)
        return torch.autograd.grad((o, lse), leaves, (do, dlse))


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the lse a call on ``dtype`` inputs returns: float64 for float64 (which only
    the reference backend takes), else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def register_backward(forward_op, backward_op, params: int) -> None:
    """Autograd for ``forward_op(q, k, v, *params) -> (o, lse)``: the gradients of q, k and v
    from ``backward_op(do, q, k, v, o, lse, dlse, *params) -> (dq, dk, dv)`` for the gradients
    ``do`` of o and ``dlse`` of lse (None where lse reaches no loss); none for the ``params``
    non-tensor arguments. An empty lse (sigmoid scores have none) is non-differentiable."""
    def setup_context(ctx, inputs, output):
        q, k, v, *rest = inputs
        o, lse = output
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.params = rest
        if lse.numel() == 0:
            ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)

    def backward(ctx, do, dlse):
        if do is None and dlse is None:
            return (None,) * (3 + params)
        q, k, v, o, lse = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(o)
        return (*backward_op(do, q, k, v, o, lse, dlse, *ctx.params), *(None,) * params)

    forward_op.register_autograd(backward, setup_context=setup_context)
