"""``tessera.attention``: layouts reach backends as views, dispatch and ``explain``, the SDPA
backend, defaults and re-exports."""

from __future__ import annotations

import math

import pytest
import torch

import tessera
from tessera.api import explain
from tessera.kernels import registry
from tessera.kernels.reference import reference_attention
from tessera.patterns import Causal, Window

from conftest import rel_err
from naive import naive_attention


@pytest.fixture
def spy():
    """Register a backend named "spy" that records the AttentionCall and runs the reference."""
    seen = []

    def run(call):
        seen.append(call)
        return reference_attention(call)

    registry.register_backend("spy", run, lambda call: None)
    yield seen
    registry._BACKENDS.pop("spy", None)


def test_public_surface():
    assert tessera.attention is tessera.api.attention
    assert tessera.explain is explain
    assert hasattr(tessera.bias, "ALiBi") and hasattr(tessera.patterns, "Causal")
    assert {"reference", "sdpa"} <= set(registry.available_backends())


def test_bhsd_reaches_backend_as_views(spy):
    q = torch.randn(2, 3, 11, 16)           # [B, H, S, D]
    k = torch.randn(2, 1, 13, 16)
    v = torch.randn(2, 1, 13, 8)
    o = tessera.attention(q, k, v, layout="bhsd", backend="spy")
    (call,) = spy
    for given, seen in ((q, call.q), (k, call.k), (v, call.v)):
        assert seen.data_ptr() == given.data_ptr()
        assert seen.shape == given.transpose(1, 2).shape
        assert seen.stride() == given.transpose(1, 2).stride()
    assert o.shape == (2, 3, 11, 8)
    o_ref, _ = naive_attention(q, k, v, layout="bhsd")
    assert rel_err(o.transpose(1, 2), o_ref) < 1e-5


def test_bshd_strided_inputs_are_not_copied(spy):
    base = torch.randn(2, 9, 4, 32)
    q = base[..., :16]                       # non-contiguous view
    k, v = base[:, :, :2, 16:], base[:, :, 2:, :8]
    tessera.attention(q, k, v, backend="spy")
    (call,) = spy
    assert call.q.data_ptr() == q.data_ptr() and call.q.stride() == q.stride()
    assert call.k.data_ptr() == k.data_ptr() and call.v.stride() == v.stride()


def test_bhsd_output_is_a_view_in_callers_layout(spy):
    q, k, v = (torch.randn(1, 2, 7, 8) for _ in range(3))
    o_bhsd = tessera.attention(q, k, v, layout="bhsd", backend="spy")
    o_bshd = tessera.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), backend="spy")
    assert torch.equal(o_bhsd, o_bshd.transpose(1, 2))


def test_call_fields_from_arguments(spy):
    q, k, v = torch.randn(1, 5, 4, 16), torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16)
    tessera.attention(q, k, v, causal=True, backend="spy")
    tessera.attention(q, k, v, pattern=Window(2, 1), causal=True, backend="spy")
    tessera.attention(q, k, v, pattern=tessera.patterns.Dense(), backend="spy")
    tessera.attention(q, k, v, score="sigmoid", backend="spy")
    causal, window, dense, sigmoid = spy
    assert causal.causal and type(causal.pattern) is Causal
    assert causal.scale == pytest.approx(1 / math.sqrt(16))
    assert window.causal and window.pattern is not None
    q_pos = torch.arange(5).view(-1, 1) + 3
    k_pos = torch.arange(8).view(1, -1)
    expected = (k_pos <= q_pos) & (q_pos - k_pos <= 2)
    assert torch.equal(window.pattern.mask(q_pos, k_pos, torch.zeros(1, 1, dtype=torch.long)), expected)
    assert dense.pattern is None and not dense.causal
    assert sigmoid.score == "sigmoid" and sigmoid.sigmoid_bias is None


def test_tensor_bias_becomes_bias_object(spy):
    q, k, v = (torch.randn(1, 4, 2, 8) for _ in range(3))
    tessera.attention(q, k, v, bias=torch.randn(4, 4), backend="spy")
    assert isinstance(spy[0].bias, tessera.bias.TensorBias)


def test_return_lse_shapes_and_dtypes():
    q, k, v = torch.randn(2, 5, 4, 16), torch.randn(2, 9, 2, 16), torch.randn(2, 9, 2, 24)
    o, lse = tessera.attention(q, k, v, return_lse=True)
    assert o.shape == (2, 5, 4, 24) and o.dtype == torch.float32
    assert lse.shape == (2, 4, 5) and lse.dtype == torch.float32
    o2 = tessera.attention(q, k, v)
    assert isinstance(o2, torch.Tensor) and torch.equal(o, o2)


def test_scale_default_and_explicit():
    q, k, v = (torch.randn(1, 6, 2, 16, dtype=torch.float64) for _ in range(3))
    o_default = tessera.attention(q, k, v)
    o_explicit = tessera.attention(q, k, v, scale=1 / math.sqrt(16))
    assert torch.equal(o_default, o_explicit)
    o_other = tessera.attention(q, k, v, scale=0.7)
    o_ref, _ = naive_attention(q, k, v, scale=0.7)
    assert rel_err(o_other, o_ref) < 1e-12


def test_auto_picks_reference_on_cpu():
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    assert explain(q, k, v)["auto"] == "reference"
    assert explain(q, k, v, causal=True)["sdpa"] is None


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(pattern=Window(3, 0)), "dense or causal"),
    (dict(return_lse=True), "log-sum-exp"),
    (dict(softcap=5.0), "softcap"),
    (dict(score="sigmoid"), "softmax"),
    (dict(sinks=torch.zeros(2)), "sink"),
    (dict(bias=torch.zeros(8, 8)), "bias"),
])
def test_explain_names_sdpa_rejections(kwargs, fragment):
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    reasons = explain(q, k, v, **kwargs)
    assert reasons["reference"] is None
    assert fragment in reasons["sdpa"]


def test_explain_causal_misaligned_for_sdpa():
    q, k, v = torch.randn(1, 4, 2, 16), torch.randn(1, 8, 2, 16), torch.randn(1, 8, 2, 16)
    assert "S_q == S_k" in explain(q, k, v, causal=True)["sdpa"]
    assert explain(q, k, v)["sdpa"] is None


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_sdpa_backend_matches_reference(causal, kv_heads, layout):
    shape_q, shape_kv = [2, 33, 4, 32], [2, 33, kv_heads, 32]
    if layout == "bhsd":
        shape_q = [shape_q[0], shape_q[2], shape_q[1], shape_q[3]]
        shape_kv = [shape_kv[0], shape_kv[2], shape_kv[1], shape_kv[3]]
    q = torch.randn(*shape_q, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*shape_kv, dtype=torch.float64, requires_grad=True)
    v = torch.randn(*shape_kv, dtype=torch.float64, requires_grad=True)
    o = tessera.attention(q, k, v, causal=causal, layout=layout, backend="sdpa")
    o_ref = tessera.attention(q, k, v, causal=causal, layout=layout, backend="reference")
    assert o.shape == o_ref.shape
    assert rel_err(o, o_ref) < 1e-12
    go = torch.randn_like(o)
    g = torch.autograd.grad(o, [q, k, v], go)
    g_ref = torch.autograd.grad(o_ref, [q, k, v], go)
    for a, b in zip(g, g_ref):
        assert rel_err(a, b) < 1e-12


def test_backend_unsupported_call_raises_with_reason():
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    with pytest.raises(ValueError, match="backend='sdpa'.*dense or causal"):
        tessera.attention(q, k, v, pattern=Window(2, 0), backend="sdpa")


def test_pattern_spec_string():
    parse = getattr(tessera.patterns, "parse", None)
    if parse is None:
        pytest.skip("tessera.patterns.parse is not available")
    q, k, v = (torch.randn(1, 12, 2, 8, dtype=torch.float64) for _ in range(3))
    o = tessera.attention(q, k, v, pattern="causal")
    assert rel_err(o, tessera.attention(q, k, v, causal=True)) < 1e-14


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_auto_dispatch(dtype):
    q, k, v = (torch.randn(2, 256, 4, 64, device="cuda", dtype=dtype) for _ in range(3))
    assert explain(q, k, v, causal=True)["auto"] == "sdpa"
    o = tessera.attention(q, k, v, causal=True)
    o_ref, _ = naive_attention(q.cpu(), k.cpu(), v.cpu(), causal=True)
    assert rel_err(o.cpu(), o_ref) < 2e-2
    o, lse = tessera.attention(q, k, v, pattern=Window(16, 0), return_lse=True)
    o_ref, lse_ref = naive_attention(q.cpu(), k.cpu(), v.cpu(), pattern=Window(16, 0))
    assert rel_err(o.cpu(), o_ref) < 2e-2 and rel_err(lse.cpu(), lse_ref) < 1e-2
