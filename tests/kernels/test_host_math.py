"""The host-side integer helpers agree with Triton's constexpr functions they replace."""

import pytest

triton = pytest.importorskip("triton")

from tessera.kernels.triton.host_math import cdiv, padded_width  # noqa: E402


def test_padded_width_is_the_next_power_of_two_at_least_16():
    for n in range(1, 700):
        assert padded_width(n) == max(16, triton.next_power_of_2(n)), n


def test_cdiv_matches_triton():
    for a in range(0, 300, 7):
        for b in (1, 2, 3, 32, 64, 100):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
