"""``errors_against_float64``: the relative errors it reports for a right and a wrong call."""

import pytest
import torch

from tessera.linear import ops
from tessera.linear.testing import errors_against_float64


def _leaves():
    B, T, H, K, V = 2, 40, 2, 8, 6
    return {"q": torch.randn(B, T, H, K), "k": torch.randn(B, T, H, K) * 0.3, "v": torch.randn(B, T, H, V),
            "h0": torch.randn(B, H, K, V)}


def _call(x, scale_o=1.0):
    o, s = ops.simple_gla(x["q"], x["k"], x["v"], initial_state=x["h0"], output_final_state=True, backend="torch")
    return o * scale_o, s


def test_float32_call_is_close_and_every_leaf_has_a_gradient_error():
    leaves = {n: x.requires_grad_(True) for n, x in _leaves().items()}
    errors = errors_against_float64(_call, _call, leaves)
    assert set(errors) == {"o", "final_state", "dq", "dk", "dv", "dh0"}
    assert max(errors.values()) < 1e-5


def test_a_wrong_output_and_its_gradients_are_reported():
    leaves = {n: x.requires_grad_(True) for n, x in _leaves().items()}
    errors = errors_against_float64(lambda x: _call(x, 1.1), _call, leaves)
    assert errors["o"] == pytest.approx(0.1, rel=1e-4)
    assert errors["final_state"] < 1e-5
    assert errors["dq"] > 0.01 and errors["dv"] > 0.01
