"""The Gluon kernels the N-D suite's calls run on a Hopper GPU, compiled for sm_90 as those
launches compile them (``hopper_compile.routed_as_on_hopper`` and ``as_launched``), on CPU.

Programs per SM decide these kernels' speed and no result shows them: the 2-D kernel-17 forward
at D = 128 once took 175 registers for a field it did not need, two programs per SM instead of
three, 0.185 -> 0.226 ms on an H200. Each case pins the programs per SM of every Gluon kernel
its forward and backward launch, at D = 128 and 64 (at least the counts measured on 2026-12-03;
the blocked dk/dv at D = 64 since 2026-12-04).
"""

import pytest
import torch

pytest.importorskip("triton.experimental.gluon")

from tessera.bench.hopper_compile import as_launched, programs_per_sm, resources, routed_as_on_hopper  # noqa: E402
from tessera.natten import _auto_layout, na2d, na3d  # noqa: E402

CASES = [
    # The suite's 2-D kernel 17 over 128 x 128: masked forward, dq and dk/dv on 64 x 64 tiles.
    (na2d, (128, 128), (17, 17), 1, "auto", 128, {"_na_fwd": 3, "_na_dq": 2, "_na_dkdv": 2}),
    (na2d, (128, 128), (17, 17), 1, "auto", 64, {"_na_fwd": 4, "_na_dq": 3, "_na_dkdv": 2}),
    # Over 100 x 100 in 8 x 8 tiles, padded to 104 x 104 (``NA_PADDED``; the forward capped at 168
    # registers at D = 128).
    (na2d, (100, 100), (17, 17), 1, (8, 8), 128, {"_na_fwd": 3, "_na_dq": 2, "_na_dkdv": 2}),
    # 3-D 5 x 13 x 13 over 16 x 48 x 48: forward and dq on key boxes.
    (na3d, (16, 48, 48), (5, 13, 13), 1, "auto", 128, {"_na_fwd_boxes": 3, "_na_dq_boxes": 2, "_na_dkdv": 2}),
    (na3d, (16, 48, 48), (5, 13, 13), 1, "auto", 64, {"_na_fwd_boxes": 4, "_na_dq_boxes": 3, "_na_dkdv": 2}),
    # 3-D blocked 4 x 8 x 8 (stride = kernel): full tiles only, no mask.
    (na3d, (16, 48, 48), (4, 8, 8), (4, 8, 8), "auto", 128, {"_na_fwd": 2, "_na_dq": 2, "_na_dkdv": 2}),
    # dk/dv at D = 64 capped at 168 registers: three programs per SM.
    (na3d, (16, 48, 48), (4, 8, 8), (4, 8, 8), "auto", 64, {"_na_fwd": 5, "_na_dq": 4, "_na_dkdv": 3}),
]


@pytest.mark.parametrize("op, grid, kernel, stride, layout, dim, programs", CASES)
def test_suite_kernels_keep_their_programs_per_sm(op, grid, kernel, stride, layout, dim, programs):
    if layout == "auto":   # the tiles "auto" takes on a GPU (on CPU it keeps row-major order)
        ones = (1,) * len(grid)
        strides = stride if isinstance(stride, tuple) else (stride,) * len(grid)
        layout = _auto_layout(grid, kernel, ones, strides, (False,) * len(grid)).tile_shape
    q, k, v = (torch.randn(1, *grid, 16, dim, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    with routed_as_on_hopper() as launches:
        o = op(q, k, v, kernel, stride=stride, layout=layout, backend="triton")
        torch.autograd.grad(o, (q, k, v), torch.randn_like(o))
    gluon = [(fn, args, kwargs) for fn, args, kwargs in launches if fn.__name__.startswith("_na_")]
    assert sorted(fn.__name__ for fn, _, _ in gluon) == sorted(programs)
    for fn, args, kwargs in gluon:
        compiled = as_launched(fn, args, kwargs)
        assert programs_per_sm(compiled) >= programs[fn.__name__], (fn.__name__, resources(compiled))
        if fn.__name__ == "_na_fwd":
            assert resources(compiled)[1] == 0                 # no spills


def test_dilated_calls_run_every_kernel_in_gluon_under_a_fold(monkeypatch):
    """The suite's 2-D kernel 17 at dilation 2 (a dilation fold over four groups, each group in
    the tiled order a GPU gets): forward, dq and dk/dv all launch Gluon kernels, each compiled for
    two programs per SM or more at D = 128."""
    from tessera import natten
    group_plan = natten._group_plan
    monkeypatch.setattr(natten, "_group_plan", lambda *args: group_plan(*args[:-1], "cuda"))
    q, k, v = (torch.randn(1, 128, 128, 16, 128, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    with routed_as_on_hopper() as launches:
        o = na2d(q, k, v, (17, 17), 2, backend="triton")
        torch.autograd.grad(o, (q, k, v), torch.randn_like(o))
    names = sorted(fn.__name__ for fn, _, _ in launches if fn.__name__.startswith("_na_"))
    assert names == ["_na_dkdv", "_na_dq", "_na_fwd"]
    for fn, args, kwargs in launches:
        if fn.__name__.startswith("_na_"):
            assert programs_per_sm(as_launched(fn, args, kwargs)) >= 2, fn.__name__
