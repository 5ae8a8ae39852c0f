"""``na1d`` / ``na2d`` / ``na3d`` under ``torch.compile`` (``tessera.natten_ops``): whole graphs
(``fullgraph=True``), forward and backward equal to eager mode bit for bit (the op runs the eager
path's kernels), on the reference backend here and, in a fresh interpreted process, on the
Triton kernels in grid order, whose compiled backward reads the forward's o and lse instead of
recomputing it."""

import os

import pytest
import torch

from conftest import assert_passes_interpreted, step_outputs

from tessera.natten import na1d, na2d, na3d
from tessera.patterns.layout import GridLayout

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def _inputs(shape_q, kv_heads, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(shape_q, generator=gen, dtype=torch.float32).to(dtype)
    kv_shape = (*shape_q[:-2], kv_heads, shape_q[-1])
    k, v = (torch.randn(kv_shape, generator=gen, dtype=torch.float32).to(dtype) for _ in range(2))
    do = torch.randn(shape_q, generator=gen, dtype=torch.float32).to(dtype)
    return q, k, v, do


CASES = [
    (na1d, (2, 40, 4, 16), 2, dict(kernel_size=7, dilation=2, is_causal=True)),
    (na2d, (2, 12, 10, 4, 16), 1, dict(kernel_size=(5, 3), stride=(2, 1), return_lse=True)),
    (na2d, (1, 12, 12, 2, 8), 2, dict(kernel_size=5, dilation=2, is_causal=(True, False))),
    (na3d, (1, 4, 6, 6, 2, 8), 2, dict(kernel_size=(3, 3, 5), return_lse=True, scale=0.3)),
]


@pytest.mark.parametrize("op, shape, kv_heads, kwargs", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_graph_equals_eager(op, shape, kv_heads, kwargs, dtype):
    """One graph (``fullgraph=True``), forward, lse and gradients equal to eager's (GQA, B up to 2,
    dilation, stride, causal axes, a scale)."""
    torch._dynamo.reset()
    q, k, v, do = _inputs(shape, kv_heads, dtype)
    kwargs = dict(kwargs, backend="reference")
    eager = step_outputs(op, q, k, v, do, **kwargs)
    compiled = step_outputs(torch.compile(op, backend="aot_eager", fullgraph=True), q, k, v, do, **kwargs)
    assert len(eager) == len(compiled)
    for got, want in zip(compiled, eager):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_additional_keys_and_values_compile_into_one_graph(dtype):
    """na2d with extra tokens under ``fullgraph=True``: the neighborhood op, the extra tokens'
    attention op and the merge in torch operations; o, lse and every gradient (the loss on both)
    equal eager's."""
    torch._dynamo.reset()
    q, k, v, do = _inputs((2, 6, 7, 4, 8), 2, dtype)
    gen = torch.Generator().manual_seed(2)
    keys, values = (torch.randn(2, 5, 2, 8, generator=gen).to(dtype) for _ in range(2))
    dlse = torch.randn(2, 4, 6, 7, generator=gen).to(dtype)

    def step(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, keys, values)]
        o, lse = fn(*leaves)
        return [o, lse, *torch.autograd.grad((o, lse), leaves, (do, dlse))]

    def attend(q, k, v, keys, values):
        return na2d(q, k, v, (3, 5), return_lse=True, backend="reference", additional_keys=keys,
                    additional_values=values)
    eager = step(attend)
    compiled = step(torch.compile(attend, backend="aot_eager", fullgraph=True))
    for got, want in zip(compiled, eager):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ops_pass_torch_library_opcheck(dtype):
    """``torch.library.opcheck``: schema, autograd registration, fake tensors (shapes, dtypes and
    strides of the real outputs) and AOT dispatch of both custom ops."""
    from tessera import natten_ops
    q, k, v, do = _inputs((2, 6, 5, 4, 8), 2, dtype)
    params = ([3, 3], [1, 1], [1, 1], [False, True], "auto", "reference", None)
    torch.library.opcheck(natten_ops.neighborhood_attention_op, (q.requires_grad_(), k, v, *params))
    o, lse = natten_ops.neighborhood_attention_op(q, k, v, *params)
    for dlse in (None, torch.randn_like(lse)):
        torch.library.opcheck(natten_ops.neighborhood_attention_backward_op,
                              (do, q.detach(), k, v, o.detach(), lse.detach(), dlse, *params))


def test_compiled_inside_a_model():
    """A compiled block (projection, na2d, projection) trains like its eager twin: same loss and
    parameter gradients."""
    torch._dynamo.reset()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(16, 48)
            self.out = torch.nn.Linear(16, 16)

        def forward(self, x):
            b, h, w, _ = x.shape
            q, k, v = self.qkv(x).view(b, h, w, 3, 2, 8).unbind(3)
            o = na2d(q, k, v, 3, backend="reference")
            return self.out(o.reshape(b, h, w, 16))

    torch.manual_seed(0)
    eager = Block().double()
    compiled = Block().double()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 8, 8, 16, dtype=torch.float64)
    losses = []
    for model in (eager, torch.compile(compiled, backend="aot_eager", fullgraph=True)):
        loss = model(x).square().mean()
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], rtol=1e-12, atol=0)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12), name


def test_grid_layout_objects_run_behind_a_graph_break():
    """A ``GridLayout`` cannot reach the op as text: the call runs eagerly behind a graph break
    (same results); ``fullgraph=True`` refuses it."""
    torch._dynamo.reset()
    q, k, v, do = _inputs((1, 8, 8, 2, 8), 2, torch.float64)
    kwargs = dict(kernel_size=3, layout=GridLayout((8, 8), (4, 4)), backend="reference")
    eager = step_outputs(na2d, q, k, v, do, **kwargs)
    compiled = step_outputs(torch.compile(na2d, backend="aot_eager"), q, k, v, do, **kwargs)
    for got, want in zip(compiled, eager):
        assert torch.equal(got, want)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="(?i)graph break|disable|skip"):
        torch.compile(na2d, backend="aot_eager", fullgraph=True)(q, k, v, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(kernel_size=3, dilation=0), "dilation"),
    (dict(kernel_size=3, is_causal="yes"), "is_causal"),
    (dict(kernel_size=3, layout=5), "layout"),
    (dict(kernel_size=9), "kernel"),
])
def test_compiled_calls_name_bad_arguments(kwargs, match):
    torch._dynamo.reset()
    q, k, v, _ = _inputs((1, 8, 8, 2, 8), 2, torch.float64)
    with pytest.raises(Exception, match=match):
        torch.compile(na2d, backend="aot_eager", fullgraph=True)(q, k, v, backend="reference", **kwargs)


if not IN_INTERPRETER:

    def test_interpreted_cases_in_a_fresh_process():
        assert_passes_interpreted(__file__, "-k", "interpreted_grid_order", timeout=900)

else:
    from tessera.kernels.triton import backend as triton_backend
    from tessera.kernels.triton.backend import kernels_interpreted

    @pytest.mark.skipif(not kernels_interpreted(), reason="triton was imported before TRITON_INTERPRET=1")
    @pytest.mark.parametrize("op, shape, kwargs, forwards", [
        (na2d, (2, 16, 8, 2, 16), dict(kernel_size=(5, 3), layout=(8, 8)), 1),
        # A grid the tiles do not divide: padded to 16 x 16, the backward on the padded o and lse.
        (na2d, (2, 13, 11, 2, 16), dict(kernel_size=(5, 3), layout=(8, 8), return_lse=True), 1),
        # Dilation groups of one kernel tile each (8 x 8), addressed in place by the fold: the
        # backward on the saved o and lse.
        (na2d, (1, 16, 16, 2, 16), dict(kernel_size=3, dilation=2, return_lse=True), 1),
        # Dilation groups over one tile (12 x 8) gathered (no tiled order for them off CUDA): the
        # backward recomputes.
        (na2d, (1, 24, 16, 2, 16), dict(kernel_size=3, dilation=2, return_lse=True), 2),
    ])
    def test_interpreted_grid_order_backward_reads_the_forward(monkeypatch, op, shape, kwargs, forwards):
        """fp16 on the Triton kernels: the compiled step equals eager bit for bit; in grid order
        it runs one forward, its backward on the op's saved o and lse."""
        torch._dynamo.reset()
        q, k, v, do = _inputs(shape, 2, torch.float16)
        kwargs = dict(kwargs, backend="triton")
        eager = step_outputs(op, q, k, v, do, **kwargs)
        calls = []
        original = triton_backend._forward

        def counting_forward(*args):
            calls.append(1)
            return original(*args)
        monkeypatch.setattr(triton_backend, "_forward", counting_forward)
        compiled = step_outputs(torch.compile(op, backend="aot_eager", fullgraph=True), q, k, v, do, **kwargs)
        assert len(calls) == forwards
        for got, want in zip(compiled, eager):
            assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("op, shape, kwargs", [
    (na2d, (2, 48, 40, 4, 128), dict(kernel_size=(13, 11))),                  # key boxes (Hopper)
    (na2d, (1, 64, 64, 2, 64), dict(kernel_size=7, dilation=2, return_lse=True)),   # dilation fold
    (na3d, (2, 8, 16, 16, 2, 32), dict(kernel_size=(4, 8, 8), stride=(4, 8, 8))),   # blocked, D = 32
    (na2d, (2, 44, 37, 4, 128), dict(kernel_size=(13, 11), layout=(8, 8))),       # padded to 48 x 40
])
def test_compiled_on_the_gpu_equals_eager(op, shape, kwargs, mode):
    """bf16 on the GPU kernels under torch.compile (inductor; ``reduce-overhead`` replays CUDA
    graphs): forward, lse and gradients equal eager's bit for bit, over three steps with fresh
    inputs (the replays take each step's tensors)."""
    torch._dynamo.reset()
    compiled_op = torch.compile(op, fullgraph=True, mode=None if mode == "default" else mode)
    for seed in range(3):
        q, k, v, do = (t.cuda() for t in _inputs(shape, 2, torch.bfloat16, seed))
        eager = step_outputs(op, q, k, v, do, **kwargs)
        compiled = [t.clone() for t in step_outputs(compiled_op, q, k, v, do, **kwargs)]
        for got, want in zip(compiled, eager):
            assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_additional_keys_compiled_on_the_gpu_against_float64():
    """bf16 na2d with 40 extra tokens under torch.compile (inductor, one graph: the two ops and the
    merge, which the compiler fuses instead of tessera's merge kernels), o, lse and every
    gradient (the loss on both) against the float64 reference by the error rule."""
    from conftest import assert_error_rule
    torch._dynamo.reset()
    q, k, v, do = (t.cuda() for t in _inputs((2, 32, 48, 4, 128), 2, torch.bfloat16))
    gen = torch.Generator().manual_seed(3)
    keys, values = (torch.randn(2, 40, 2, 128, generator=gen).cuda() for _ in range(2))
    dlse = torch.randn(2, 4, 32, 48, generator=gen, dtype=torch.float64).cuda()

    def attend(q, k, v, keys, values, backend):
        return na2d(q, k, v, (7, 9), return_lse=True, backend=backend, additional_keys=keys,
                    additional_values=values)

    def step(fn, dtype, backend):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, keys, values)]
        o, lse = fn(*leaves, backend)
        return [o, lse, *torch.autograd.grad((o, lse), leaves, (do.to(dtype), dlse.to(lse.dtype)))]

    compiled = step(torch.compile(attend, fullgraph=True), torch.bfloat16, "triton")
    assert_error_rule(("o", "lse", "dq", "dk", "dv", "dkeys", "dvalues"), compiled,
                      step(attend, torch.bfloat16, "reference"), step(attend, torch.float64, "reference"),
                      torch.bfloat16)
