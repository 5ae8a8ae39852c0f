"""The routed Gluon forward compiled for sm_90 as a GPU launch compiles it, on CPU.

A register count that costs a program per SM slows the kernel by about a fifth without changing
any result: the 2-D kernel-17 forward at D = 128 once took 175 registers (two programs per SM,
0.185 -> 0.226 ms on an H200) for a field it did not need. No other CPU test would notice.
"""

import math

import pytest
import torch

pytest.importorskip("triton.experimental.gluon")

from tessera.bench.hopper_compile import as_launched, resources  # noqa: E402
from tessera.kernels.gluon import na_forward as gluon_forward  # noqa: E402
from tessera.kernels.triton import forward_route, masks  # noqa: E402
from tessera.natten import _auto_layout  # noqa: E402
from tessera.patterns import Neighborhood, Permuted  # noqa: E402
from tessera.patterns.layout import GridLayout  # noqa: E402
from tessera.patterns.neighborhood import PaddedNeighborhood  # noqa: E402

# Registers per thread at which three programs of 4 warps fit an SM's 65,536 (allocated in
# steps of 8 per thread).
THREE_PROGRAMS_PER_SM = 168


def _suite_plan(padded: bool):
    """The N-D suite's 2-D kernel-17 plan: 128 x 128 in natten's tiles, or 100 x 100 padded to
    104 x 104 in 8 x 8 tiles (``PaddedNeighborhood``), and its q's token count."""
    if padded:
        pattern = Permuted(PaddedNeighborhood((104, 104), (100, 100), 17), GridLayout((104, 104), (8, 8)))
        tokens = 100 * 100
    else:
        rule = Neighborhood((128, 128), 17)
        pattern = Permuted(rule, _auto_layout(rule.grid, rule.kernel, rule.dilation, rule.stride, rule.causal))
        tokens = 128 * 128
    seq = math.prod(pattern.layout.grid)
    return masks.get_plan(pattern, seq, seq, 64, 64, 1, torch.device("cpu")), tokens


@pytest.mark.parametrize("padded", [False, True])
def test_routed_masked_forward_at_head_dim_128_keeps_three_programs_per_sm(padded, monkeypatch):
    plan, tokens = _suite_plan(padded)
    q, k, v = (torch.empty(1, tokens, 16, 128, dtype=torch.bfloat16) for _ in range(3))
    monkeypatch.setattr(forward_route, "on_hopper", lambda t: True)
    variant = forward_route.gluon_variant(q, k, v, plan)
    assert variant is not None and not variant.get("boxes")
    launches = []
    monkeypatch.setattr(type(gluon_forward._na_fwd), "__getitem__",
                        lambda fn, grid: lambda *args, **kwargs: launches.append((args, kwargs)))
    gluon_forward.na_forward(q, k, v, plan, scale=128 ** -0.5, **variant)
    (args, kwargs), = launches
    registers, stack = resources(as_launched(gluon_forward._na_fwd, args, kwargs))
    assert stack == 0
    assert 0 < registers <= THREE_PROGRAMS_PER_SM
