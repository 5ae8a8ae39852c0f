"""``merge_attentions`` and natten's additional keys and values against a float64 softmax over the
union of the key sets, forward and backward (gradients of o and of lse)."""

import math

import pytest
import torch

import tessera
from conftest import rel_err
from naive import naive_attention
from tessera.natten import na1d, na2d, na3d
from tessera.patterns import Causal, FromMask
from test_natten import dense_reference


def _leaves(*shapes, dtype=torch.float64):
    return [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]


def test_merging_key_splits_gives_attention_over_all_keys():
    q, k, v = _leaves((2, 20, 4, 8), (2, 50, 2, 8), (2, 50, 2, 6))
    parts = [tessera.attention(q, k[:, a:b], v[:, a:b], return_lse=True, backend="reference")
             for a, b in ((0, 17), (17, 33), (33, 50))]
    o, lse = tessera.merge_attentions([p[0] for p in parts], [p[1] for p in parts])
    o_ref, lse_ref = naive_attention(q, k, v)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(lse, lse_ref) < 1e-12
    do, dlse = torch.randn_like(o), torch.randn_like(lse)
    got = torch.autograd.grad((o, lse), (q, k, v), (do, dlse))
    want = torch.autograd.grad((o_ref, lse_ref), (q, k, v), (do, dlse))
    for name, g, w in zip("qkv", got, want):
        assert rel_err(g, w) < 1e-10, name


def test_rows_without_keys_merge_to_zero_with_finite_gradients():
    # Each part is causal over its own two keys, aligned to the end: rows 0-9 of the 12 queries
    # see no key in either. Merged: o = 0, lse = -inf there; elsewhere the softmax over the
    # union of both parts' visible keys.
    q, k, v = _leaves((1, 12, 2, 4), (1, 4, 2, 4), (1, 4, 2, 4))
    parts = [tessera.attention(q, k[:, a:b], v[:, a:b], pattern=Causal(), return_lse=True, backend="reference")
             for a, b in ((0, 2), (2, 4))]
    o, lse = tessera.merge_attentions([p[0] for p in parts], [p[1] for p in parts])
    assert torch.equal(o[:, :10], torch.zeros_like(o[:, :10]))
    assert bool((lse[..., :10] == -math.inf).all())
    rows, cols = torch.arange(12).view(-1, 1), torch.arange(4).view(1, -1)
    union = FromMask((cols % 2) <= rows - 10)
    o_ref, lse_ref = naive_attention(q, k, v, pattern=union)
    assert rel_err(o[:, 10:], o_ref[:, 10:]) < 1e-12 and rel_err(lse[..., 10:], lse_ref[..., 10:]) < 1e-12
    do = torch.randn_like(o)
    dlse = torch.randn_like(lse).masked_fill(lse == -math.inf, 0.0)
    grads = torch.autograd.grad((o, lse), (q, k, v), (do, dlse))
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    want = torch.autograd.grad((o_ref[:, 10:], lse_ref[..., 10:]), (q, k, v), (do[:, 10:], dlse[..., 10:]))
    for name, g, w in zip("qkv", grads, want):
        assert rel_err(g, w) < 1e-10, name


def test_merge_keeps_the_outputs_dtype_and_promotes_lse():
    o1, o2 = (torch.randn(1, 5, 2, 4, dtype=torch.float16) for _ in range(2))
    l1, l2 = torch.randn(1, 2, 5), torch.randn(1, 2, 5, dtype=torch.float64)
    o, lse = tessera.merge_attentions([o1, o2], [l1, l2])
    assert o.dtype == torch.float16 and lse.dtype == torch.float64
    w1 = torch.sigmoid(l1.double() - l2).transpose(1, 2).unsqueeze(-1)
    assert rel_err(o, w1 * o1.double() + (1 - w1) * o2.double()) < 1e-3


def test_merge_names_bad_arguments():
    o, lse = torch.randn(1, 5, 2, 4), torch.randn(1, 2, 5)
    with pytest.raises(ValueError, match="non-empty and of one length"):
        tessera.merge_attentions([o, o], [lse])
    with pytest.raises(TypeError, match="lists or tuples"):
        tessera.merge_attentions(o, lse)
    with pytest.raises(ValueError, match=r"lses\[1\] must be \[B, H, \*tokens\]"):
        tessera.merge_attentions([o, o], [lse, lse.transpose(1, 2)])
    with pytest.raises(ValueError, match=r"outputs\[1\] must have outputs\[0\]'s shape"):
        tessera.merge_attentions([o, o[:, :4]], [lse, lse])
    with pytest.raises(ValueError, match=r"outputs\[1\] must be floating point"):
        tessera.merge_attentions([o, o.long()], [lse, lse])


@pytest.mark.parametrize("op, grid, kernel, dilation, stride, causal, extra", [
    (na1d, (19,), 5, 2, 1, True, 3),
    (na2d, (6, 7), (3, 5), 1, (2, 1), (False, True), 5),
    (na2d, (8, 8), 3, 2, 1, False, 1),
    (na3d, (3, 4, 5), (2, 3, 3), 1, 1, (True, False, False), 4),
])
def test_additional_keys_and_values_match_float64(op, grid, kernel, dilation, stride, causal, extra):
    nd = len(grid)
    as_tuple = lambda x: (x,) * nd if isinstance(x, (int, bool)) else tuple(x)
    params = [as_tuple(x) for x in (kernel, dilation, stride, causal)]
    q, k, v = _leaves((2, *grid, 4, 8), (2, *grid, 2, 8), (2, *grid, 2, 6))
    keys, values = _leaves((2, extra, 2, 8), (2, extra, 2, 6))
    o, lse = op(q, k, v, kernel, dilation, stride, causal, backend="reference", return_lse=True,
                additional_keys=keys, additional_values=values)
    o_ref, lse_ref = dense_reference(q, k, v, *params, keys, values)
    assert o.shape == o_ref.shape and lse.shape == lse_ref.shape
    assert rel_err(o, o_ref) < 1e-12 and rel_err(lse, lse_ref) < 1e-12
    do, dlse = torch.randn_like(o), torch.randn_like(lse)
    inputs = (q, k, v, keys, values)
    got = torch.autograd.grad((o, lse), inputs, (do, dlse))
    want = torch.autograd.grad((o_ref, lse_ref), inputs, (do, dlse))
    for name, g, w in zip(("q", "k", "v", "additional_keys", "additional_values"), got, want):
        assert rel_err(g, w) < 1e-10, name
    alone = op(q, k, v, kernel, dilation, stride, causal, backend="reference",
               additional_keys=keys, additional_values=values)
    assert torch.equal(alone, o)


def test_extra_tokens_attention_in_query_chunks(monkeypatch):
    # The extra tokens' attention cut into query chunks (one batch entry each) gives the uncut
    # result: o, lse and every gradient.
    import tessera.natten_additional as additional
    assert [additional.query_chunks(n) for n in (2047, 2048, 16384, 36864, 10 ** 6 + 3)] == [1, 2, 16, 36, 1]
    q, k, v = _leaves((2, 6, 8, 4, 8), (2, 6, 8, 2, 8), (2, 6, 8, 2, 6))
    keys, values = _leaves((2, 5, 2, 8), (2, 5, 2, 6))
    inputs = (q, k, v, keys, values)

    def run():
        o, lse = na2d(q, k, v, 3, backend="reference", return_lse=True, additional_keys=keys,
                      additional_values=values)
        return [o, lse, *torch.autograd.grad((o, lse), inputs, (do, dlse))]
    do, dlse = torch.randn(2, 6, 8, 4, 6, dtype=torch.float64), torch.randn(2, 4, 6, 8, dtype=torch.float64)
    whole = run()
    monkeypatch.setattr(additional, "QUERIES_PER_CHUNK", 12)
    assert additional.query_chunks(48) == 4
    for a, b in zip(run(), whole):
        assert rel_err(a, b) < 1e-13


def test_additional_keys_and_values_name_bad_arguments():
    q = torch.randn(1, 6, 6, 4, 8)
    kv = torch.randn(1, 6, 6, 2, 8)
    keys = torch.randn(1, 3, 2, 8)
    with pytest.raises(ValueError, match="additional_values must be given with additional_keys"):
        na2d(q, kv, kv, 3, additional_keys=keys)
    with pytest.raises(ValueError, match="additional_keys must be given with additional_values"):
        na2d(q, kv, kv, 3, additional_values=keys)
    with pytest.raises(ValueError, match=r"additional_keys must be \[B, S_x, H_kv, D\] = \[1, S_x, 2, 8\]"):
        na2d(q, kv, kv, 3, additional_keys=torch.randn(1, 3, 4, 8), additional_values=keys)
    with pytest.raises(ValueError, match="additional_values must be 4-D"):
        na2d(q, kv, kv, 3, additional_keys=keys, additional_values=keys[0])
    with pytest.raises(ValueError, match="one number of tokens"):
        na2d(q, kv, kv, 3, additional_keys=keys, additional_values=keys[:, :2])
    with pytest.raises(ValueError, match="additional_keys must have q's dtype"):
        na2d(q, kv, kv, 3, additional_keys=keys.double(), additional_values=keys)


def test_lse_gradient_of_a_neighborhood_on_the_reference_backend():
    # lse alone in the loss: d lse_i / d s_ij = P_ij over the window.
    grid, kernel = (7, 6), (3, 3)
    q, k, v = _leaves((1, *grid, 2, 8), (1, *grid, 2, 8), (1, *grid, 2, 8))
    _o, lse = na2d(q, k, v, kernel, backend="reference", return_lse=True)
    _o_ref, lse_ref = dense_reference(q, k, v, kernel, (1, 1), (1, 1), (False, False))
    dlse = torch.randn_like(lse)
    for name, g, w in zip("qk", torch.autograd.grad(lse, (q, k), dlse), torch.autograd.grad(lse_ref, (q, k), dlse)):
        assert rel_err(g, w) < 1e-10, name
