"""Bias kinds: row blocks assemble into the whole bias, each matches its definition, varlen
restriction, and gradients reach every learnable tensor through ``tessera.attention``."""

from __future__ import annotations

import math

import pytest
import torch

import tessera
from tessera.bias import ALiBi, Bias, LowRank, RelativePosition, TensorBias, as_bias

from naive import _bias as naive_bias


def kinds(q_len=10, k_len=10, heads=3, batch=2):
    grid_len = 12
    return {
        "tensor": TensorBias(torch.randn(batch, 1, q_len, k_len, dtype=torch.float64)),
        "tensor_row": TensorBias(torch.randn(1, heads, 1, k_len, dtype=torch.float64)),
        "alibi": ALiBi(torch.rand(heads, dtype=torch.float64)),
        "lowrank": LowRank(torch.randn(batch, heads, q_len, 3, dtype=torch.float64),
                           torch.randn(1, heads, k_len, 3, dtype=torch.float64)),
        "relpos": RelativePosition(torch.randn(heads, 5, 7, dtype=torch.float64), (3, 4)),
    }, grid_len


@pytest.mark.parametrize("kind", ["tensor", "tensor_row", "alibi", "lowrank", "relpos"])
def test_blocks_assemble_into_materialized_bias(kind):
    biases, grid_len = kinds(q_len=10, k_len=13)
    bias = biases[kind]
    q_len, k_len = (grid_len, grid_len) if kind == "relpos" else (10, 13)
    full = bias.materialize(q_len, k_len)
    assert full.shape[-2:] == (q_len, k_len)
    rows = torch.cat([bias.block(a, min(a + 3, q_len), q_len, k_len) for a in range(0, q_len, 3)], 2)
    assert torch.equal(rows, full)
    part = bias.block(2, 7, q_len, k_len, k_start=4, k_stop=9)
    assert torch.equal(part, full[:, :, 2:7, 4:9])


@pytest.mark.parametrize("kind", ["tensor", "alibi", "lowrank", "relpos"])
def test_matches_independent_definition(kind):
    biases, grid_len = kinds(q_len=6, k_len=11)
    bias = biases[kind]
    q_len, k_len = (grid_len, grid_len) if kind == "relpos" else (6, 11)
    expected = naive_bias(bias, q_len, k_len, heads=3)
    got = bias.materialize(q_len, k_len)
    assert torch.allclose(got.expand_as(expected), expected, rtol=0, atol=1e-14)


def test_alibi_bottom_right_distance():
    slopes = torch.rand(2, dtype=torch.float64)
    q_len, k_len = 3, 7
    got = ALiBi(slopes).materialize(q_len, k_len)[0]
    for h in range(2):
        for i in range(q_len):
            for j in range(k_len):
                assert got[h, i, j] == -slopes[h] * abs(i + k_len - q_len - j)


@pytest.mark.parametrize("heads", [1, 4, 8, 6, 12])
def test_alibi_default_slopes_geometric(heads):
    slopes = ALiBi.default_slopes(heads, dtype=torch.float64)
    assert slopes.shape == (heads,)
    p = 2 ** math.floor(math.log2(heads))
    expected_head = [2.0 ** (-8.0 * (h + 1) / p) for h in range(p)]
    assert torch.allclose(slopes[:p], torch.tensor(expected_head, dtype=torch.float64))
    # Heads beyond the power of two take every other slope of the 2p-head sequence (ALiBi's code).
    extra = [2.0 ** (-8.0 * (2 * i + 1) / (2 * p)) for i in range(heads - p)]
    assert torch.allclose(slopes[p:], torch.tensor(extra, dtype=torch.float64))


def test_relative_position_one_dimensional():
    g = 6
    table = torch.randn(2, 2 * g - 1, dtype=torch.float64)
    got = RelativePosition(table, (g,)).materialize(g, g)[0]
    for i in range(g):
        for j in range(g):
            assert torch.equal(got[:, i, j], table[:, i - j + g - 1])


def test_relative_position_three_dimensional_against_coordinates():
    grid = (2, 3, 4)
    table = torch.randn(1, 3, 5, 7, dtype=torch.float64)
    got = RelativePosition(table, grid).materialize(24, 24)[0, 0]
    coords = torch.stack(torch.meshgrid(*(torch.arange(g) for g in grid), indexing="ij"), -1).view(-1, 3)
    for i in range(24):
        for j in range(24):
            d = coords[i] - coords[j] + torch.tensor(grid) - 1
            assert got[i, j] == table[0, d[0], d[1], d[2]]


def test_for_sequence_restricts_packed_biases():
    t = torch.randn(1, 2, 9, 11)
    assert torch.equal(TensorBias(t).for_sequence(2, 5, 3, 10).materialize(3, 7), t[:, :, 2:5, 3:10])
    u, w = torch.randn(1, 2, 9, 3), torch.randn(1, 1, 11, 3)
    seq = LowRank(u, w).for_sequence(2, 5, 3, 10)
    assert torch.allclose(seq.materialize(3, 7), (u @ w.transpose(-1, -2))[:, :, 2:5, 3:10])
    alibi = ALiBi(torch.rand(2))
    assert alibi.for_sequence(2, 5, 3, 10) is alibi


def test_as_bias():
    assert as_bias(None) is None
    t = torch.randn(3, 3)
    assert isinstance(as_bias(t), TensorBias) and as_bias(t).tensor.shape == (1, 1, 3, 3)
    a = ALiBi(torch.rand(2))
    assert as_bias(a) is a
    with pytest.raises(TypeError, match="bias"):
        as_bias([1.0])
    assert issubclass(RelativePosition, Bias)


@pytest.mark.parametrize("kind", ["tensor", "alibi", "lowrank", "relpos"])
def test_gradients_reach_learnable_bias_tensors(kind):
    heads, n = 2, 6
    q, k, v = (torch.randn(1, n, heads, 8, dtype=torch.float64) for _ in range(3))
    if kind == "tensor":
        params = [torch.randn(1, heads, n, n, dtype=torch.float64, requires_grad=True)]
        bias = params[0]
    elif kind == "alibi":
        params = [torch.rand(heads, dtype=torch.float64, requires_grad=True)]
        bias = ALiBi(params[0])
    elif kind == "lowrank":
        params = [torch.randn(1, heads, n, 2, dtype=torch.float64, requires_grad=True),
                  torch.randn(1, heads, n, 2, dtype=torch.float64, requires_grad=True)]
        bias = LowRank(*params)
    else:
        params = [torch.randn(heads, 3, 5, dtype=torch.float64, requires_grad=True)]
        bias = RelativePosition(params[0], (2, 3))
    o = tessera.attention(q, k, v, bias=bias, causal=True)
    grads = torch.autograd.grad((o * torch.randn_like(o)).sum(), params)
    for g in grads:
        assert torch.isfinite(g).all() and g.abs().sum() > 0
