"""BasedAttention against a token-by-token float64 definition written here from the BASED formulas;
prefill + decode against the full forward; gradients; bad arguments."""

import pytest
import torch

from tessera.nn import BasedAttention, BasedCache

F64 = torch.float64


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def taylor(x):
    """``phi`` with ``phi(a) . phi(b) = 1 + s + s^2 / 2``, ``s = a . b / sqrt(d)``."""
    d = x.shape[-1]
    second = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2) / (2 ** 0.5 * d ** 0.5)
    return torch.cat([torch.ones_like(x[..., :1]), x / d ** 0.25, second], dim=-1)


def definition(layer: BasedAttention, x: torch.Tensor) -> torch.Tensor:
    """The layer's output, one query at a time from the formulas in its docstring."""
    B, T, _ = x.shape
    H, Fd, D, W = layer.num_heads, layer.feature_dim, layer.head_dim, layer.window_size
    w = layer.linear_qkv.weight.view(H, 2 * Fd + D, -1)
    q, k, v = (torch.einsum("btc,hfc->bthf", x, part) for part in w.split([Fd, Fd, D], dim=1))
    fq, fk = taylor(q), taylor(k)
    scale = fq.shape[-1] ** -0.5
    heads = torch.zeros(B, T, H, (2 if W else 1) * D, dtype=x.dtype)
    for t in range(T):
        scores = torch.einsum("bhf,bshf->bhs", fq[:, t], fk[:, :t + 1])
        num = torch.einsum("bhs,bshd->bhd", scores, v[:, :t + 1])
        heads[:, t, :, :D] = scale * num / (scale * scores.sum(-1, keepdim=True) + 1e-10)
    if W:
        wq, wk, wv = layer.window_qkv.weight.view(3, H, D, -1)
        q, k, v = (torch.einsum("btc,hdc->bthd", x, part) for part in (wq, wk, wv))
        for t in range(T):
            lo = max(0, t - W + 1)
            p = (torch.einsum("bhd,bshd->bhs", q[:, t], k[:, lo:t + 1]) / D ** 0.5).softmax(-1)
            heads[:, t, :, D:] = torch.einsum("bhs,bshd->bhd", p, v[:, lo:t + 1])
    return torch.nn.functional.linear(heads.reshape(B, T, -1), layer.out_proj.weight)


@pytest.mark.parametrize("window", [0, 1, 5, 64])
@pytest.mark.parametrize("T", [1, 23])
def test_matches_definition_forward_backward(window, T):
    layer = BasedAttention(48, 3, feature_dim=4, window_size=window).double()
    x = torch.randn(2, T, 48, dtype=F64, requires_grad=True)
    y, y_ref = layer(x), definition(layer, x)
    assert rel(y, y_ref) < 1e-12
    dy = torch.randn_like(y)
    params = [x] + list(layer.parameters())
    for a, b in zip(torch.autograd.grad((y * dy).sum(), params), torch.autograd.grad((y_ref * dy).sum(), params)):
        assert rel(a, b) < 1e-10


@pytest.mark.parametrize("window", [0, 3, 8])
@pytest.mark.parametrize("prefill", [1, 5, 20])
def test_prefill_then_decode_equals_full(window, prefill):
    layer = BasedAttention(32, 2, feature_dim=4, head_dim=8, window_size=window).double()
    x = torch.randn(3, 27, 32, dtype=F64)
    full = layer(x)
    y, cache = layer(x[:, :prefill], use_cache=True)
    outputs = [y]
    for t in range(prefill, 27):
        y, cache = layer(x[:, t:t + 1], cache=cache, use_cache=True)
        outputs.append(y)
    assert rel(torch.cat(outputs, dim=1), full) < 1e-12
    assert cache.length == 27
    if window:
        assert cache.keys.shape == (3, window - 1, 2, 8)


def test_chunked_prefill_equals_full():
    layer = BasedAttention(32, 4, feature_dim=4, window_size=6).double()
    x = torch.randn(2, 40, 32, dtype=F64)
    y1, cache = layer(x[:, :13], use_cache=True)
    y2, cache = layer(x[:, 13:17], cache=cache, use_cache=True)
    y3 = layer(x[:, 17:], cache=cache)
    assert rel(torch.cat([y1, y2, y3], dim=1), layer(x)) < 1e-12


def test_float32_against_float64():
    layer = BasedAttention(64, 4, window_size=16)
    x = torch.randn(2, 50, 64)
    y = layer(x)
    y_ref = layer.double()(x.double())
    assert y.dtype == torch.float32 and rel(y, y_ref) < 1e-5


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="hidden_size must be divisible"):
        BasedAttention(30, 4)
    with pytest.raises(ValueError, match="window_size"):
        BasedAttention(32, 4, window_size=-1)
    with pytest.raises(ValueError, match="feature_dim"):
        BasedAttention(32, 4, feature_dim=0)
    with pytest.raises(ValueError, match="backend"):
        BasedAttention(32, 4, backend="cuda")
    layer = BasedAttention(32, 4, window_size=4)
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(2, 5, 16))
    _, cache = layer(torch.randn(2, 5, 32), use_cache=True)
    with pytest.raises(ValueError, match="batch size"):
        layer(torch.randn(3, 1, 32), cache=cache)
    with pytest.raises(TypeError, match="BasedCache"):
        layer(torch.randn(2, 1, 32), cache=(cache.state,))
    with pytest.raises(ValueError, match="window branch"):
        BasedAttention(32, 4, window_size=0)(torch.randn(2, 1, 32), cache=cache)
    assert isinstance(cache, BasedCache)


@pytest.mark.gpu
@pytest.mark.parametrize("window,tune", [(0, False), (64, False), (0, True)])
def test_gpu_bf16_against_float64(window, tune, monkeypatch):
    """The layer on CUDA in bf16 (Taylor linear attention, the window kernel) against its float64 copy on
    the CPU, forward, gradients and decode. ``tune``: the linear kernels' timed choice launches every usable
    candidate at the Taylor branch's head dims (K = 128 and 32, V = 65; about 40 s of compiling), else
    each kernel runs its first candidate."""
    monkeypatch.setenv("TESSERA_LINEAR_TUNE", "1" if tune else "0")
    layer = BasedAttention(256, 4, window_size=window)
    x = torch.randn(2, 300, 256)
    ref = BasedAttention(256, 4, window_size=window).double()
    ref.load_state_dict(layer.state_dict())
    gpu = layer.to("cuda", torch.bfloat16)
    xg = x.to("cuda", torch.bfloat16).requires_grad_(True)
    xr = xg.detach().double().cpu().requires_grad_(True)
    y, y_ref = gpu(xg), ref(xr)
    assert rel(y.float().cpu(), y_ref) < 2e-2
    dy = torch.randn_like(y_ref)
    (y.float() * dy.to(y.device)).sum().backward()
    (y_ref * dy).sum().backward()
    assert rel(xg.grad.float().cpu(), xr.grad) < 3e-2
    _, cache = gpu(xg[:, :299].detach(), use_cache=True)
    y_last = gpu(xg[:, 299:].detach(), cache=cache)
    assert rel(y_last.float().cpu(), y_ref[:, 299:]) < 2e-2
