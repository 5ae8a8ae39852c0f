"""Checking a linear-attention call against float64: forward output, final state and every gradient."""

from __future__ import annotations

from typing import Callable

import torch

Call = Callable[[dict], tuple]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` in float64 (on ``b``'s device)."""
    a, b = a.double().to(b.device), b.double()
    return ((a - b).norm() / b.norm()).item()


def errors_against_float64(run: Call, reference: Call, leaves: dict) -> dict:
    """Relative errors of ``run(leaves)`` against ``reference(float64 copies of leaves)``.

    ``run`` and ``reference`` return ``(o, final_state)``; ``leaves`` maps names to tensors that require
    grad. Both sides are differentiated against the same random cotangents of ``o`` and the final state.
    Returns ``{"o": ..., "final_state": ..., "d<name>": ... for every leaf}``.
    """
    o, s = run(leaves)
    do, ds = torch.randn_like(o), torch.randn_like(s)
    grads = torch.autograd.grad((o.float() * do).sum() + (s * ds).sum(), list(leaves.values()))
    ref = {n: x.detach().double().requires_grad_(True) for n, x in leaves.items()}
    o_ref, s_ref = reference(ref)
    grads_ref = torch.autograd.grad((o_ref * do.double()).sum() + (s_ref * ds.double()).sum(), list(ref.values()))
    errors = {"o": rel(o, o_ref), "final_state": rel(s, s_ref)}
    errors.update({f"d{n}": rel(a, b) for n, a, b in zip(leaves, grads, grads_ref)})
    return errors
