"""Non-causal (global) linear attention: the state form in ``ops`` against the attention form in
``naive`` and a dense formula written here, forward and backward (CPU)."""

import pytest
import torch

from tessera.linear import naive, ops
from tessera.linear.feature_maps import HedgehogFeatureMap, taylor_feature_map

F64 = torch.float64


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def feature_map(name, K):
    if name != "hedgehog":
        return name
    fmap = HedgehogFeatureMap(K).double()
    with torch.no_grad():
        fmap.layer.weight.add_(0.1 * torch.randn(K, K, dtype=F64))
    return fmap


def initial(normalize, N, H, Fd, V):
    S0 = torch.randn(N, H, Fd, V, dtype=F64)
    return (S0, torch.rand(N, H, Fd, dtype=F64) + 1.0) if normalize else S0


@pytest.mark.parametrize("fmap_name", ["identity", "elu", "taylor", "hedgehog"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("T", [63, 130])
def test_global_matches_attention_form_forward_backward(fmap_name, normalize, T):
    B, H, K, V = 2, 2, 8, 16
    q, k, v = (torch.randn(B, T, H, D, dtype=F64) for D in (K, K, V))
    fmap = feature_map(fmap_name, K)
    Fd = {"taylor": 1 + K + K * K, "hedgehog": 2 * K}.get(fmap_name, K)
    if normalize and fmap_name == "identity":
        pytest.skip("identity features give denominators near zero")
    h0 = initial(normalize, B, H, Fd, V)
    leaves = [q, k, v, *(h0 if normalize else [h0])]
    for x in leaves:
        x.requires_grad_(True)
    o, s = ops.linear_attention(q, k, v, fmap, normalize, initial_state=h0, output_final_state=True, causal=False)
    o_ref, s_ref = naive.naive_linear_attention(q, k, v, fmap, normalize, initial_state=h0, output_final_state=True,
                                                causal=False)
    s, s_ref = (list(s), list(s_ref)) if normalize else ([s], [s_ref])
    assert rel(o, o_ref) < 1e-10
    assert all(rel(a, b) < 1e-10 for a, b in zip(s, s_ref))
    do = torch.randn_like(o)
    ds = [torch.randn_like(x) for x in s]
    loss = (o * do).sum() + sum((x * d).sum() for x, d in zip(s, ds))
    loss_ref = (o_ref * do).sum() + sum((x * d).sum() for x, d in zip(s_ref, ds))
    for name, a, b in zip(["q", "k", "v", "S0", "z0"], torch.autograd.grad(loss, leaves),
                          torch.autograd.grad(loss_ref, leaves)):
        assert rel(a, b) < 1e-9, name


@pytest.mark.parametrize("normalize", [False, True])
def test_global_matches_dense_formula(normalize):
    """``o = scale A v`` (normalized: divided by ``scale A 1``) with ``A = phi(q) phi(k)^T`` over the whole
    sequence, written out densely for a short one."""
    B, T, H, K, V = 2, 40, 3, 4, 8
    q, k, v = (torch.randn(B, T, H, D, dtype=F64) for D in (K, K, V))
    o, _ = ops.linear_attention(q, k, v, "taylor", normalize, causal=False)
    fq, fk = taylor_feature_map(q), taylor_feature_map(k)
    scale = fq.shape[-1] ** -0.5
    A = torch.einsum("bqhf,bkhf->bhqk", fq, fk)
    want = scale * torch.einsum("bhqk,bkhv->bqhv", A, v)
    if normalize:
        want = want / (scale * A.sum(-1).transpose(1, 2).unsqueeze(-1) + 1e-10)
    assert rel(o, want) < 1e-12


@pytest.mark.parametrize("normalize", [False, True])
def test_global_final_state_equals_causal(normalize):
    B, T, H, K, V = 2, 70, 2, 8, 8
    q, k, v = (torch.randn(B, T, H, D, dtype=F64) for D in (K, K, V))
    _, s_global = ops.linear_attention(q, k, v, "elu", normalize, output_final_state=True, causal=False)
    o_causal, s_causal = ops.linear_attention(q, k, v, "elu", normalize, output_final_state=True, backend="torch")
    for a, b in zip(*((s_global, s_causal) if normalize else ((s_global,), (s_causal,)))):
        assert rel(a, b) < 1e-12
    o_global, _ = ops.linear_attention(q, k, v, "elu", normalize, causal=False)
    assert rel(o_global[:, -1], o_causal[:, -1]) < 1e-12  # the last query sees the same keys in both
    assert rel(o_global[:, 0], o_causal[:, 0]) > 1e-3


@pytest.mark.parametrize("normalize", [False, True])
def test_global_varlen_equals_per_sequence(normalize):
    H, K, V = 2, 8, 16
    cu = torch.tensor([0, 17, 17, 18, 90, 150], dtype=torch.int32)  # includes an empty sequence
    q, k, v = (torch.randn(1, 150, H, D, dtype=F64) for D in (K, K, V))
    h0 = initial(normalize, 5, H, K, V)
    o, s = ops.linear_attention(q, k, v, "elu", normalize, initial_state=h0, output_final_state=True,
                                cu_seqlens=cu, causal=False)
    for n in range(5):
        a, b = int(cu[n]), int(cu[n + 1])
        h0_n = (h0[0][n:n + 1], h0[1][n:n + 1]) if normalize else h0[n:n + 1]
        o_n, s_n = naive.naive_linear_attention(q[:, a:b], k[:, a:b], v[:, a:b], "elu", normalize,
                                                initial_state=h0_n, output_final_state=True, causal=False)
        assert rel(o[:, a:b], o_n) < 1e-10 if b > a else o_n.numel() == 0
        for x, y in zip(*((s, s_n) if normalize else ((s,), (s_n,)))):
            assert rel(x[n:n + 1], y) < 1e-10


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3)])
def test_global_low_precision_against_float64(dtype, tol):
    B, T, H, K, V = 2, 100, 2, 16, 16
    q, k, v = (torch.randn(B, T, H, D, dtype=F64) for D in (K, K, V))
    o, s = ops.linear_attention(q.to(dtype), k.to(dtype), v.to(dtype), "elu", True, output_final_state=True,
                                causal=False)
    o_ref, s_ref = naive.naive_linear_attention(q.to(dtype).double(), k.to(dtype).double(), v.to(dtype).double(),
                                                "elu", True, output_final_state=True, causal=False)
    assert o.dtype == dtype and s[0].dtype == torch.float32
    assert rel(o, o_ref) < tol and rel(s[0], s_ref[0]) < tol


def test_global_bad_arguments_raise():
    q, k, v = (torch.randn(1, 10, 2, 8, dtype=F64) for _ in range(3))
    with pytest.raises(TypeError, match="causal"):
        ops.linear_attention(q, k, v, causal="no")
    with pytest.raises(ValueError, match="initial_state"):
        ops.linear_attention(q, k, v, causal=False, initial_state=torch.zeros(3, 2, 8, 8, dtype=F64))
    with pytest.raises(TypeError, match="initial_state must be a pair"):
        ops.linear_attention(q, k, v, normalize=True, causal=False, initial_state=torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="v must have shape"):
        ops.linear_attention(q, k, v[:, :5], causal=False)
    with pytest.raises(ValueError, match="no Triton kernel"):
        ops.linear_attention(q, k, v, causal=False, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_global_gpu_against_float64(dtype, tol):
    """On CUDA, forward and gradients against the float64 attention form on the CPU."""
    B, T, H, K, V = 2, 1000, 4, 64, 64
    q, k, v = (torch.randn(B, T, H, D, dtype=F64) for D in (K, K, V))
    inputs = [x.to("cuda", dtype).requires_grad_(True) for x in (q, k, v)]
    leaves = [x.detach().double().cpu().requires_grad_(True) for x in inputs]
    o, s = ops.linear_attention(*inputs, "elu", True, output_final_state=True, causal=False)
    o_ref, s_ref = naive.naive_linear_attention(*leaves, "elu", True, output_final_state=True, causal=False)
    assert o.dtype == dtype and rel(o.cpu(), o_ref) < tol and rel(s[0].cpu(), s_ref[0]) < tol
    do = torch.randn_like(o_ref)
    grads = torch.autograd.grad((o.float() * do.to("cuda")).sum(), inputs)
    grads_ref = torch.autograd.grad((o_ref * do).sum(), leaves)
    for name, a, b in zip("qkv", grads, grads_ref):
        assert rel(a.cpu(), b) < 2 * tol, name
