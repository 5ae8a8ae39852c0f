"""Every candidate launch configuration of the linear-attention kernels, under the Triton interpreter,
run as a subprocess by test_triton_interpret.py.

For each kernel name in ``tuning.CANDIDATES`` and each of its candidates, forces it through
``tuning.OVERRIDES`` and runs the op that uses the kernel (float32, K = 128, V = 96: several key and
value blocks, a partial value block, a partial last chunk). Prints one JSON line per configuration:
relative errors of o, final state and every gradient against the float64 per-token reference.
"""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import interpret_cases  # noqa: E402,F401  (NaN-poisons the kernel modules' scratch tensors)
from tessera.linear import naive, ops  # noqa: E402
from tessera.linear.triton import tuning  # noqa: E402


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def inputs(op: str, T=70, H=1, K=128, V=96):
    """Leaves (float32, requiring grad) of one call of ``op`` and its keyword arguments."""
    q, v = torch.randn(1, T, H, K), torch.randn(1, T, H, V)
    leaves = {"q": q, "v": v, "h0": 0.1 * torch.randn(1, H, K, V)}
    if op == "simple_gla":
        leaves["k"] = torch.randn(1, T, H, K)
        leaves["g"] = F.logsigmoid(torch.randn(1, T, H) + 3)
    elif op == "gla":
        leaves["k"] = torch.randn(1, T, H, K)
        leaves["g"] = F.logsigmoid(torch.randn(1, T, H, K) + 2)
    else:
        leaves["k"] = F.normalize(torch.randn(1, T, H, K), dim=-1)
        leaves["beta"] = torch.rand(1, T, H)
        leaves["g"] = F.logsigmoid(torch.randn(1, T, H) + 3)
    return leaves


def call(op: str, x: dict, backend=None):
    """``(o, final_state)`` of ``op`` on the leaves ``x``: Triton kernels, or the float64 reference."""
    common = dict(initial_state=x["h0"], output_final_state=True)
    if op == "simple_gla":
        if backend:
            return ops.simple_gla(x["q"], x["k"], x["v"], x["g"], backend=backend, **common)
        return naive.naive_simple_gla(x["q"], x["k"], x["v"], g=x["g"], **common)
    if op == "gla":
        if backend:
            return ops.gla(x["q"], x["k"], x["v"], x["g"], backend=backend, **common)
        return naive.naive_gla(x["q"], x["k"], x["v"], g=x["g"], **common)
    if backend:
        return ops.gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], backend=backend, **common)
    return naive.naive_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], **common)


def run_config(kernel: str, cfg) -> dict:
    op = {"simple_gla": "simple_gla", "gla": "gla", "delta": "delta"}[kernel.split(".")[0]]
    leaves = inputs(op)
    for t in leaves.values():
        t.requires_grad_(True)
    with tuning.forced(kernel, cfg):
        o, s = call(op, leaves, backend="triton")
    do, ds = torch.randn_like(o), torch.randn_like(s)
    grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), list(leaves.values()))
    ref = {n: t.detach().double().requires_grad_(True) for n, t in leaves.items()}
    o_ref, s_ref = call(op, ref)
    grads_ref = torch.autograd.grad((o_ref * do.double()).sum() + (s_ref * ds.double()).sum(), list(ref.values()))
    errors = {"o": rel(o, o_ref), "final_state": rel(s, s_ref)}
    errors.update({f"d{n}": rel(a, b) for n, a, b in zip(leaves, grads, grads_ref)})
    finite = bool(torch.isfinite(o).all()) and all(bool(torch.isfinite(t).all()) for t in grads)
    return {"kernel": kernel, "config": vars(cfg), "errors": errors, "non_finite": not finite}


if __name__ == "__main__":
    torch.manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for kernel, candidates in tuning.CANDIDATES.items():
        for cfg in candidates[1:]:
            print(json.dumps(run_config(kernel, cfg)), flush=True)
