"""Bad input raises ValueError/TypeError up front, naming the argument (and what was expected)."""

from __future__ import annotations

import math

import pytest
import torch

import tessera
from tessera.bias import ALiBi, LowRank, RelativePosition
from tessera.patterns import FromMask, Window

B, SQ, SK, HQ, HKV, D = 1, 6, 8, 4, 2, 16


def qkv(**over):
    shapes = dict(q=(B, SQ, HQ, D), k=(B, SK, HKV, D), v=(B, SK, HKV, D))
    out = {n: torch.randn(*s) for n, s in shapes.items()}
    out.update(over)
    return out


def cu(values, dtype=torch.int32):
    return torch.tensor(values, dtype=dtype)


# (id, keyword arguments beyond q/k/v (or replacing them), exception type, text the message holds)
CASES = [
    ("q_not_tensor", dict(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
    ("k_not_tensor", dict(k=None), TypeError, "k must be a torch.Tensor"),
    ("v_not_tensor", dict(v=3.0), TypeError, "v must be a torch.Tensor"),
    ("q_3d", dict(q=torch.randn(SQ, HQ, D)), ValueError, "q must be 4-D"),
    ("k_5d", dict(k=torch.randn(1, B, SK, HKV, D)), ValueError, "k must be 4-D"),
    ("v_2d", dict(v=torch.randn(SK, D)), ValueError, "v must be 4-D"),
    ("q_int", dict(q=torch.ones(B, SQ, HQ, D, dtype=torch.int64)), TypeError, "q must have dtype"),
    ("q_bool", dict(q=torch.ones(B, SQ, HQ, D, dtype=torch.bool)), TypeError, "q must have dtype"),
    ("k_dtype_differs", dict(k=torch.randn(B, SK, HKV, D, dtype=torch.float64)), TypeError,
     "k must have q's dtype"),
    ("v_dtype_differs", dict(v=torch.randn(B, SK, HKV, D, dtype=torch.float16)), TypeError,
     "v must have q's dtype"),
    ("k_device_differs", dict(k=torch.randn(B, SK, HKV, D, device="meta")), ValueError,
     "k must be on q's device"),
    ("k_batch", dict(k=torch.randn(2, SK, HKV, D)), ValueError, "batch size B=1"),
    ("v_batch", dict(v=torch.randn(3, SK, HKV, D)), ValueError, "batch size B=1"),
    ("v_seq_len", dict(v=torch.randn(B, SK + 1, HKV, D)), ValueError,
     "v must have k's sequence length"),
    ("v_heads", dict(v=torch.randn(B, SK, HKV + 1, D)), ValueError,
     "v must have k's number of heads"),
    ("k_head_dim", dict(k=torch.randn(B, SK, HKV, D + 8)), ValueError, "k must have q's head dim"),
    ("gqa_not_divisible", dict(k=torch.randn(B, SK, 3, D), v=torch.randn(B, SK, 3, D)), ValueError,
     "H_kv must divide"),
    ("empty_q", dict(q=torch.randn(B, 0, HQ, D)), ValueError, "q must be non-empty"),
    ("layout_name", dict(layout="bsdh"), ValueError, "layout must be one of"),
    ("layout_type", dict(layout=0), ValueError, "layout must be one of"),
    ("score_name", dict(score="relu"), ValueError, "score must be one of"),
    ("scale_nan", dict(scale=math.nan), ValueError, "scale must be finite"),
    ("scale_inf", dict(scale=math.inf), ValueError, "scale must be finite"),
    ("scale_str", dict(scale="0.1"), TypeError, "scale must be a real number"),
    ("scale_bool", dict(scale=True), TypeError, "scale must be a real number"),
    ("softcap_zero", dict(softcap=0.0), ValueError, "softcap must be > 0"),
    ("softcap_negative", dict(softcap=-3), ValueError, "softcap must be > 0"),
    ("softcap_nan", dict(softcap=math.nan), ValueError, "softcap must be finite"),
    ("softcap_tensor", dict(softcap=torch.tensor(1.0)), TypeError, "softcap must be a real number"),
    ("causal_not_bool", dict(causal=1), TypeError, "causal must be a bool"),
    ("return_lse_not_bool", dict(return_lse="yes"), TypeError, "return_lse must be a bool"),
    ("deterministic_not_bool", dict(deterministic=None), TypeError, "deterministic must be a bool"),
    ("bias_wrong_type", dict(bias=[0.0]), TypeError, "bias must be None, a torch.Tensor"),
    ("bias_int_dtype", dict(bias=torch.zeros(SQ, SK, dtype=torch.int32)), TypeError,
     "bias must have a floating dtype"),
    ("bias_5d", dict(bias=torch.zeros(1, 1, 1, SQ, SK)), ValueError,
     "bias must have at most 4 dims"),
    ("bias_not_broadcastable", dict(bias=torch.zeros(B, HQ, SQ, SK + 1)), ValueError,
     "bias must be broadcastable to [B, H_q, S_q, S_k]"),
    ("bias_heads", dict(bias=torch.zeros(1, HKV, SQ, SK)), ValueError,
     "bias must be broadcastable"),
    ("bias_device", dict(bias=torch.zeros(SQ, SK, device="meta")), ValueError,
     "bias tensors must be on the device of q"),
    ("alibi_slopes_shape", dict(bias=ALiBi(torch.ones(HQ + 1))), ValueError,
     "ALiBi slopes must have shape [H_q]"),
    ("lowrank_u_length", dict(bias=LowRank(torch.ones(1, 1, SQ + 1, 2), torch.ones(1, 1, SK, 2))),
     ValueError, "LowRank u must have shape"),
    ("lowrank_w_heads", dict(bias=LowRank(torch.ones(1, 1, SQ, 2), torch.ones(1, 3, SK, 2))),
     ValueError, "LowRank w must have shape"),
    ("relpos_lengths", dict(bias=RelativePosition(torch.ones(HQ, 3, 3), (2, 2))), ValueError,
     "RelativePosition over grid (2, 2) needs S_q == S_k == 4"),
    ("relpos_heads", dict(q=torch.randn(B, 4, HQ, D), k=torch.randn(B, 4, HKV, D),
                          v=torch.randn(B, 4, HKV, D),
                          bias=RelativePosition(torch.ones(3, 3, 3), (2, 2))), ValueError,
     "RelativePosition table must have 4"),
    ("sinks_not_tensor", dict(sinks=[0.0] * HQ), TypeError, "sinks must be a torch.Tensor"),
    ("sinks_shape", dict(sinks=torch.zeros(HKV)), ValueError, "sinks must have shape [H_q] = [4]"),
    ("sinks_int", dict(sinks=torch.zeros(HQ, dtype=torch.int64)), TypeError,
     "sinks must have a floating dtype"),
    ("sinks_device", dict(sinks=torch.zeros(HQ, device="meta")), ValueError,
     "sinks must be on q's device"),
    ("sinks_with_sigmoid", dict(score="sigmoid", sinks=torch.zeros(HQ)), ValueError,
     "sinks must be None with score='sigmoid'"),
    ("lse_with_sigmoid", dict(score="sigmoid", return_lse=True), ValueError,
     "return_lse=True is not available"),
    ("sigmoid_bias_with_softmax", dict(sigmoid_bias=-1.0), ValueError, "sigmoid_bias applies only"),
    ("sigmoid_bias_nan", dict(score="sigmoid", sigmoid_bias=math.nan), ValueError,
     "sigmoid_bias must be finite"),
    ("sigmoid_bias_str", dict(score="sigmoid", sigmoid_bias="auto"), TypeError,
     "sigmoid_bias must be a real number"),
    ("cu_seqlens_only_q", dict(cu_seqlens_q=cu([0, SQ])), ValueError,
     "given together, got cu_seqlens_k=None"),
    ("cu_seqlens_int64", dict(cu_seqlens_q=cu([0, SQ], torch.int64), cu_seqlens_k=cu([0, SK])), TypeError,
     "cu_seqlens_q must have dtype torch.int32"),
    ("cu_seqlens_not_tensor", dict(cu_seqlens_q=[0, SQ], cu_seqlens_k=cu([0, SK])), TypeError,
     "cu_seqlens_q must be an int32 torch.Tensor"),
    ("cu_seqlens_2d", dict(cu_seqlens_q=cu([[0, SQ]]), cu_seqlens_k=cu([0, SK])), ValueError,
     "cu_seqlens_q must be 1-D"),
    ("cu_seqlens_start", dict(cu_seqlens_q=cu([1, SQ]), cu_seqlens_k=cu([0, SK])), ValueError,
     "cu_seqlens_q must start at 0"),
    ("cu_seqlens_decreasing", dict(cu_seqlens_q=cu([0, 4, 2, SQ]), cu_seqlens_k=cu([0, 2, 4, SK])),
     ValueError, "cu_seqlens_q must be non-decreasing"),
    ("cu_seqlens_total", dict(cu_seqlens_q=cu([0, SQ]), cu_seqlens_k=cu([0, SK - 1])), ValueError,
     "cu_seqlens_k must end at the packed length 8"),
    ("cu_seqlens_count", dict(cu_seqlens_q=cu([0, 2, SQ]), cu_seqlens_k=cu([0, SK])), ValueError,
     "cu_seqlens_k must hold as many sequences"),
    ("cu_seqlens_batch", dict(q=torch.randn(2, SQ, HQ, D), k=torch.randn(2, SK, HKV, D),
                              v=torch.randn(2, SK, HKV, D),
                              cu_seqlens_q=cu([0, SQ]), cu_seqlens_k=cu([0, SK])), ValueError,
     "batch size B=1 with cu_seqlens"),
    ("pattern_type", dict(pattern=3), TypeError, "pattern must be a tessera.patterns.Pattern"),
    ("pattern_mask_lengths", dict(pattern=FromMask(torch.ones(SQ + 1, SK, dtype=torch.bool))),
     ValueError, "does not fit this call: (q_len, k_len) must be"),
    ("backend_unknown", dict(backend="cudnn9"), ValueError, "backend must be one of"),
    ("backend_type", dict(backend=None), TypeError, "backend must be a str"),
    ("sdpa_with_pattern", dict(backend="sdpa", pattern=Window(2, 0)), ValueError,
     "backend='sdpa' cannot run this call: SDPA runs only dense or causal"),
    ("sdpa_with_lse", dict(backend="sdpa", return_lse=True), ValueError,
     "backend='sdpa' cannot run this call: SDPA does not return the log-sum-exp"),
    ("sdpa_causal_misaligned", dict(backend="sdpa", causal=True), ValueError,
     "top-left aligned"),
    ("sdpa_with_bias", dict(backend="sdpa", bias=torch.zeros(SQ, SK)), ValueError,
     "backend='sdpa' cannot run this call"),
]


def test_enough_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("name, kwargs, exc, text", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, kwargs, exc, text):
    kwargs = dict(kwargs)
    tensors = qkv(**{n: kwargs.pop(n) for n in ("q", "k", "v") if n in kwargs})
    with pytest.raises(exc) as info:
        tessera.attention(tensors["q"], tensors["k"], tensors["v"], **kwargs)
    assert text in str(info.value), str(info.value)


def test_bad_input_in_bhsd_layout_names_bhsd_dims():
    q = torch.randn(B, HQ, SQ)
    with pytest.raises(ValueError, match=r"q must be 4-D \[B, H, S, D\] \(layout='bhsd'\)"):
        tessera.attention(q, torch.randn(B, HKV, SK, D), torch.randn(B, HKV, SK, D), layout="bhsd")


def test_explain_validates_too():
    t = qkv()
    with pytest.raises(ValueError, match="score must be one of"):
        tessera.explain(t["q"], t["k"], t["v"], score="tanh")
    with pytest.raises(ValueError, match="backend must be one of"):
        tessera.explain(t["q"], t["k"], t["v"], backend="nope")
