"""Grid patterns that are no neighborhood, run in a tiled token order (``tessera.tiled_grid_patterns``)."""

import pytest
import torch

import tessera
import tessera.tiled_grid_patterns as tiled_grid_patterns
from conftest import assert_error_rule
from tessera.api import _build_call
from tessera.kernels import registry
from tessera.patterns import GridLayout, Permuted
from tessera.patterns.layout import ChainedOrder
from tessera.patterns.vision import CSWin, CrissCross, Halo, MaxViTGrid, Swin
from tessera.tiled_grid_patterns import tiled_grid_call, tiled_layout


def _units(pattern, heads, n):
    from tessera.kernels.triton.backend import forward_tiles
    block_m, block_n = forward_tiles(pattern, n, n, heads, 32, torch.bfloat16)
    tiles = pattern.tile_map(n, n, block_m, block_n, heads)
    listed, full = int(tiles.kv_count.sum()), int(tiles.kv_full.sum())
    return (full + tiled_grid_patterns.PARTIAL_COST * (listed - full)) * block_m * block_n / 4096


@pytest.mark.parametrize("pattern, heads, shape, rolled", [
    (CSWin((64, 64), 8, 4), 4, (8, 8), False),      # stripes in 8 x 8 tiles: 11,674 -> 3,686 units
    (CrissCross((64, 64)), 4, (8, 8), False),
    (CSWin((32, 64), 8, 4), 4, (8, 8), False),
    (CrissCross((56, 56)), 2, (8, 8), False),
    (Halo((64, 64), 8, 3), 4, (8, 8), False),        # 1.8x fewer units
    (Halo((32, 32), 8, 3), 4, None, False),          # 1.16x fewer: below MIN_GAIN
    (Swin((64, 64), 8, shifted=True), 4, (8, 8), True),   # the windows as tiles: 2,496 -> 274 units
    (Swin((56, 56), 7, shifted=True), 4, (7, 7), True),   # the windows as tiles: 2.9x fewer units
    (Swin((28, 28), 7, shifted=True), 4, (7, 7), True),   # 1.95x fewer
    (Swin((4, 32, 32), (2, 8, 8), shifted=True), 4, (2, 8, 8), True),
    (CrissCross((4, 8, 8)), 1, (4, 4, 4), False),    # 1.33x fewer
])
def test_tiled_layout_takes_the_cheapest_tiles_where_they_pay(pattern, heads, shape, rolled, monkeypatch):
    monkeypatch.setattr(tiled_grid_patterns, "_LAYOUTS", {})
    costed = []
    units = tiled_grid_patterns._units
    monkeypatch.setattr(tiled_grid_patterns, "_units", lambda *a: costed.append(1) or units(*a))
    form = tiled_layout(pattern, heads, 32, torch.bfloat16)
    assert costed and tiled_layout(pattern, heads, 32, torch.bfloat16) == form
    shapes = tiled_grid_patterns.layout_shapes(pattern)
    assert len(costed) == 1 + len(shapes) * (2 if rolled else 1)       # remembered
    row_major = _units(pattern, heads, pattern.size)
    if shape is None:
        assert form is None
        return
    layout = GridLayout(pattern.grid, shape)
    if rolled:
        shift, rule = pattern.rolled()
        assert form.order.positions().equal(ChainedOrder(shift, layout).positions())
        assert repr(form.pattern) == repr(Permuted(rule, layout))
    else:
        assert form.order == layout and repr(form.pattern) == repr(Permuted(pattern, layout))
    chosen = _units(form.pattern, heads, pattern.size)
    assert chosen * tiled_grid_patterns.MIN_GAIN <= row_major
    rules = [pattern] + ([pattern.rolled()[1]] if rolled else [])
    for rule in rules:
        for other in shapes:
            assert chosen <= _units(Permuted(rule, GridLayout(pattern.grid, other)), heads, pattern.size)


@pytest.mark.parametrize("pattern, heads", [(CSWin((8, 32), 8, 2), 2), (CrissCross((4, 8, 8)), 2),
                                            (Halo((8, 32), 8, 2), 4), (Swin((16, 16), 8, shifted=True), 2),
                                            (Swin((4, 8, 8), (2, 4, 8), shifted=True), 2)])
def test_tiled_call_is_the_attention_with_its_gradients(pattern, heads, monkeypatch):
    """The tiled call (its cheapest tiles taken whatever they gain; shifted Swin windows on the rolled
    grid) run by the float64 reference
    equals the row-major reference call, o, lse and the gradients of a loss on both (GQA, B = 2,
    sinks and softcap carried over)."""
    monkeypatch.setattr(tiled_grid_patterns, "MIN_GAIN", 1e-9)
    monkeypatch.setattr(tiled_grid_patterns, "_LAYOUTS", {})
    n = pattern.size
    gen = torch.Generator().manual_seed(0)
    exact = [torch.randn(2, n, h, 16, dtype=torch.float64, generator=gen) for h in (heads, heads // 2 or 1, heads // 2 or 1)]
    sinks = torch.randn(heads, dtype=torch.float64, generator=gen)
    do = torch.randn(2, n, heads, 16, dtype=torch.float64, generator=gen)
    dlse = torch.randn(2, heads, n, dtype=torch.float64, generator=gen)
    reference = registry.get_backend("reference")
    runs = []

    def run(call):
        runs.append(call.pattern)
        return reference.run(call)

    def outputs(routed: bool):
        leaves = [t.clone().requires_grad_() for t in exact]
        call, _ = _build_call(*leaves, pattern=pattern, sinks=sinks, softcap=4.0, return_lse=True)
        o, lse = tiled_grid_call(call, "triton", run) if routed else reference.run(call)
        return [o, lse, *torch.autograd.grad((o, lse), leaves, (do, dlse))]

    got, want = outputs(True), outputs(False)
    rolled = pattern.rolled()
    assert len(runs) == 1 and isinstance(runs[0], Permuted)
    assert runs[0].pattern is pattern if rolled is None else repr(runs[0].pattern) == repr(rolled[1])
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), got, want):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), name


def test_chosen_forms_are_addressed_in_grid_order(monkeypatch):
    """The chosen forms say how the kernels find their positions in the caller's order: a layout
    of power-of-two tiles by its fields (None), on Swin's rolled grid by a ``GridRoll`` of the
    shift, any other order (7 x 7 windows as tiles) by its row map; the Triton backend names a
    roll or a map that does not fit the call."""
    from tessera.kernels.triton import backend as triton_backend
    from tessera.kernels.triton.masks import GridRoll, GridRows
    monkeypatch.setattr(tiled_grid_patterns, "_LAYOUTS", {})
    assert tiled_layout(CSWin((64, 64), 8, 4), 4, 32, torch.bfloat16).rows is None
    shifted = tiled_layout(Swin((64, 64), 8, shifted=True), 4, 32, torch.bfloat16)
    assert shifted.rows == GridRoll((64, 64), (4, 4))
    video = tiled_layout(Swin((4, 32, 32), (2, 8, 8), shifted=True), 4, 32, torch.bfloat16)
    assert video.rows == GridRoll((4, 32, 32), (1, 4, 4))
    windows = tiled_layout(Swin((56, 56), 7, shifted=True), 4, 32, torch.bfloat16)
    assert isinstance(windows.rows, GridRows) and windows.rows.size == 56 * 56
    q = torch.randn(1, 64 * 64, 2, 16)
    call, _ = _build_call(q, q, q, pattern=shifted.pattern)
    call.grid_order, call.grid_rows = True, shifted.rows
    assert triton_backend._grid_order_reason(call) is None
    call.grid_rows = GridRoll((32, 128), (4, 4))
    assert "needs the pattern's grid" in triton_backend._grid_order_reason(call)
    call.grid_rows = windows.rows
    assert "a row map of 3136 rows" in triton_backend._grid_order_reason(call)


def test_row_maps_hold_the_orders_rows():
    """A row map's kernel parameters: the plan's grid-order values (zeros without), then the
    tensors' row of each position of the order, padded with zeros past the last."""
    from tessera.kernels.triton import masks
    from tessera.patterns.layout import CyclicShift
    order = ChainedOrder(CyclicShift((14, 14), (3, 3)), GridLayout((14, 14), (7, 7)))
    rows = masks.GridRows(order.positions(), repr(order))
    rule = Swin((14, 14), 7, shifted=True).rolled()[1]
    plan = masks.build_plan(Permuted(rule, GridLayout((14, 14), (7, 7))), 196, 196, 64, 64, 1, torch.device("cpu"))
    values, static = rows.params(plan)
    head = len(masks.NA_FIELD_NAMES) * 3 + 3
    assert values[:head].tolist() == (list(plan.na_values) or [0] * head)
    assert values[head:head + 196].tolist() == order.positions().tolist()
    assert values[head + 196:].tolist() == [0] * masks.ROW_MAP_PAD and static == plan.na_static | masks.NA_ROW_MAP_BIT
    assert rows.params(plan)[0] is values and rows == masks.GridRows(order.positions(), repr(order))
    with pytest.raises(ValueError, match="needs a plan over 196 tokens"):
        rows.params(masks.build_plan(None, 64, 64, 64, 64, 1, torch.device("cpu")))


def test_tiled_route_conditions(monkeypatch):
    """``tessera.attention`` hands grid patterns to the tiled route; the route takes them on the
    Triton backend only ("triton", or "auto" on CUDA), without a bias, for grid patterns that are
    no neighborhood, where some tiles pay."""
    from tessera.patterns import Neighborhood
    monkeypatch.setattr(tiled_grid_patterns, "MIN_GAIN", 1e-9)
    monkeypatch.setattr(tiled_grid_patterns, "_LAYOUTS", {})
    calls = []
    original = tiled_grid_patterns.tiled_grid_call

    def spy(call, backend, run):
        out = original(call, backend, lambda c: registry.get_backend("reference").run(c))
        calls.append(out is not None)
        return out
    monkeypatch.setattr(tessera.api, "tiled_grid_call", spy)
    pattern = CrissCross((4, 8, 8))
    q, k, v = (torch.randn(1, 256, 2, 16, dtype=torch.float64) for _ in range(3))
    o = tessera.attention(q, k, v, pattern=pattern, backend="triton")
    assert calls == [True]
    assert torch.allclose(o, tessera.attention(q, k, v, pattern=pattern, backend="reference"), rtol=0, atol=1e-12)
    assert calls == [True, False]

    def never(call):
        raise AssertionError("the route should have declined")
    bias = torch.zeros(1, 1, 256, 256, dtype=torch.float64)
    declined = [(pattern, "reference", {}), (pattern, "auto", {}), (pattern, "triton", {"bias": bias}),
                (Neighborhood((4, 8, 8), 3), "triton", {})]
    for p, backend, kwargs in declined:
        call, _ = _build_call(q, k, v, pattern=p, **kwargs)
        assert tiled_grid_call(call, backend, never) is None, (p, backend, kwargs)
    monkeypatch.setattr(tiled_grid_patterns, "MIN_GAIN", 2.0)
    monkeypatch.setattr(tiled_grid_patterns, "_LAYOUTS", {})
    call, _ = _build_call(q, k, v, pattern=pattern)                 # no tiles gain 2x at 256 tokens
    assert tiled_grid_call(call, "triton", never) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pattern, tiled", [(CSWin((32, 64), 8, 4), True), (CrissCross((32, 64)), True),
                                            (Halo((32, 64), 8, 3), True), (Halo((32, 32), 8, 3), False),
                                            (Swin((32, 64), 8, shifted=True), True),
                                            (Swin((56, 56), 7, shifted=True), True)],
                         ids=repr)
def test_gpu_grid_patterns_against_float64(monkeypatch, pattern, tiled, dtype):
    """CSWin, criss-cross, shifted Swin windows (tiled order, the windows on the rolled grid) and
    halos (tiled where the tiles pay, ``MIN_GAIN``; else row-major, bitmask tiles) through
    ``tessera.attention`` on CUDA meet the float64 reference by the rule (GQA, B = 2, D = 32; the
    loss takes lse too)."""
    heads = 4
    routed = []
    original = tiled_grid_patterns.tiled_grid_call

    def spy(call, backend, run):
        out = original(call, backend, run)
        routed.append(out is not None)
        return out
    monkeypatch.setattr(tessera.api, "tiled_grid_call", spy)
    n = pattern.size
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(2, n, heads, 32), (2, n, heads // 2, 32), (2, n, heads // 2, 32)]
    inputs = [torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for shape in shapes]
    do = torch.randn(shapes[0], device="cuda", dtype=dtype, generator=gen)
    dlse = torch.randn((2, heads, n), device="cuda", dtype=torch.float64, generator=gen)

    def run(dt, backend):
        leaves = [t.detach().to(dt).requires_grad_() for t in inputs]
        o, lse = tessera.attention(*leaves, pattern=pattern, backend=backend, return_lse=True)
        return [o, lse, *torch.autograd.grad((o, lse), leaves, (do.to(dt), dlse.to(lse.dtype)))]

    got = run(dtype, "auto")
    assert routed == [tiled]
    assert_error_rule(("o", "lse", "dq", "dk", "dv"), got, run(dtype, "reference"),
                      run(torch.float64, "reference"), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("pattern", [Swin((64, 64), 8), Swin((64, 64), 8, shifted=True), MaxViTGrid((56, 56), 7),
                                     CSWin((64, 64), 8, 4)], ids=repr)
def test_gpu_routed_vision_calls_never_synchronize(pattern):
    """A repeated vision call (natten's path, MaxViT's dilation fold, tiled orders), forward and
    backward, enqueues its work without waiting for the GPU: eager calls overlap host and GPU."""
    n = pattern.size
    q, k, v = (torch.randn(2, n, 4, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)

    def step():
        o = tessera.attention(q, k, v, pattern=pattern)
        return torch.autograd.grad(o, (q, k, v), do)

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
