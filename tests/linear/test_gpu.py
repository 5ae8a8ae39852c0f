"""Triton kernels (simple GLA, GLA, delta rule) on a CUDA GPU in bf16 / fp16 at long lengths, against
float64 (the chunked torch form, itself checked against the per-token references on CPU), and every
candidate launch configuration of ``tuning.CANDIDATES`` compiled for the GPU."""

import pytest
import torch
import torch.nn.functional as F

from tessera.linear import ops
from tessera.linear.testing import errors_against_float64

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def first_candidates(monkeypatch):
    """Launch every kernel with its first candidate instead of timing them all per new (dtype, gate) key:
    tuning compiles took over 250 s of the delta-rule tests, and each candidate has its own test below
    (``test_every_launch_config_bf16``)."""
    monkeypatch.setenv("TESSERA_LINEAR_TUNE", "0")


@cuda
@pytest.mark.parametrize("T,gate,varlen,batch", [
    (4096, "g", False, 1), (16384, "g", False, 1), (16384, None, False, 1), (8191, "g_gamma", False, 1),
    (10000, "g", True, 1), (16384, "g", False, 2), (4097, None, False, 2)])
def test_simple_gla_bf16_long(T, gate, varlen, batch):
    """o, final state and every gradient against float64."""
    B, H, D = (batch, 2, 128)
    dev = "cuda"
    q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    k = k * 0.5
    cu = torch.tensor([0, 3000, 3001, 7777, T], dtype=torch.int32, device=dev) if varlen else None
    N = 4 if varlen else B
    h0 = torch.randn(N, H, D, D, device=dev)
    g = {"g": F.logsigmoid(torch.randn(B, T, H, device=dev) + 3).to(torch.bfloat16),
         "g_gamma": -torch.rand(H, device=dev) * 0.1, None: None}[gate]
    leaves = {"q": q, "k": k, "v": v, "h0": h0}
    if g is not None:
        leaves["g"] = g
    for x in leaves.values():
        x.requires_grad_(True)

    def call(x, backend):
        kw = {gate: x["g"]} if gate else {}
        return ops.simple_gla(x["q"], x["k"], x["v"], **kw, initial_state=x["h0"], output_final_state=True,
                              cu_seqlens=cu, backend=backend)
    errors = errors_against_float64(lambda x: call(x, "triton"), lambda x: call(x, "torch"), leaves)
    print(T, gate, varlen, batch, {n: f"{e:.2e}" for n, e in errors.items()})
    for name, err in errors.items():
        assert err < 2e-2, (name, err)


@cuda
@pytest.mark.parametrize("T,varlen", [(4096, False), (16384, False), (10000, True)])
def test_gla_bf16_long(T, varlen):
    B, H, D = (1, 2, 128)
    dev = "cuda"
    q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, T, H, D, device=dev) + 2).to(torch.bfloat16)
    cu = torch.tensor([0, 3000, 3001, 7777, T], dtype=torch.int32, device=dev) if varlen else None
    N = 4 if varlen else B
    h0 = torch.randn(N, H, D, D, device=dev)
    leaves = {"q": q, "k": k, "v": v, "h0": h0, "g": g}
    for x in leaves.values():
        x.requires_grad_(True)

    def call(x, backend):
        return ops.gla(x["q"], x["k"], x["v"], x["g"], initial_state=x["h0"], output_final_state=True,
                       cu_seqlens=cu, backend=backend)
    errors = errors_against_float64(lambda x: call(x, "triton"), lambda x: call(x, "torch"), leaves)
    print("gla", T, varlen, {n: f"{e:.2e}" for n, e in errors.items()})
    for name, err in errors.items():
        assert err < 2e-2, (name, err)


@cuda
@pytest.mark.parametrize("T,gated,varlen,dtype,corr", [
    (4096, False, False, torch.bfloat16, 0.),
    (16384, True, False, torch.bfloat16, 0.),
    (10000, True, True, torch.bfloat16, 0.),
    (4096, False, False, torch.float16, 0.),
    (10000, True, True, torch.float16, 0.),
    (4096, False, False, torch.bfloat16, 0.9),
    (4096, True, False, torch.float16, 0.9),
    (4097, False, False, torch.bfloat16, 0.9)])
def test_delta_rule_long(T, gated, varlen, dtype, corr):
    """Delta rule / gated delta rule Triton kernels: o, final state and every gradient (q, k, v,
    initial state, beta, g) against float64; ``corr``: weight of a key direction shared by all tokens
    of a head (correlated keys make the per-chunk triangular inverse ill-conditioned)."""
    B, H, D = (1, 2, 128)
    dev = "cuda"
    q, v = (torch.randn(B, T, H, D, device=dev, dtype=dtype) for _ in range(2))
    shared = F.normalize(torch.randn(B, 1, H, D, device=dev), dim=-1)
    k = F.normalize(corr * shared + (1 - corr) * F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1), dim=-1)
    k = k.to(dtype)
    beta = torch.rand(B, T, H, device=dev).to(dtype)
    g = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3).to(dtype) if gated else None
    cu = torch.tensor([0, 3000, 3001, 7777, T], dtype=torch.int32, device=dev) if varlen else None
    h0 = 0.1 * torch.randn(4 if varlen else B, H, D, D, device=dev)
    leaves = {"q": q, "k": k, "v": v, "h0": h0, "beta": beta}
    if gated:
        leaves["g"] = g
    for x in leaves.values():
        x.requires_grad_(True)

    def call(x, backend):
        return ops.gated_delta_rule(x["q"], x["k"], x["v"], x.get("g"), x["beta"], initial_state=x["h0"],
                                    output_final_state=True, cu_seqlens=cu, backend=backend)
    errors = errors_against_float64(lambda x: call(x, "triton"), lambda x: call(x, "torch"), leaves)
    print("delta", T, gated, varlen, dtype, corr, {n: f"{e:.2e}" for n, e in errors.items()})
    for name, err in errors.items():
        assert err < 2e-2, (name, err)


@cuda
@pytest.mark.parametrize("op", ["simple_gla", "gla", "gated_delta_rule"])
@pytest.mark.parametrize("K,V,dtype", [
    (32, 32, torch.bfloat16), (32, 65, torch.bfloat16), (64, 64, torch.bfloat16), (128, 65, torch.bfloat16),
    (64, 129, torch.float16), (32, 64, torch.float16), (64, 65, torch.float32), (128, 128, torch.float32)],
    ids=lambda x: str(x).replace("torch.", ""))
def test_small_and_odd_head_dims(op, K, V, dtype):
    """Every op at head dims other than 128 (odd V: the normalized linear attention's ``V + 1``; K = 32:
    the delta rule's zero-padded path) and in float32 (IEEE products), gated, B = 2, T = 300, carried
    state: o, final state and every gradient against float64."""
    B, T, H = 2, 300, 2
    dev = "cuda"
    leaves = {"q": torch.randn(B, T, H, K, device=dev, dtype=dtype),
              "k": F.normalize(torch.randn(B, T, H, K, device=dev), dim=-1).to(dtype),
              "v": torch.randn(B, T, H, V, device=dev, dtype=dtype),
              "h0": 0.1 * torch.randn(B, H, K, V, device=dev)}
    if op == "gla":
        leaves["g"] = F.logsigmoid(torch.randn(B, T, H, K, device=dev) + 2)
    else:
        leaves["g"] = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3)
    if op == "gated_delta_rule":
        leaves["beta"] = torch.rand(B, T, H, device=dev)

    def call(x, backend):
        args = [x["q"], x["k"], x["v"], x["g"]] + ([x["beta"]] if op == "gated_delta_rule" else [])
        return getattr(ops, op)(*args, initial_state=x["h0"], output_final_state=True, backend=backend)

    for x in leaves.values():
        x.requires_grad_(True)
    errors = errors_against_float64(lambda x: call(x, "triton"), lambda x: call(x, "torch"), leaves)
    print(op, K, V, dtype, {n: f"{e:.2e}" for n, e in errors.items()})
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, err in errors.items():
        assert err < tol, (name, err)


def _candidate_cases():
    from tessera.linear.triton import tuning
    return [(kernel, cfg) for kernel, cands in tuning.CANDIDATES.items() for cfg in cands]


@cuda
@pytest.mark.parametrize("kernel,cfg", _candidate_cases(), ids=lambda x: str(x))
def test_every_launch_config_bf16(kernel, cfg):
    """Each candidate configuration (forced through ``tuning.OVERRIDES``, with the configurations it needs
    to run at all: ``tuning.PREREQUISITES``) compiles for this GPU and matches float64 in bf16 (a timed
    choice may pick any of them)."""
    from tessera.linear.triton import tuning

    B, T, H, D = 1, 1000, 2, 128
    dev = "cuda"
    q, v = (torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
    op = kernel.split(".")[0]
    k = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16)
    leaves = {"q": q, "k": k, "v": v, "h0": torch.randn(B, H, D, D, device=dev)}
    if op == "simple_gla":
        leaves["g"] = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3)
    elif op == "gla":
        leaves["g"] = F.logsigmoid(torch.randn(B, T, H, D, device=dev) + 2)
    else:
        leaves["k"] = F.normalize(k.float(), dim=-1).to(torch.bfloat16)
        leaves["h0"] = 0.1 * leaves["h0"]
        leaves["beta"] = torch.rand(B, T, H, device=dev)
        leaves["g"] = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3)

    def call(x, backend):
        kw = dict(initial_state=x["h0"], output_final_state=True, backend=backend)
        if op == "simple_gla":
            return ops.simple_gla(x["q"], x["k"], x["v"], x["g"], **kw)
        if op == "gla":
            return ops.gla(x["q"], x["k"], x["v"], x["g"], **kw)
        return ops.gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], **kw)

    for x in leaves.values():
        x.requires_grad_(True)
    with tuning.forced(kernel, cfg):
        errors = errors_against_float64(lambda x: call(x, "triton"), lambda x: call(x, "torch"), leaves)
    for name, err in errors.items():
        assert err < 2e-2, (kernel, cfg, name, err)
