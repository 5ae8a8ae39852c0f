"""Triton kernels (simple GLA, GLA, delta rule) under the interpreter, run as a subprocess by
test_triton_interpret.py.

Sets TRITON_INTERPRET before triton is imported, so the setting never reaches other test modules.
Prints one JSON line per case: relative errors of o, final state and every gradient against float64.
"""

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tessera.linear import naive, ops  # noqa: E402
from tessera.linear.triton import delta_rule as delta_kernels  # noqa: E402
from tessera.linear.triton import gla as gla_kernels  # noqa: E402
from tessera.linear.triton import simple_gla as kernels  # noqa: E402
from tessera.linear.triton import tuning  # noqa: E402


class _NaNPoisonedTorch:
    """``torch`` for the kernel module, with ``empty``/``empty_like`` filled with NaN: unwritten outputs show."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return torch.empty(*args, **kwargs).fill_(float("nan"))

    @staticmethod
    def empty_like(*args, **kwargs):
        return torch.empty_like(*args, **kwargs).fill_(float("nan"))


kernels.torch = _NaNPoisonedTorch()
gla_kernels.torch = _NaNPoisonedTorch()
delta_kernels.torch = _NaNPoisonedTorch()

CASES = [  # dtype, B, T, H, K, V, gate ("g", "g_gamma", None: simple GLA; "gk": GLA), varlen
    ("float32", 2, 63, 2, 32, 32, "g", False),
    ("float16", 1, 150, 2, 64, 32, "g", True),
    ("float16", 2, 70, 2, 32, 64, None, False),
    ("float32", 1, 65, 4, 32, 32, "g_gamma", False),
    ("float32", 1, 130, 1, 128, 96, "g", False),
    ("float32", 2, 63, 2, 32, 32, "gk", False),
    ("float16", 1, 150, 2, 64, 32, "gk", True),
    ("float32", 1, 100, 1, 128, 96, "gk", False),
]


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def run_case(dtype, B, T, H, K, V, gate, varlen):
    dt = getattr(torch, dtype)
    q, k = torch.randn(B, T, H, K, dtype=dt), torch.randn(B, T, H, K, dtype=dt)
    v = torch.randn(B, T, H, V, dtype=dt)
    cu = torch.tensor([0, 40, 40, 41, T], dtype=torch.int32) if varlen else None  # with an empty sequence
    N = 4 if varlen else B
    h0 = torch.randn(N, H, K, V)
    # Weak decays (about exp(-0.05) a token) keep every chunk's state terms in play.
    g = {"g": (F.logsigmoid(torch.randn(B, T, H) + 3)).to(dt), "g_gamma": -0.1 * torch.rand(H), None: None,
         "gk": F.logsigmoid(torch.randn(B, T, H, K) + 2).to(dt)}[gate]
    leaves = {"q": q, "k": k, "v": v, "h0": h0}
    if g is not None:
        leaves["g"] = g
    for x in leaves.values():
        x.requires_grad_(True)
    op, ref_op = (ops.gla, naive.naive_gla) if gate == "gk" else (ops.simple_gla, naive.naive_simple_gla)
    kw = {("g" if gate == "gk" else gate): g} if gate else {}
    o, s = op(q, k, v, **kw, initial_state=h0, output_final_state=True, cu_seqlens=cu, backend="triton")
    do, ds = torch.randn_like(o), torch.randn_like(s)
    grads = torch.autograd.grad((o.float() * do).sum() + (s * ds).sum(), list(leaves.values()))
    ref = {name: x.detach().double().requires_grad_(True) for name, x in leaves.items()}
    kw_ref = {name: ref["g"] for name in kw}
    o_ref, s_ref = ref_op(ref["q"], ref["k"], ref["v"], **kw_ref, initial_state=ref["h0"], output_final_state=True,
                          cu_seqlens=cu)
    grads_ref = torch.autograd.grad((o_ref * do.double()).sum() + (s_ref * ds.double()).sum(), list(ref.values()))
    errors = {"o": rel(o, o_ref), "final_state": rel(s, s_ref)}
    errors.update({f"d{name}": rel(a, b) for name, a, b in zip(leaves, grads, grads_ref)})
    unwritten = not (torch.isfinite(o).all() and all(torch.isfinite(x).all() for x in grads))
    return {"case": [dtype, B, T, H, K, V, gate, varlen], "errors": errors, "non_finite": bool(unwritten)}


# Simple GLA with ``<S, dS'>`` summed in the state-gradient pass (``STATE_DOT_IN_DQK = False``).
STATE_DOT_IN_PASS_CASES = [
    ("float16", 1, 150, 2, 64, 32, "g", True),
    ("float32", 1, 130, 1, 128, 96, "g", False),
]


def run_state_dot_in_pass_case(*case):
    kernels.STATE_DOT_IN_DQK = False
    try:
        result = run_case(*case)
    finally:
        kernels.STATE_DOT_IN_DQK = True
    result["case"][6] += "-state-dot-in-pass"
    return result


DELTA_CASES = [  # dtype, B, T, H, K, V, gated, varlen, key correlation
    ("float32", 2, 63, 2, 32, 32, True, False, 0.),
    ("float16", 1, 150, 2, 64, 32, True, True, 0.),
    ("float32", 1, 100, 1, 32, 96, False, False, 0.),
    ("float32", 1, 70, 1, 128, 64, True, False, 0.),
    ("float32", 1, 130, 2, 64, 32, False, False, 0.9),
    ("float16", 1, 150, 2, 64, 32, True, True, 0.9),
]


# Non-default delta-rule variants on a varlen fp16 case: T and (W, U) in two kernels, and several key and
# value blocks in the backward kernels (partial dg per key block).
DELTA_VARIANT_OVERRIDES = {"delta.prepare": tuning.LaunchConfig(0, 0, 4, 2),
                           "delta.wu": tuning.LaunchConfig(32, 16, 4, 2),
                           "delta.state_grad": tuning.LaunchConfig(0, 16, 4, 2),
                           "delta.dqk": tuning.LaunchConfig(32, 16, 4, 2),
                           "delta.wy_grad": tuning.LaunchConfig(32, 16, 4, 2)}


def correlated_keys(B, T, H, K, corr):
    """L2-normalised keys ``[B, T, H, K]`` sharing a direction per head with weight ``corr`` (0: independent)."""
    shared = F.normalize(torch.randn(B, 1, H, K), dim=-1)
    return F.normalize(corr * shared + (1 - corr) * F.normalize(torch.randn(B, T, H, K), dim=-1), dim=-1)


def run_delta_case(dtype, B, T, H, K, V, gated, varlen, corr):
    """Strongly correlated keys (``corr`` near 1) make ``I + M`` hard to invert stably per chunk."""
    dt = getattr(torch, dtype)
    q, v = torch.randn(B, T, H, K, dtype=dt), torch.randn(B, T, H, V, dtype=dt)
    k = correlated_keys(B, T, H, K, corr).to(dt)
    beta = torch.rand(B, T, H).to(dt)
    g = F.logsigmoid(torch.randn(B, T, H) + 3).to(dt) if gated else None
    cu = torch.tensor([0, 40, 40, 41, T], dtype=torch.int32) if varlen else None
    h0 = 0.1 * torch.randn(4 if varlen else B, H, K, V)
    leaves = {"q": q, "k": k, "v": v, "h0": h0, "beta": beta}
    if gated:
        leaves["g"] = g
    for x in leaves.values():
        x.requires_grad_(True)
    o, s = ops.gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                                backend="triton")
    do, ds = torch.randn_like(o), torch.randn_like(s)
    grads = torch.autograd.grad((o.float() * do).sum() + (s * ds).sum(), list(leaves.values()))
    ref = {name: x.detach().double().requires_grad_(True) for name, x in leaves.items()}
    o_ref, s_ref = naive.naive_gated_delta_rule(ref["q"], ref["k"], ref["v"], ref.get("g"), ref["beta"],
                                                initial_state=ref["h0"], output_final_state=True, cu_seqlens=cu)
    grads_ref = torch.autograd.grad((o_ref * do.double()).sum() + (s_ref * ds.double()).sum(), list(ref.values()))
    errors = {"o": rel(o, o_ref), "final_state": rel(s, s_ref)}
    errors.update({f"d{name}": rel(a, b) for name, a, b in zip(leaves, grads, grads_ref)})
    unwritten = not (torch.isfinite(o).all() and all(torch.isfinite(x).all() for x in grads))
    return {"case": [dtype, B, T, H, K, V, "delta" + ("-gated" if gated else "") + (f"-corr{corr}" if corr else ""),
                     varlen], "errors": errors,
            "non_finite": bool(unwritten)}


INVERSE_CASES = [  # dtype, T, H, K, gated, key correlation
    ("float32", 130, 2, 32, True, 0.9),
    ("float32", 64, 2, 64, False, 0.99),
    ("float16", 100, 1, 32, True, 0.9),
]


def run_inverse_case(dtype, T, H, K, gated, corr):
    """The per-chunk ``T = (I + M)^-1`` of ``delta_prepare`` against ``torch.linalg.inv`` in float64, for
    correlated unit keys and ``beta`` in ``[0, 2)`` (entries of ``M`` up to about 2; a larger ``beta`` makes
    ``T`` itself grow exponentially with the chunk length): relative error of ``T`` and ``||T (I + M) - I|| / ||I||``
    over all chunks and heads."""
    dt = getattr(torch, dtype)
    k = correlated_keys(1, T, H, K, corr).to(dt).reshape(T, H, K).contiguous()
    v = torch.randn(T, H, 16, dtype=dt)
    beta = 2 * torch.rand(T, H)
    packed = kernels.packed_chunks(1, T, kernels.CHUNK, k.device, None)
    gc = kernels.chunk_local_cumsum(F.logsigmoid(torch.randn(T, H) + 3), packed) if gated else None
    Tinv, _, _ = delta_kernels.delta_prepare(k, v, beta, gc, packed)
    err2 = ref2 = res2 = eye2 = 0.
    for c0 in range(0, T, kernels.CHUNK):
        n = min(kernels.CHUNK, T - c0)
        eye = torch.eye(n, dtype=torch.float64)
        for h in range(H):
            kc = k[c0:c0 + n, h].double()
            b = torch.zeros(n, dtype=torch.float64) if gc is None else gc[c0:c0 + n, h].double()
            M = torch.tril(beta[c0:c0 + n, h].double()[:, None] * torch.exp(b[:, None] - b[None, :]) * (kc @ kc.T), -1)
            ref = torch.linalg.inv(eye + M)
            Tk = Tinv[c0:c0 + n, h].double()
            err2 += (Tk[:, :n] - ref).norm().item() ** 2 + Tk[:, n:].norm().item() ** 2
            ref2 += ref.norm().item() ** 2
            res2 += (Tk[:, :n] @ (eye + M) - eye).norm().item() ** 2
            eye2 += n
    return {"case": [dtype, 1, T, H, K, 0, f"delta-inverse-corr{corr}" + ("-gated" if gated else ""), False],
            "errors": {"inverse": (err2 / ref2) ** 0.5, "inverse_residual": (res2 / eye2) ** 0.5},
            "non_finite": not bool(torch.isfinite(Tinv).all())}


def run_normalized_linear_attention(feature_map="elu", K=32):
    """``linear_attention`` (normalized, with a carried state) through the Triton path; the Taylor map of
    ``K = 16`` has 273 features, which run in three feature groups."""
    B, T, H, V = 2, 70, 2, 16
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    Fd = {"elu": K, "taylor": 1 + K + K * K}[feature_map]
    state = (torch.rand(B, H, Fd, V), torch.rand(B, H, Fd) + 1)
    leaves = [q, k, v]
    for x in leaves:
        x.requires_grad_(True)
    o, (S, z) = ops.linear_attention(q, k, v, feature_map, True, initial_state=state, output_final_state=True,
                                     backend="triton")
    do = torch.randn_like(o)
    grads = torch.autograd.grad((o * do).sum(), leaves)
    ref = [x.detach().double().requires_grad_(True) for x in leaves]
    o_ref, (S_ref, z_ref) = naive.naive_linear_attention(*ref, feature_map, True, initial_state=tuple(
        x.double() for x in state), output_final_state=True)
    grads_ref = torch.autograd.grad((o_ref * do.double()).sum(), ref)
    errors = {"o": rel(o, o_ref), "final_state": rel(S, S_ref), "final_z": rel(z, z_ref)}
    errors.update({f"d{n}": rel(a, b) for n, a, b in zip("qkv", grads, grads_ref)})
    return {"case": ["float32", B, T, H, Fd, V, f"linear_attention-{feature_map}-normalized", False], "errors": errors,
            "non_finite": not bool(torch.isfinite(o).all())}


if __name__ == "__main__":
    torch.manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    for case in CASES:
        print(json.dumps(run_case(*case)), flush=True)
    for case in STATE_DOT_IN_PASS_CASES:
        print(json.dumps(run_state_dot_in_pass_case(*case)), flush=True)
    for case in DELTA_CASES:
        print(json.dumps(run_delta_case(*case)), flush=True)
    tuning.OVERRIDES.update(DELTA_VARIANT_OVERRIDES)
    variant = run_delta_case("float16", 1, 150, 2, 64, 48, True, True, 0.9)
    tuning.OVERRIDES.clear()
    variant["case"][6] += "-variants"
    print(json.dumps(variant), flush=True)
    for case in INVERSE_CASES:
        print(json.dumps(run_inverse_case(*case)), flush=True)
    print(json.dumps(run_normalized_linear_attention()), flush=True)
    print(json.dumps(run_normalized_linear_attention("taylor", 16)), flush=True)
