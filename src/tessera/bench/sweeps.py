"""Pieces of the GPU tuning scripts (``benchmarks/gpu_*_configs.py``, ``gpu_token_copies.py``):
a pattern's attention steps, their CUDA-graph times under kernel-config overrides, and the
scripts' shared ``main``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

from .report import write_case_rows
from .timing import graph_replay_ms, warm_up_gpu


def attention_steps(pattern, batch: int, heads: int, dim: int, device) -> tuple[Callable, Callable]:
    """``(forward, forward_backward)``: ``tessera.attention`` with ``pattern`` on fresh bf16
    ``[batch, pattern.size, heads, dim]`` q, k, v; the forward without autograd, the
    forward+backward returning the gradients of q, k and v for a random ``do``."""
    import tessera
    q, k, v = (torch.randn(batch, pattern.size, heads, dim, device=device, dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)

    def forward():
        with torch.no_grad():
            return tessera.attention(q, k, v, pattern=pattern)

    def forward_backward():
        return torch.autograd.grad(tessera.attention(q, k, v, pattern=pattern), (q, k, v), do)

    return forward, forward_backward


def override_times(steps: tuple[Callable, Callable], overrides: dict) -> dict:
    """``{"fwd": ms, "fwd+bwd": ms}`` of ``attention_steps`` replayed from CUDA graphs (no host
    time) with ``overrides`` (kernel name -> ``KernelConfig``) as ``tuning.OVERRIDES``, cleared
    afterwards."""
    from ..kernels.triton import tuning
    forward, forward_backward = steps
    tuning.OVERRIDES.clear()
    tuning.OVERRIDES.update(overrides)
    try:
        return {"fwd": round(graph_replay_ms(forward), 4), "fwd+bwd": round(graph_replay_ms(forward_backward), 4)}
    finally:
        tuning.OVERRIDES.clear()


def sweep_main(doc: str, filename: str, cases: dict, case_row, **fields) -> None:
    """A tuning script's ``main``: ``--out DIR`` (its description the first line of ``doc``), the
    GPU warmed up, then ``case_row(*arguments, device)`` per case written to ``DIR/filename``
    (``write_case_rows``, with ``fields``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device("cuda")
    warm_up_gpu(device)
    write_case_rows(Path(args.out) / filename, device, cases, case_row, **fields)
