"""The reference backend against the independent float64 implementation in ``naive.py``:
forward and backward over random shapes and every semantic, gradcheck per variant, fully masked
rows, varlen."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tessera
from tessera.bias import ALiBi, LowRank, RelativePosition
from tessera.kernels import reference
from tessera.patterns import Dense, FromMask, Pattern
from tessera.patterns.local import Causal, Window

from conftest import rel_err
from naive import naive_attention

TOL = 1e-10


# Absolute error allowed where the true gradient is ~0 (e.g. a bias constant along a softmax row,
# whose gradient vanishes mathematically): float64 rounding summed over every (batch, query) row.
# ALiBi slopes over one key (B = 2, 70 queries at distances up to 69) left 1.1e-12.
ZERO_GRAD_FLOOR = 1e-11


def grad_close(g: torch.Tensor, g_ref: torch.Tensor) -> bool:
    """Relative error under TOL, or an absolute one under ``ZERO_GRAD_FLOOR`` where the true
    gradient is ~0."""
    diff = (g - g_ref).norm().item()
    return diff <= TOL * g_ref.norm().item() + ZERO_GRAD_FLOOR


@contextlib.contextmanager
def small_chunks(enabled: bool):
    """Force many query chunks and narrow key spans so the chunked paths run at test sizes."""
    saved = reference.CHUNK_ELEMENTS, reference._KEY_SPAN_BLOCK
    if enabled:
        reference.CHUNK_ELEMENTS, reference._KEY_SPAN_BLOCK = 97, 8
    try:
        yield
    finally:
        reference.CHUNK_ELEMENTS, reference._KEY_SPAN_BLOCK = saved


def make_bias(kind: str, gen: torch.Generator, batch: int, heads: int, q_len: int, k_len: int,
              grid=None, bias_shape=None):
    """A learnable bias of ``kind`` (float64) and the list of its learnable tensors."""
    def leaf(*shape, s=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * s).requires_grad_()
    if kind == "none":
        return None, []
    if kind == "tensor":
        t = leaf(*bias_shape)
        return t, [t]
    if kind == "alibi":
        slopes = leaf(heads, s=0.2)
        return ALiBi(slopes), [slopes]
    if kind == "lowrank":
        rank = int(torch.randint(1, 5, (1,), generator=gen))
        u = leaf(batch if bool(torch.randint(0, 2, (1,), generator=gen)) else 1, heads, q_len, rank)
        w = leaf(1, heads if bool(torch.randint(0, 2, (1,), generator=gen)) else 1, k_len, rank)
        return LowRank(u, w), [u, w]
    if kind == "relpos":
        table = leaf(heads, *(2 * g - 1 for g in grid))
        return RelativePosition(table, grid), [table]
    raise AssertionError(kind)


@st.composite
def cases(draw):
    case = dict(
        batch=draw(st.integers(1, 3)), kv_heads=draw(st.integers(1, 3)), group=draw(st.integers(1, 3)),
        dim=draw(st.sampled_from([8, 16, 32])), score=draw(st.sampled_from(["softmax", "sigmoid"])),
        bias=draw(st.sampled_from(["none", "tensor", "alibi", "lowrank", "relpos"])),
        causal=draw(st.booleans()), layout=draw(st.sampled_from(["bshd", "bhsd"])),
        pattern=draw(st.sampled_from(["none", "dense", "causal", "window"])),
        small_chunks=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
    )
    case["d_v"] = draw(st.sampled_from([case["dim"], 8, 16, 32]))
    if case["bias"] == "relpos":
        grid = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        case["grid"] = grid
        case["q_len"] = case["k_len"] = math.prod(grid)
    else:
        case["q_len"], case["k_len"] = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    if case["bias"] == "tensor":
        full = (case["batch"], case["kv_heads"] * case["group"], case["q_len"], case["k_len"])
        case["bias_shape"] = tuple(n if draw(st.booleans()) else 1 for n in full)
    if case["pattern"] == "window":
        side = st.one_of(st.none(), st.integers(0, 24))
        case["window"] = (draw(side), draw(side))
    case["softcap"] = draw(st.one_of(st.none(), st.floats(0.5, 30.0)))
    case["scale"] = draw(st.one_of(st.none(), st.floats(0.05, 1.0)))
    softmax = case["score"] == "softmax"
    case["sinks"] = softmax and draw(st.booleans())
    case["return_lse"] = softmax and draw(st.booleans())
    case["sigmoid_bias"] = None if softmax else draw(st.one_of(st.none(), st.floats(-5.0, 1.0)))
    return case


def build_inputs(case):
    gen = torch.Generator().manual_seed(case["seed"])
    b, sq, sk = case["batch"], case["q_len"], case["k_len"]
    hkv = case["kv_heads"]
    hq = hkv * case["group"]
    shapes = {"q": (b, sq, hq, case["dim"]), "k": (b, sk, hkv, case["dim"]),
              "v": (b, sk, hkv, case["d_v"])}
    tensors = {}
    for name, shape in shapes.items():
        if case["layout"] == "bhsd":
            shape = (shape[0], shape[2], shape[1], shape[3])
        tensors[name] = torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()
    bias, bias_leaves = make_bias(case["bias"], gen, b, hq, sq, sk, case.get("grid"),
                                  case.get("bias_shape"))
    sinks = None
    if case["sinks"]:
        sinks = torch.randn(hq, generator=gen, dtype=torch.float64).requires_grad_()
    pattern = {"none": None, "dense": Dense(), "causal": Causal(),
               "window": Window(*case.get("window", (0, 0)))}[case["pattern"]]
    kwargs = dict(pattern=pattern, causal=case["causal"], scale=case["scale"], score=case["score"],
                  bias=bias, softcap=case["softcap"], sinks=sinks, layout=case["layout"],
                  sigmoid_bias=case["sigmoid_bias"])
    leaves = [tensors["q"], tensors["k"], tensors["v"], *bias_leaves] + ([sinks] if case["sinks"] else [])
    return tensors, kwargs, leaves, gen


def _grads(outputs, cotangents, leaves):
    return torch.autograd.grad(outputs, leaves, cotangents, allow_unused=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_reference_matches_naive_forward_and_backward(case):
    t, kwargs, leaves, gen = build_inputs(case)
    with small_chunks(case["small_chunks"]):
        out = tessera.attention(t["q"], t["k"], t["v"], return_lse=case["return_lse"],
                                backend="reference", **kwargs)
    o, lse = out if case["return_lse"] else (out, None)
    o_ref, lse_ref = naive_attention(t["q"], t["k"], t["v"], **kwargs)
    o_bshd = o.transpose(1, 2) if case["layout"] == "bhsd" else o
    assert o.dtype == torch.float64
    assert not torch.isnan(o).any()
    assert rel_err(o_bshd, o_ref) < TOL

    outputs, cotangents = [o_bshd], [torch.randn(o_bshd.shape, generator=gen, dtype=torch.float64)]
    if lse is not None:
        assert lse.shape == lse_ref.shape
        assert torch.equal(torch.isinf(lse), torch.isinf(lse_ref))
        finite = torch.isfinite(lse_ref)
        assert rel_err(lse[finite], lse_ref[finite]) < TOL
        outputs.append(lse)
        cotangents.append(torch.randn(lse.shape, generator=gen, dtype=torch.float64))
    with small_chunks(case["small_chunks"]):
        grads = _grads(outputs, cotangents, leaves)
    outputs_ref = [o_ref] + ([lse_ref] if lse is not None else [])
    grads_ref = _grads(outputs_ref, cotangents, leaves)
    for g, g_ref in zip(grads, grads_ref):
        g = torch.zeros_like(g_ref) if g is None else g
        g_ref = torch.zeros_like(g) if g_ref is None else g_ref
        assert torch.isfinite(g).all()
        assert grad_close(g, g_ref), (rel_err(g, g_ref), g.shape)


VARIANTS = {
    "dense": dict(),
    "causal": dict(causal=True),
    "causal_sq_lt_sk": dict(causal=True, q_len=3, k_len=5),
    "window": dict(pattern=Window(1, 1)),
    "softcap": dict(softcap=2.0),
    "tensor_bias": dict(bias="tensor"),
    "alibi": dict(bias="alibi", causal=True),
    "lowrank": dict(bias="lowrank"),
    "relpos": dict(bias="relpos", q_len=4, k_len=4, grid=(2, 2)),
    "sinks": dict(sinks=True),
    "sigmoid": dict(score="sigmoid", causal=True),
    "gqa": dict(kv_heads=1),
    "bhsd": dict(layout="bhsd", causal=True),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_gradcheck(name):
    spec = dict(batch=1, q_len=4, k_len=4, kv_heads=2, group=1, dim=4, d_v=3, score="softmax",
                bias="none", causal=False, layout="bshd", pattern="none", sinks=False, softcap=None,
                scale=None, sigmoid_bias=None, seed=int(torch.randint(0, 2**31 - 1, (1,))))
    variant = dict(VARIANTS[name])
    if "pattern" in variant:
        spec["pattern"], spec["window"] = "window", (1, 1)
        variant.pop("pattern")
    if name == "gqa":
        spec["group"] = 2
    spec.update(variant)
    if spec["bias"] == "tensor":
        spec["bias_shape"] = (1, spec["kv_heads"] * spec["group"], spec["q_len"], spec["k_len"])
    t, kwargs, leaves, _ = build_inputs(spec)
    softmax = spec["score"] == "softmax"
    bias_obj, sinks = kwargs.pop("bias"), kwargs.pop("sinks")

    def fn(q, k, v, *params):
        bias = bias_obj
        if isinstance(bias_obj, ALiBi):
            bias = ALiBi(params[0])
        elif isinstance(bias_obj, LowRank):
            bias = LowRank(params[0], params[1])
        elif isinstance(bias_obj, RelativePosition):
            bias = RelativePosition(params[0], bias_obj.grid)
        elif isinstance(bias_obj, torch.Tensor):
            bias = params[0]
        s = params[-1] if sinks is not None else None
        return tessera.attention(q, k, v, bias=bias, sinks=s, return_lse=softmax,
                                 backend="reference", **kwargs)

    assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-7)


def test_gradcheck_varlen():
    cu_q = torch.tensor([0, 2, 5], dtype=torch.int32)
    cu_k = torch.tensor([0, 3, 7], dtype=torch.int32)
    q = torch.randn(1, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 7, 1, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 7, 1, 2, dtype=torch.float64, requires_grad=True)
    slopes = torch.rand(2, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, slopes):
        return tessera.attention(q, k, v, causal=True, bias=ALiBi(slopes), return_lse=True,
                                 cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, backend="reference")

    assert torch.autograd.gradcheck(fn, (q, k, v, slopes), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("sinks", [False, True])
def test_gradcheck_with_fully_masked_rows(sinks):
    # S_q > S_k with a causal window: the first query rows see no key. Checked through o (lse is
    # -inf there, which finite differences cannot probe) and, with sinks, through lse too.
    q = torch.randn(1, 6, 2, 3, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    leaves = [q, k, v] + ([torch.randn(2, dtype=torch.float64, requires_grad=True)] if sinks else [])

    def fn(q, k, v, *s):
        o, lse = tessera.attention(q, k, v, pattern=Window(1, 0), sinks=s[0] if s else None,
                                   return_lse=True, backend="reference")
        return (o, lse) if sinks else o

    assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-7)


class EmptyRow(Pattern):
    """Query position ``empty`` sees nothing; others see everything."""

    def __init__(self, empty: int):
        self.empty = empty

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        return (q_pos != self.empty).expand(shape)


@pytest.mark.parametrize("sinks", [False, True])
@pytest.mark.parametrize("case", ["window_sq_gt_sk", "empty_row", "causal_sq_gt_sk", "from_mask"])
def test_fully_masked_rows(case, sinks):
    b, hq, hkv, d = 2, 4, 2, 16
    sq, sk = (20, 6) if case in ("window_sq_gt_sk", "causal_sq_gt_sk") else (9, 11)
    user_mask = torch.rand(sq, sk) < 0.5
    user_mask[4] = False
    user_mask[:, 0] |= torch.arange(sq) != 4
    pattern = {"window_sq_gt_sk": Window(2, 0), "empty_row": EmptyRow(3), "causal_sq_gt_sk": Causal(),
               "from_mask": FromMask(user_mask)}[case]
    q = torch.randn(b, sq, hq, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, sk, hkv, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, sk, hkv, d, dtype=torch.float64, requires_grad=True)
    s = torch.randn(hq, dtype=torch.float64, requires_grad=True) if sinks else None
    o, lse = tessera.attention(q, k, v, pattern=pattern, sinks=s, return_lse=True, backend="reference")
    mask = pattern.dense_mask(sq, sk)[0]
    empty = ~mask.any(-1)
    assert empty.any()
    assert torch.equal(o[:, empty], torch.zeros_like(o[:, empty]))
    if sinks:
        assert torch.equal(lse[:, :, empty], s.detach().view(1, hq, 1).expand(b, hq, int(empty.sum())))
    else:
        assert torch.isneginf(lse[:, :, empty]).all()
    assert torch.isfinite(lse[:, :, ~empty]).all()
    o_ref, lse_ref = naive_attention(q, k, v, pattern=pattern, sinks=s)
    assert rel_err(o, o_ref) < TOL
    # Backward through o and through the finite part of lse.
    go = torch.randn_like(o)
    gl = torch.randn_like(lse).masked_fill(torch.isinf(lse), 0.0)
    leaves = [q, k, v] + ([s] if sinks else [])
    grads = torch.autograd.grad([o, lse], leaves, [go, gl], retain_graph=True)
    for g in grads:
        assert torch.isfinite(g).all()
    # Even a non-zero cotangent on the -inf lse entries must not produce NaN.
    grads = torch.autograd.grad([o, lse], leaves, [go, torch.randn_like(lse)])
    for g in grads:
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
@pytest.mark.parametrize("bias_kind", ["none", "alibi", "tensor", "lowrank"])
def test_varlen_equals_per_sequence_calls(score, bias_kind):
    lengths_q, lengths_k = [5, 1, 12, 7], [9, 4, 12, 3]
    cu_q = torch.tensor([0] + torch.tensor(lengths_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lengths_k).cumsum(0).tolist(), dtype=torch.int32)
    tq, tk, hq, hkv, d = sum(lengths_q), sum(lengths_k), 4, 2, 8
    q = torch.randn(1, tq, hq, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, tk, hkv, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, tk, hkv, d, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
    bias, _ = make_bias(bias_kind, gen, 1, hq, tq, tk, bias_shape=(1, hq, tq, tk))
    kw = dict(causal=True, score=score, bias=bias, backend="reference")
    o = tessera.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **kw)
    parts = []
    for i in range(len(lengths_q)):
        a, b, c, e = cu_q[i].item(), cu_q[i + 1].item(), cu_k[i].item(), cu_k[i + 1].item()
        seq_bias = bias
        if isinstance(bias, torch.Tensor):
            seq_bias = bias[:, :, a:b, c:e]
        elif isinstance(bias, LowRank):
            seq_bias = LowRank(bias.u[:, :, a:b], bias.w[:, :, c:e])
        kw["bias"] = seq_bias
        parts.append(tessera.attention(q[:, a:b], k[:, c:e], v[:, c:e], **kw))
    expected = torch.cat(parts, dim=1)
    assert rel_err(o, expected) < TOL
    o_ref, _ = naive_attention(q, k, v, causal=True, score=score, bias=bias,
                               cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    assert rel_err(o, o_ref) < TOL


def test_varlen_lse_and_empty_sequence():
    cu_q = torch.tensor([0, 3, 3, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 6, 6], dtype=torch.int32)   # last sequence has no keys
    q = torch.randn(1, 8, 2, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 6, 2, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 6, 2, 8, dtype=torch.float64, requires_grad=True)
    o, lse = tessera.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, return_lse=True)
    o_ref, lse_ref = naive_attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    assert rel_err(o, o_ref) < TOL
    assert torch.isneginf(lse[:, :, 3:]).all() and torch.equal(o[:, 3:], torch.zeros_like(o[:, 3:]))
    assert rel_err(lse[:, :, :3], lse_ref[:, :, :3]) < TOL
    (g,) = torch.autograd.grad(o.sum(), [q])
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_close_to_float64(dtype):
    q, k, v = (torch.randn(2, 70, 4, 32) for _ in range(3))
    o, lse = tessera.attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True,
                               return_lse=True, backend="reference")
    o_ref, lse_ref = naive_attention(q, k, v, causal=True)
    assert o.dtype == dtype and lse.dtype == torch.float32
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}[dtype]
    assert rel_err(o, o_ref) < tol
    assert rel_err(lse, lse_ref) < tol


def test_no_grad_forward_matches_recorded_forward():
    q, k, v = (torch.randn(1, 50, 2, 16, dtype=torch.float64) for _ in range(3))
    with small_chunks(True), torch.no_grad():
        o1 = tessera.attention(q, k, v, pattern=Window(5, 3), backend="reference")
    with small_chunks(True):
        o2 = tessera.attention(q.requires_grad_(), k, v, pattern=Window(5, 3), backend="reference")
    assert o2.requires_grad and rel_err(o1, o2.detach()) < TOL
