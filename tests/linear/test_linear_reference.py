"""Chunked PyTorch forms and decode steps against the per-token float64 references (CPU)."""

import pytest
import torch
import torch.nn.functional as F

from tessera.linear import naive, ops, recurrent
from tessera.linear.feature_maps import HedgehogFeatureMap, taylor_feature_map

F64 = torch.float64


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def make_inputs(op, B, T, H, K, V, dtype=F64):
    """Fresh random inputs (the conftest seeds each test from its id)."""
    q = torch.randn(B, T, H, K, dtype=dtype)
    k = torch.randn(B, T, H, K, dtype=dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    extra = {}
    if op in ("simple_gla", "gated_delta_rule"):
        extra["g"] = F.logsigmoid(torch.randn(B, T, H, dtype=dtype)) * 0.5
    if op == "gla":
        extra["g"] = F.logsigmoid(torch.randn(B, T, H, K, dtype=dtype)) * 0.5
    if op in ("delta_rule", "gated_delta_rule"):
        k = F.normalize(k, dim=-1)
        extra["beta"] = torch.rand(B, T, H, dtype=dtype)
    return q, k, v, extra


NAIVE = {
    "simple_gla": naive.naive_simple_gla, "gla": naive.naive_gla, "delta_rule": naive.naive_delta_rule,
    "gated_delta_rule": naive.naive_gated_delta_rule,
}
OPS = {"simple_gla": ops.simple_gla, "gla": ops.gla, "delta_rule": ops.delta_rule,
       "gated_delta_rule": ops.gated_delta_rule}


def call(fn, q, k, v, extra, **kw):
    if "beta" in extra and "g" in extra:
        return fn(q, k, v, extra["g"], extra["beta"], **kw)
    return fn(q, k, v, *extra.values(), **kw)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("T,K", [(63, 32), (200, 64), (64, 32)])
def test_chunked_matches_naive_forward_backward(op, T, K):
    B, H, V = 2, 2, 32 if K == 64 else 16
    q, k, v, extra = make_inputs(op, B, T, H, K, V)
    h0 = torch.randn(B, H, K, V, dtype=F64)
    leaves = [q, k, v, h0, *extra.values()]
    for x in leaves:
        x.requires_grad_(True)
    o, s = call(OPS[op], q, k, v, extra, initial_state=h0, output_final_state=True, backend="torch")
    o_ref, s_ref = call(NAIVE[op], q, k, v, extra, initial_state=h0, output_final_state=True)
    assert rel(o, o_ref) < 1e-10 and rel(s, s_ref) < 1e-10
    do, ds = torch.randn_like(o), torch.randn_like(s)
    grads = torch.autograd.grad((o * do).sum() + (s * ds).sum(), leaves)
    grads_ref = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), leaves)
    for name, a, b in zip(["q", "k", "v", "h0", *extra], grads, grads_ref):
        assert rel(a, b) < 1e-9, name


@pytest.mark.parametrize("op", list(OPS))
def test_varlen_equals_per_sequence(op):
    H, K, V = 2, 32, 16
    cu = torch.tensor([0, 17, 17, 18, 90, 150], dtype=torch.int32)  # includes an empty sequence
    q, k, v, extra = make_inputs(op, 1, 150, H, K, V)
    h0 = torch.randn(5, H, K, V, dtype=F64)
    o, s = call(OPS[op], q, k, v, extra, initial_state=h0, output_final_state=True, cu_seqlens=cu, backend="torch")
    for n in range(5):
        a, b = int(cu[n]), int(cu[n + 1])
        part = {name: x[:, a:b] for name, x in extra.items()}
        o_n, s_n = call(NAIVE[op], q[:, a:b], k[:, a:b], v[:, a:b], part, initial_state=h0[n:n + 1],
                        output_final_state=True)
        assert rel(o[:, a:b], o_n) < 1e-10
        assert rel(s[n:n + 1], s_n) < 1e-10


STEPS = {"simple_gla": recurrent.simple_gla_step, "gla": recurrent.gla_step,
         "delta_rule": recurrent.delta_rule_step, "gated_delta_rule": recurrent.gated_delta_rule_step}


@pytest.mark.parametrize("op", list(OPS))
def test_prefix_then_steps_equals_full(op):
    B, T, H, K, V, prefix = 2, 80, 2, 32, 16, 70
    q, k, v, extra = make_inputs(op, B, T, H, K, V)
    o_full, s_full = call(OPS[op], q, k, v, extra, output_final_state=True, backend="torch")
    part = {name: x[:, :prefix] for name, x in extra.items()}
    o_pre, state = call(OPS[op], q[:, :prefix], k[:, :prefix], v[:, :prefix], part, output_final_state=True,
                        backend="torch")
    assert rel(o_pre, o_full[:, :prefix]) < 1e-10
    for t in range(prefix, T):
        tok = {name: x[:, t] for name, x in extra.items()}
        if op == "gated_delta_rule":
            o_t, state = STEPS[op](q[:, t], k[:, t], v[:, t], tok["g"], tok["beta"], state=state)
        else:
            o_t, state = STEPS[op](q[:, t], k[:, t], v[:, t], *tok.values(), state=state)
        assert rel(o_t, o_full[:, t]) < 1e-10
    assert rel(state, s_full) < 1e-10


def test_lightning_matches_naive_and_steps():
    B, T, H, K, V = 1, 70, 4, 32, 16
    q, k, v, _ = make_inputs("simple_gla", B, T, H, K, V)
    o, s = ops.lightning_attn(q, k, v, layer_idx=1, num_layers=4, output_final_state=True, backend="torch")
    o_ref, s_ref = naive.naive_lightning_attn(q, k, v, 1, 4, output_final_state=True)
    assert rel(o, o_ref) < 1e-10 and rel(s, s_ref) < 1e-10
    _, state = ops.lightning_attn(q[:, :69], k[:, :69], v[:, :69], 1, 4, output_final_state=True, backend="torch")
    o_t, state = recurrent.lightning_attn_step(q[:, 69], k[:, 69], v[:, 69], 1, 4, state=state)
    assert rel(o_t, o[:, 69]) < 1e-10 and rel(state, s) < 1e-10


@pytest.mark.parametrize("feature_map", ["identity", "elu", "relu", "taylor", "hedgehog"])
@pytest.mark.parametrize("normalize", [False, True])
def test_linear_attention_feature_maps(feature_map, normalize):
    B, T, H, K, V = 2, 63, 2, 8 if feature_map == "taylor" else 16, 16
    q, k, v, _ = make_inputs("simple_gla", B, T, H, K, V)
    fmap = HedgehogFeatureMap(K).double() if feature_map == "hedgehog" else feature_map
    if feature_map == "hedgehog":
        with torch.no_grad():
            fmap.layer.weight.add_(0.1 * torch.randn(K, K, dtype=F64))
    o, s = ops.linear_attention(q, k, v, fmap, normalize, output_final_state=True, backend="torch")
    o_ref, s_ref = naive.naive_linear_attention(q, k, v, fmap, normalize, output_final_state=True)
    assert rel(o, o_ref) < 1e-9
    # The recurrence by hand, written independently of naive.py.
    phi = {"identity": lambda x: x, "elu": lambda x: F.elu(x) + 1, "relu": F.relu,
           "taylor": taylor_feature_map, "hedgehog": fmap}[feature_map]
    fq, fk = phi(q), phi(k)
    scale = fq.shape[-1] ** -0.5
    S = torch.zeros(B, H, fq.shape[-1], V, dtype=F64)
    z = torch.zeros(B, H, fq.shape[-1], dtype=F64)
    for t in range(T):
        S = S + fk[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + fk[:, t]
        num = scale * torch.einsum("bhf,bhfv->bhv", fq[:, t], S)
        want = num / (scale * (fq[:, t] * z).sum(-1, keepdim=True) + 1e-10) if normalize else num
        assert rel(o[:, t], want) < 1e-9
    if normalize:
        assert rel(s[0], S) < 1e-10 and rel(s[1], z) < 1e-10
        o_last, _ = recurrent.linear_attention_step(q[:, -1], k[:, -1], v[:, -1], fmap, True, state=(
            naive.naive_linear_attention(q[:, :-1], k[:, :-1], v[:, :-1], fmap, True, output_final_state=True)[1]))
        assert rel(o_last, o[:, -1]) < 1e-9


def test_taylor_feature_map_is_second_order_exp():
    x, y = torch.randn(5, 8, dtype=F64), torch.randn(5, 8, dtype=F64)
    s = (x * y).sum(-1) / 8 ** 0.5
    assert rel((taylor_feature_map(x) * taylor_feature_map(y)).sum(-1), 1 + s + s * s / 2) < 1e-12


def test_bad_arguments_raise():
    q, k, v, extra = make_inputs("simple_gla", 2, 10, 2, 16, 16)
    with pytest.raises(ValueError, match="g must have shape"):
        ops.simple_gla(q, k, v, extra["g"][:, :5])
    with pytest.raises(ValueError, match="initial_state"):
        ops.simple_gla(q, k, v, initial_state=torch.zeros(3, 2, 16, 16, dtype=F64))
    with pytest.raises(ValueError, match="batch size 1"):
        ops.simple_gla(q, k, v, cu_seqlens=torch.tensor([0, 10], dtype=torch.int32))
    with pytest.raises(ValueError, match="scale"):
        ops.gla(q, k, v, torch.zeros(2, 10, 2, 16, dtype=F64), scale=-1.0)
    with pytest.raises(ValueError, match="backend"):
        ops.gla(q, k, v, torch.zeros(2, 10, 2, 16, dtype=F64), backend="triton")
    with pytest.raises(TypeError, match="feature_map"):
        ops.linear_attention(q, k, v, feature_map=3)
    with pytest.raises(ValueError, match="layer_idx"):
        ops.lightning_attn(q, k, v, layer_idx=5, num_layers=4)
