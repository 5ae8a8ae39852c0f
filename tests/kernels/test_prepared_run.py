"""A prepared run settles its kernel routes once per settings generation and keeps them only for
calls they fit (16-byte aligned tensors, no forced configs, do laid out as q); its autograd node
flattens grid-shaped tensors itself (CPU: stand-in routes computing attention in torch)."""

from __future__ import annotations

import types

import pytest
import torch

from tessera.kernels.triton import forward_route, route_settings, tuning
from tessera.kernels.triton.prepared_run import PreparedAttention, PreparedRun


def _attention(q, k, v):
    """``(o [B, S, H, D], lse [B, H, S])`` of dense softmax attention in float64 arithmetic."""
    scores = torch.einsum("bshd,bthd->bhst", q.double(), k.double()) / q.shape[-1] ** 0.5
    lse = torch.logsumexp(scores, -1)
    o = torch.einsum("bhst,bthd->bshd", torch.softmax(scores, -1), v.double())
    return o.to(q.dtype).contiguous(), lse.float()


def _gradients(q, k, v, do):
    with torch.enable_grad():   # called inside a backward, where grad mode is off
        leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
        o = torch.einsum("bhst,bthd->bshd", torch.softmax(
            torch.einsum("bshd,bthd->bhst", leaves[0], leaves[1]) / q.shape[-1] ** 0.5, -1), leaves[2])
        return tuple(g.to(q.dtype) for g in torch.autograd.grad(o, leaves, do.double()))


class _Log:
    """Stand-in settle functions and paths of a prepared run, logging what runs."""

    def __init__(self, settles: bool = True):
        self.events = []
        self.settles = settles

    def settle_forward(self, q, k, v):
        self.events.append("settle forward")
        return self.launch_forward if self.settles else None

    def settle_backward(self, q, k, v, do):
        self.events.append("settle backward")
        return self.launch_backward if self.settles else None

    def launch_forward(self, q, k, v):
        self.events.append("settled forward")
        return _attention(q, k, v)

    def launch_backward(self, do, q, k, v, o, lse, dlse):
        self.events.append("settled backward")
        return _gradients(q, k, v, do)

    def forward(self, q, k, v):
        self.events.append("full forward")
        return _attention(q, k, v)

    def gradients(self, q, k, v, o, lse, do, dlse=None):
        self.events.append("full backward")
        return _gradients(q, k, v, do)

    def run(self, contiguous_do: bool = False) -> PreparedRun:
        return PreparedRun(self.settle_forward, self.settle_backward, self.forward, self.gradients,
                           head_contiguous=True, contiguous_do=contiguous_do)


def _inputs(shape=(2, 24, 3, 16), dtype=torch.float32, requires_grad=False):
    return [torch.randn(shape, dtype=dtype).requires_grad_(requires_grad) for _ in range(3)]


def test_watched_modules_advance_the_generation_on_assignment_and_deletion():
    module = types.ModuleType("settings_under_test")
    route_settings.watch(module)
    route_settings.watch(module)
    before = route_settings.generation()
    module.SWITCH = True
    assert route_settings.generation() == before + 1
    module.SWITCH = True   # an assignment of an equal value counts too
    del module.SWITCH
    assert route_settings.generation() == before + 3
    assert module.__dict__.get("SWITCH") is None


def test_routes_settle_once_per_generation(monkeypatch):
    log = _Log()
    run = log.run()
    for _ in range(3):
        run(*_inputs())
    assert log.events == ["settle forward"] + ["settled forward"] * 3
    log.events.clear()
    monkeypatch.setattr(forward_route, "GLUON_ENABLED", forward_route.GLUON_ENABLED)
    run(*_inputs())
    run(*_inputs())
    assert log.events == ["settle forward", "settled forward", "settled forward"]


def test_a_call_the_backend_runs_itself_is_settled_as_such():
    log = _Log(settles=False)
    run = log.run()
    run(*_inputs())
    run(*_inputs())
    assert log.events == ["settle forward", "full forward", "full forward"]


def test_misaligned_tensors_and_forced_configs_take_the_full_path(monkeypatch):
    log = _Log()
    run = log.run()
    q, k, v = _inputs()
    shifted = torch.randn(q.numel() + 1, dtype=torch.float16)[1:].view(q.shape)   # base + 2 bytes
    assert shifted.data_ptr() % 16
    run(shifted, k.half(), v.half())
    assert log.events == ["full forward"]
    monkeypatch.setitem(tuning.OVERRIDES, "fwd", tuning.KernelConfig(64, 64, 4, 1))
    run(q, k, v)
    assert log.events == ["full forward"] * 2


def test_backward_settles_for_do_laid_out_as_q_and_meets_the_reference():
    log = _Log()
    run = log.run()
    q, k, v = _inputs(requires_grad=True)
    o, lse = run(q, k, v)
    assert type(o.grad_fn).__name__ == "PreparedAttentionBackward"
    do = torch.randn_like(o)
    got = torch.autograd.grad(o, (q, k, v), do)
    assert log.events == ["settle forward", "settled forward", "settle backward", "settled backward"]
    for g, want in zip(got, _gradients(q, k, v, do)):
        torch.testing.assert_close(g, want)
    log.events.clear()
    o, _ = run(q, k, v)
    transposed = torch.randn(o.shape[0], o.shape[2], o.shape[1], o.shape[3]).transpose(1, 2)
    torch.autograd.grad(o, (q, k, v), transposed)
    assert log.events == ["settled forward", "full backward"]


def test_grid_calls_flatten_inside_one_node_and_meet_the_reference():
    """``grid_call`` on ``[B, X, Y, H, D]`` tensors: o grid-shaped, gradients grid-shaped and equal
    to the flat call's, the graph from o straight to the leaves (no view nodes); lse
    differentiable (its gradient reaches the run as dlse)."""
    log = _Log()
    run = log.run()
    grid_inputs = [t.view(2, 4, 6, 3, 16).requires_grad_() for t in _inputs()]
    o, lse = run.grid_call(*grid_inputs, 24)
    assert o.shape == (2, 4, 6, 3, 16) and lse.shape == (2, 3, 24)
    nodes = [type(fn).__name__ for fn, _ in o.grad_fn.next_functions if fn is not None]
    assert nodes == ["AccumulateGrad"] * 3
    do = torch.randn_like(o)
    got = torch.autograd.grad(o, grid_inputs, do)
    flat = [t.detach().reshape(2, 24, 3, 16) for t in grid_inputs]
    want = _gradients(*flat, do.reshape(2, 24, 3, 16))
    for g, w, t in zip(got, want, grid_inputs):
        assert g.shape == t.shape
        torch.testing.assert_close(g.reshape(w.shape), w)
    with torch.no_grad():
        o_plain, _ = run.grid_call(*grid_inputs, 24)
    torch.testing.assert_close(o_plain, o)

    seen = []
    run = PreparedRun(log.settle_forward, log.settle_backward, log.forward,
                      lambda q, k, v, o, lse, do, dlse=None: seen.append(dlse) or _gradients(q, k, v, do),
                      head_contiguous=True, contiguous_do=False)
    run._backward_launch = (route_settings.generation(), None)   # the full path: sees dlse
    o, lse = run.grid_call(*grid_inputs, 24)
    dlse = torch.randn_like(lse)
    torch.autograd.grad((o, lse), grid_inputs, (torch.zeros_like(o), dlse))
    assert len(seen) == 1 and torch.equal(seen[0], dlse)


def test_an_lse_only_gradient_runs_the_backward_with_a_zero_do():
    """No gradient for either output: no backward work; a gradient of lse alone: the backward
    runs with do = 0 (o unused)."""
    assert PreparedAttention.backward(types.SimpleNamespace(), None, None) == (None,) * 5
    seen = []
    log = _Log()
    log.launch_backward = lambda do, q, k, v, o, lse, dlse: seen.append((do, dlse)) or _gradients(q, k, v, do)
    run = log.run()
    q, k, v = _inputs(requires_grad=True)
    _, lse = run(q, k, v)
    dlse = torch.randn_like(lse)
    torch.autograd.grad(lse, (q, k, v), dlse)
    (do, got_dlse), = seen
    assert not do.any() and do.shape == q.shape and torch.equal(got_dlse, dlse)
