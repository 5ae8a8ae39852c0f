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

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from tessera.linear import ops  # noqa: E402
from tessera.linear.triton import tuning  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles, does not interpret")]

HOPPER = GPUTarget("cuda", 90, 32)
HOPPER_SHARED_BYTES = 232448
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32"}


def _source(fn: JITFunction, args: tuple, kwargs: dict):
    """``(ASTSource, launch options, dedup key)`` of one intercepted launch."""
    names = fn.arg_names
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    options = {k: v for k, v in kwargs.items() if k not in names}
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(names, fn.params)):
        value = bound.get(name, param.default)
        if param.is_constexpr or value is None:
            signature[name] = "constexpr"
            constexprs[(i,)] = value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32"
        else:
            signature[name] = "fp32"
    key = (fn.__name__, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
           repr(sorted(options.items())))
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), options, key


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
    launches = []
    original = JITFunction.__getitem__
    JITFunction.__getitem__ = lambda fn, grid: (lambda *a, **kw: launches.append((fn, a, kw)))
    try:
        for kernel, candidates in tuning.CANDIDATES.items():
            op = kernel.split(".")[0]
            for cfg in candidates:
                tuning.OVERRIDES.clear()
                tuning.OVERRIDES.update(tuning.PREREQUISITES.get(kernel, {}))
                tuning.OVERRIDES[kernel] = cfg
                _run(op, torch.bfloat16)
        tuning.OVERRIDES.clear()
        for op in ("simple_gla", "gla", "delta"):
            _run(op, torch.float32)
            _run(op, torch.float16)
    finally:
        JITFunction.__getitem__ = original
        tuning.OVERRIDES.clear()
    return launches


def test_every_kernel_variant_compiles_for_hopper():
    failures, seen = [], set()
    for fn, args, kwargs in _captured_launches():
        src, options, key = _source(fn, args, kwargs)
        if key in seen:
            continue
        seen.add(key)
        try:
            compiled = triton.compile(src, target=HOPPER, options=options)
        except Exception as exc:  # collect every failing variant
            failures.append((fn.__name__, options, f"{type(exc).__name__}: {str(exc)[:300]}"))
            continue
        if compiled.metadata.shared > HOPPER_SHARED_BYTES:
            failures.append((fn.__name__, options, f"shared memory {compiled.metadata.shared} B"))
    assert seen
    assert not failures, failures
