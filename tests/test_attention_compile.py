"""``tessera.attention`` with sparse patterns under ``torch.compile`` (``tessera.attention_ops``):
whole graphs (``fullgraph=True``) whose forward and backward equal eager mode bit for bit, on the
reference backend here and, in a fresh interpreted process, on the Triton kernels, whose
compiled backward reads the forward's o and lse instead of recomputing it."""

import os

import pytest
import torch

from conftest import assert_passes_interpreted, step_outputs

import tessera
from tessera.patterns import Power, Sinks, Swin, Window

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def _inputs(batch, seq, heads, kv_heads, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, do = (torch.randn(batch, seq, heads, dim, generator=gen).to(dtype) for _ in range(2))
    k, v = (torch.randn(batch, seq, kv_heads, dim, generator=gen).to(dtype) for _ in range(2))
    return q, k, v, do


def _attend(q, k, v, **kwargs):
    return tessera.attention(q, k, v, **kwargs)


CASES = [
    dict(return_lse=True),                      # dense with lse: the op (SDPA has no lse)
    dict(causal=True, return_lse=True),
    dict(pattern=Window(7), causal=True),
    dict(pattern=Window(5) | Sinks(3), return_lse=True, scale=0.2),
    dict(pattern="power:local=16,causal=true", softcap=5.0),
    dict(pattern=Swin((8, 8), 4, shifted=True), return_lse=True),
    dict(pattern=Window(9, 9), score="sigmoid"),
]


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_graph_equals_eager(kwargs, dtype):
    """One graph (``fullgraph=True``) whose o, lse and gradients equal eager's (GQA, B = 2;
    windows, sinks, Power, shifted Swin windows, softcap, sigmoid scores, a scale)."""
    torch._dynamo.reset()
    q, k, v, do = _inputs(2, 64, 4, 2, 8, dtype)
    kwargs = dict(kwargs, backend="reference")
    eager = step_outputs(_attend, q, k, v, do, **kwargs)
    compiled = step_outputs(torch.compile(_attend, backend="aot_eager", fullgraph=True), q, k, v, do, **kwargs)
    assert len(eager) == len(compiled)
    for got, want in zip(compiled, eager):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_bhsd_layout_under_compile():
    torch._dynamo.reset()
    q, k, v, do = (t.transpose(1, 2) for t in _inputs(1, 48, 2, 2, 8, torch.float64))
    kwargs = dict(pattern=Window(6), causal=True, layout="bhsd", backend="reference")
    eager = step_outputs(_attend, q, k, v, do, **kwargs)
    compiled = step_outputs(torch.compile(_attend, backend="aot_eager", fullgraph=True), q, k, v, do, **kwargs)
    for got, want in zip(compiled, eager):
        assert got.shape == want.shape and torch.equal(got, want)


def test_sigmoid_scores_refuse_return_lse_under_compile():
    torch._dynamo.reset()
    q, k, v, _ = _inputs(1, 32, 2, 2, 8, torch.float64)
    with pytest.raises(Exception, match="return_lse"):
        torch.compile(_attend, backend="aot_eager", fullgraph=True)(
            q, k, v, pattern=Window(4), score="sigmoid", return_lse=True, backend="reference")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ops_pass_torch_library_opcheck(dtype):
    """``torch.library.opcheck`` of both custom ops: schema, autograd registration, fake tensors
    against the real outputs, AOT dispatch."""
    from tessera import attention_ops
    q, k, v, do = _inputs(2, 40, 4, 2, 8, dtype)
    params = ("window:6", True, None, "softmax", None, None, "reference", False)
    torch.library.opcheck(attention_ops.attention_op, (q.requires_grad_(), k, v, *params))
    o, lse = attention_ops.attention_op(q, k, v, *params)
    for dlse in (None, torch.randn_like(lse)):
        torch.library.opcheck(attention_ops.attention_backward_op,
                              (do, q.detach(), k, v, o.detach(), lse.detach(), dlse, *params))


if not IN_INTERPRETER:

    def test_interpreted_cases_in_a_fresh_process():
        assert_passes_interpreted(__file__, "-k", "interpreted_backward", timeout=900)

else:
    from tessera.kernels.triton import backend as triton_backend
    from tessera.kernels.triton.backend import kernels_interpreted

    @pytest.mark.skipif(not kernels_interpreted(), reason="triton was imported before TRITON_INTERPRET=1")
    @pytest.mark.parametrize("kwargs, forwards", [
        (dict(pattern=Window(24) | Sinks(4), causal=True), 1),
        (dict(return_lse=True), 1),            # dense with lse: the op (SDPA has no lse)
        (dict(pattern=Swin((8, 16), 8, shifted=True)), 1),    # the tiled route's grid-order call
        (dict(pattern=Swin((8, 16), 8)), 2),    # natten's path: the backward recomputes it
    ])
    def test_interpreted_backward_reads_the_forward(monkeypatch, kwargs, forwards):
        """fp16 on the Triton kernels in one graph: the compiled step equals eager bit for bit;
        a sparse pattern runs one forward, its backward on the op's saved o and lse."""
        torch._dynamo.reset()
        q, k, v, do = _inputs(1, 128, 2, 1, 16, torch.float16)
        kwargs = dict(kwargs, backend="triton")
        eager = step_outputs(_attend, q, k, v, do, **kwargs)
        calls = []
        original = triton_backend._forward

        def counting_forward(*args):
            calls.append(1)
            return original(*args)
        monkeypatch.setattr(triton_backend, "_forward", counting_forward)
        compiled = step_outputs(torch.compile(_attend, backend="aot_eager", fullgraph=True), q, k, v, do, **kwargs)
        assert len(calls) == forwards
        for got, want in zip(compiled, eager):
            assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("kwargs", [dict(pattern=Window(256), causal=True), dict(return_lse=True),
                                    dict(pattern=Power(local=128), return_lse=True),
                                    dict(pattern=Swin((32, 32), 8, shifted=True))])
def test_compiled_on_the_gpu_equals_eager(kwargs, mode):
    """bf16 on the GPU kernels under torch.compile (inductor; ``reduce-overhead`` replays CUDA
    graphs): o, lse and gradients equal eager's bit for bit over three steps with fresh inputs."""
    torch._dynamo.reset()
    compiled = torch.compile(_attend, fullgraph=True, mode=None if mode == "default" else mode)
    for seed in range(3):
        q, k, v, do = (t.cuda() for t in _inputs(2, 1024, 4, 2, 64, torch.bfloat16, seed))
        eager = step_outputs(_attend, q, k, v, do, **kwargs)
        got = [t.clone() for t in step_outputs(compiled, q, k, v, do, **kwargs)]
        for a, b in zip(got, eager):
            assert torch.equal(a, b)
