"""Every linear-attention kernel variant (each candidate launch configuration, bf16; fp32 and fp16 defaults)
compiles for Hopper (sm_90) on a machine without a GPU.

The ops run on small CPU tensors with kernel launches intercepted (nothing executes); each captured
launch is compiled ahead of time with its constexprs, argument types and launch options. Slow (about
a minute): run with TESSERA_SLOW=1.
"""

import os

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip("triton")

from tessera.bench.hopper_compile import SHARED_LIMIT, LaunchRecorder, compile_distinct  # noqa: E402
from tessera.linear import ops  # noqa: E402
from tessera.linear.triton import tuning  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles, does not interpret")]


def _run(op: str, dtype: torch.dtype):
    """Forward and backward of ``op`` on CPU tensors (K = V = 128, 200 tokens, gated, initial state)."""
    B, T, H, D = 1, 200, 2, 128
    q, k, v = (torch.randn(B, T, H, D).to(dtype).requires_grad_() for _ in range(3))
    h0 = torch.randn(B, H, D, D).requires_grad_()
    kw = dict(initial_state=h0, output_final_state=True, backend="triton")
    if op == "simple_gla":
        o, s = ops.simple_gla(q, k, v, F.logsigmoid(torch.randn(B, T, H)).requires_grad_(), **kw)
    elif op == "gla":
        o, s = ops.gla(q, k, v, F.logsigmoid(torch.randn(B, T, H, D)).requires_grad_(), **kw)
    else:
        o, s = ops.gated_delta_rule(q, k, v, F.logsigmoid(torch.randn(B, T, H)).requires_grad_(),
                                    torch.rand(B, T, H).requires_grad_(), **kw)
    (o.float().sum() + s.sum()).backward()


def _captured_launches() -> list:
    try:
        with LaunchRecorder() as recorder:
            for kernel, candidates in tuning.CANDIDATES.items():
                op = kernel.split(".")[0]
                for cfg in candidates:
                    with tuning.forced(kernel, cfg):
                        _run(op, torch.bfloat16)
            for op in ("simple_gla", "gla", "delta"):
                _run(op, torch.float32)
                _run(op, torch.float16)
    finally:
        tuning.OVERRIDES.clear()
    return recorder.launches


def test_every_kernel_variant_compiles_for_hopper():
    failures, seen = [], set()
    for fn, options, compiled, error in compile_distinct(_captured_launches(), seen):
        if error is not None:
            failures.append((fn.__name__, options, f"{type(error).__name__}: {str(error)[:300]}"))
        elif compiled.metadata.shared > SHARED_LIMIT:
            failures.append((fn.__name__, options, f"shared memory {compiled.metadata.shared} B"))
    assert seen
    assert not failures, failures
