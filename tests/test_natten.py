"""na1d / na2d / na3d against a float64 masked softmax written from NATTEN's window rule."""

import itertools
import math

import pytest
import torch

from conftest import assert_error_rule, rel_err
from tessera.natten import na1d, na2d, na3d


def window(length, kernel, dilation, stride, causal, x):
    """Visible key coordinates of coordinate x on one axis (NATTEN's definition)."""
    group, i = x % dilation, x // dilation
    n = len(range(group, length, dilation))
    if causal:
        leader = min(i // stride * stride + stride - 1, n - 1)
        start, end = max(leader - kernel + 1, 0), i + 1
    else:
        leader = min(i // stride * stride + stride // 2, n - 1)
        start = min(max(leader - kernel // 2, 0), n - kernel)
        end = start + kernel
    return {group + j * dilation for j in range(start, end)}


def window_mask(grid, kernel, dilation, stride, causal) -> torch.Tensor:
    """bool ``[n, n]`` over the grid's tokens in row-major order: whether query cell ``i`` sees key
    cell ``j`` (each axis by ``window``)."""
    cells = list(itertools.product(*[range(g) for g in grid]))
    return torch.tensor([[all(kc[a] in window(grid[a], kernel[a], dilation[a], stride[a], causal[a], qc[a])
                              for a in range(len(grid))) for kc in cells] for qc in cells])


def dense_reference(q, k, v, kernel, dilation, stride, causal, keys=None, values=None):
    """float64 softmax over the allowed keys, on [B, *grid, H, D] tensors (GQA by repetition);
    with ``keys`` and ``values`` (``[B, S_x, H_kv, D]``) every query also sees those extra tokens."""
    grid = q.shape[1:-2]
    allowed = window_mask(grid, kernel, dilation, stride, causal)
    b, h, d = q.shape[0], q.shape[-2], q.shape[-1]
    n = allowed.shape[0]
    qf, kf, vf = (t.reshape(b, n, t.shape[-2], t.shape[-1]).double() for t in (q, k, v))
    if keys is not None:
        allowed = torch.cat([allowed, torch.ones(n, keys.shape[1], dtype=torch.bool)], 1)
        kf, vf = torch.cat([kf, keys.double()], 1), torch.cat([vf, values.double()], 1)
    group = h // kf.shape[2]
    kf, vf = kf.repeat_interleave(group, 2), vf.repeat_interleave(group, 2)
    s = torch.einsum("bqhd,bkhd->bhqk", qf, kf) / math.sqrt(d)
    s = s.masked_fill(~allowed, -math.inf)
    o = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), vf)
    return o.reshape(b, *grid, h, vf.shape[-1]), torch.logsumexp(s, -1).reshape(b, h, *grid)


CASES = [
    (na1d, (23,), 5, 1, 1, False, "row-major"),
    (na1d, (40,), 6, 3, 4, False, (8,)),
    (na1d, (17,), 4, 2, 2, True, "auto"),
    (na2d, (7, 9), (3, 5), (2, 1), (1, 2), (False, True), (2, 3)),
    (na2d, (12, 12), 4, 1, 4, False, "row-major"),
    (na2d, (6, 8), 3, 2, 1, True, (3, 4)),
    (na3d, (4, 5, 6), (3, 3, 4), (1, 1, 1), (1, 2, 2), (True, False, False), (2, 5, 3)),
    (na3d, (5, 6, 6), 3, (1, 2, 1), (3, 1, 1), False, "auto"),
    # "auto" with dilations dividing the grid: one undilated neighborhood per dilation group.
    (na1d, (24,), 4, 3, 2, True, "auto"),
    (na2d, (8, 12), (3, 4), (2, 3), (2, 1), (False, True), "auto"),
    (na3d, (4, 6, 4), (2, 3, 2), (2, 2, 1), (1, 3, 2), (True, False, False), "auto"),
]


@pytest.mark.parametrize("op, grid, kernel, dilation, stride, causal, layout", CASES)
def test_forward_and_backward_match_float64(op, grid, kernel, dilation, stride, causal, layout):
    nd = len(grid)
    as_tuple = lambda x: (x,) * nd if isinstance(x, (int, bool)) else tuple(x)
    params = [as_tuple(x) for x in (kernel, dilation, stride, causal)]
    b, h_q, h_kv, d = 2, 4, 2, 8
    q = torch.randn(b, *grid, h_q, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, *grid, h_kv, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, *grid, h_kv, d, dtype=torch.float64, requires_grad=True)
    o, lse = op(q, k, v, kernel, dilation, stride, causal, layout=layout, backend="reference",
                return_lse=True)
    o_ref, lse_ref = dense_reference(q, k, v, *params)
    assert o.shape == o_ref.shape and lse.shape == lse_ref.shape
    assert rel_err(o, o_ref) < 1e-12
    assert rel_err(lse, lse_ref) < 1e-12
    grad = torch.randn_like(o)
    got = torch.autograd.grad(o, (q, k, v), grad)
    want = torch.autograd.grad(o_ref, (q, k, v), grad)
    for name, g, w in zip("qkv", got, want):
        assert rel_err(g, w) < 1e-10, name


def test_float32_and_layouts_agree():
    q, k, v = (torch.randn(1, 8, 8, 2, 16) for _ in range(3))
    o_row = na2d(q, k, v, 3, layout="row-major")
    o_tiled = na2d(q, k, v, 3, layout=(4, 2))
    ref, _ = dense_reference(q, k, v, (3, 3), (1, 1), (1, 1), (False, False))
    assert rel_err(o_row, ref) < 1e-5
    assert rel_err(o_tiled, ref) < 1e-5


def test_dilation_groups_rule_and_order():
    """Dilated "auto" calls split the grid into dilation groups only when every dilation divides
    its axis; the group order puts each group's tokens, in its sub-grid's tiled order, in one
    batch entry, and back."""
    from tessera.natten import dilation_groups
    from tessera.patterns.layout import DilationGroupOrder, GridLayout
    assert dilation_groups((128, 128), (2, 2)) == (64, 64)
    assert dilation_groups((16, 48, 48), (1, 3, 2)) == (16, 16, 24)
    assert dilation_groups((128, 128), (1, 1)) is None
    assert dilation_groups((17,), (2,)) is None
    assert dilation_groups((12, 10), (2, 3)) is None
    t = torch.randn(2, 6, 8, 3, 5)
    sub_layout = GridLayout((3, 2), (1, 2))
    order = DilationGroupOrder((6, 8), (2, 4), sub_layout)
    grouped = order.permute(t.reshape(2, 48, 3, 5), 1).view(16, 6, 3, 5)
    # batch 1, remainders (1, 3): entry 1 * 8 + 1 * 4 + 3
    group = t[1, 1::2, 3::4].reshape(6, 3, 5)
    assert torch.equal(grouped[15], sub_layout.permute(group, 0))
    assert torch.equal(order.unpermute(grouped.view(2, 48, 3, 5), 1), t.reshape(2, 48, 3, 5))
    with pytest.raises(ValueError, match=r"dilation\[1\] must divide grid\[1\] = 8"):
        DilationGroupOrder((6, 8), (2, 3))
    with pytest.raises(ValueError, match="sub_layout.grid must be the sub-grid"):
        DilationGroupOrder((6, 8), (2, 4), GridLayout((6, 8), (2, 2)))


def test_dilation_groups_in_tiled_order_match_float64(monkeypatch):
    """The per-group run with its sub-grid in a tiled order (what CUDA tensors get) on the
    reference backend: output, lse and gradients against the float64 definition."""
    import tessera.natten as natten
    monkeypatch.setattr(natten, "_resolve_layout",
                        lambda layout, grid, kernel, dilation, stride, causal, device, pad=False:
                        natten._auto_layout(grid, kernel, dilation, stride, causal))
    natten._group_plan.cache_clear()           # plans built with the patched rule stay in this test
    try:
        _check_dilation_groups_in_tiled_order(natten)
    finally:
        natten._group_plan.cache_clear()


def _check_dilation_groups_in_tiled_order(natten):
    grid, kernel, dilation, stride, causal = (16, 32), (3, 5), (2, 2), (1, 2), (False, True)
    q = torch.randn(2, *grid, 4, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, *grid, 2, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, *grid, 2, 8, dtype=torch.float64, requires_grad=True)
    sub_layout = natten._auto_layout((8, 16), kernel, (1, 1), stride, causal)
    assert sub_layout is not None and not sub_layout.is_identity
    o, lse = na2d(q, k, v, kernel, dilation, stride, causal, backend="reference", return_lse=True)
    o_ref, lse_ref = dense_reference(q, k, v, kernel, dilation, stride, causal)
    assert rel_err(o, o_ref) < 1e-12 and rel_err(lse, lse_ref) < 1e-12
    grad = torch.randn_like(o)
    for name, g, w in zip("qkv", torch.autograd.grad(o, (q, k, v), grad),
                          torch.autograd.grad(o_ref, (q, k, v), grad)):
        assert rel_err(g, w) < 1e-10, name


def test_bad_arguments():
    q = torch.randn(1, 6, 6, 2, 8)
    with pytest.raises(ValueError, match=r"q must be 5-D"):
        na2d(q[0], q[0], q[0], 3)
    with pytest.raises(ValueError, match=r"kernel\[1\] \* dilation\[1\] must be <= grid\[1\] = 6"):
        na2d(q, q, q, (3, 4), dilation=(1, 2))
    with pytest.raises(ValueError, match=r"stride\[0\] must be <= kernel\[0\]"):
        na2d(q, q, q, 3, stride=(4, 1))
    with pytest.raises(ValueError, match=r"k must have q's token grid"):
        na2d(q, q[:, :5], q, 3)
    with pytest.raises(ValueError, match=r"v must have q's batch size 1, got 2"):
        na2d(q, q, torch.randn(2, 6, 6, 2, 8), 3, layout=(4, 4))
    with pytest.raises(ValueError, match="layout must be"):
        na2d(q, q, q, 3, layout="tiled")
    with pytest.raises(ValueError, match=r"layout\[0\] must be >= 1"):
        na2d(q, q, q, 3, layout=(0, 2))
    with pytest.raises(ValueError, match=r"tile_shape\[1\] must be <= grid\[1\] = 6"):
        na2d(q, q, q, 3, layout=(2, 7))


def test_grid_order_rule(monkeypatch):
    """In-kernel grid-order addressing: on for undilated neighborhoods, off for dilated ones;
    GRID_ORDER_IN_KERNEL forces either."""
    import tessera.natten as natten
    monkeypatch.setattr(natten, "GRID_ORDER_IN_KERNEL", None)
    assert natten.grid_order_in_kernel((1, 1, 1))
    assert not natten.grid_order_in_kernel((1, 2))
    monkeypatch.setattr(natten, "GRID_ORDER_IN_KERNEL", False)
    assert not natten.grid_order_in_kernel((1, 1))
    monkeypatch.setattr(natten, "GRID_ORDER_IN_KERNEL", True)
    assert natten.grid_order_in_kernel((2, 2))


@pytest.mark.parametrize("grid, kernel, tile_shape", [
    ((100, 100), (17, 17), (8, 8)),         # padded to 104 x 104: 9 key tiles per query tile, not 27
    ((21, 30, 52), (5, 13, 13), (2, 8, 4)),  # padded to 22 x 32 x 52
    ((13, 45, 80), (5, 13, 13), (1, 8, 8)),
    ((10000,), (2048,), None),               # 1-D: not padded
    ((44, 37), (13, 11), (8, 8)),            # tiles cost 0.96 of row-major's bands of 1.7 rows
    ((28, 28), (7, 7), (4, 16)),             # 1.25 of row-major's
    ((1000, 5), (5, 5), None),               # 3.2 times row-major's: row-major
])
def test_auto_pads_grids_no_tile_divides(grid, kernel, tile_shape):
    """Under "auto" on CUDA an undilated neighborhood whose grid (2 or 3 axes) no 64-token tile
    shape divides runs in the grid padded up to whole tiles (a ``PaddedNeighborhood`` in grid
    order) where its tiles cost at most ``PAD_MAX_COST`` times the row-major order's; else
    row-major. Dilated calls and other devices are never padded."""
    from tessera.natten import _build_call_plan
    from tessera.patterns.neighborhood import PaddedNeighborhood

    n = len(grid)
    args = (grid, kernel, (1,) * n, (1,) * n, (False,) * n, "auto")
    plan = _build_call_plan(*args, torch.device("cuda"))  # nothing runs on the device here
    if tile_shape is None:
        assert plan.padded is None and plan.tiled is None
    else:
        assert plan.tiled.tile_shape == tile_shape
        assert plan.padded == tuple(-(-g // t) * t for g, t in zip(grid, tile_shape))
        assert type(plan.grid_order.pattern) is PaddedNeighborhood
        assert plan.grid_order.pattern.extent == grid and plan.grid_order.layout.grid == plan.padded
    assert _build_call_plan(*args, torch.device("cpu")).padded is None
    if n > 1:
        dilated = _build_call_plan(grid, kernel, (2,) + (1,) * (n - 1), (1,) * n, (False,) * n, "auto",
                                   torch.device("cuda"))
        assert dilated.padded is None


@pytest.mark.parametrize("grid, kernel, dilation, tile_shape", [
    ((100, 100), (7, 7), (2, 2), (8, 8)),       # groups of 50 x 50, padded to 56 x 56
    ((56, 56), (7, 7), (2, 2), (4, 16)),        # DiNAT's 28 x 28 groups, as the undilated 28 x 28
    ((56, 56), (7, 7), (4, 4), (8, 8)),         # 14 x 14 groups
    ((56, 56), (7, 7), (8, 8), None),           # 7 x 7 groups: too small to tile, row-major
    ((128, 128), (17, 17), (2, 2), None),       # 64 x 64 groups: tiles divide them (the fold)
])
def test_dilated_groups_whose_sub_grid_no_tile_divides_run_padded(grid, kernel, dilation, tile_shape):
    """Under "auto" on CUDA a dilated neighborhood whose dilations divide the grid runs per
    dilation group; where no tile shape divides the groups' sub-grid they are padded exactly as
    the undilated neighborhood over that sub-grid would be (``natten._padded_groups``). Other
    devices never pad."""
    from tessera.natten import _auto_padded_layout, _padded_group_tiles, dilation_groups
    n = len(grid)
    args = (grid, kernel, dilation, (1,) * n, (False,) * n)
    assert _padded_group_tiles(*args, "cuda") == tile_shape
    if tile_shape is not None:
        assert _auto_padded_layout(dilation_groups(grid, dilation), kernel, (1,) * n, (False,) * n
                                   ).tile_shape == tile_shape
    assert _padded_group_tiles(*args, "cpu") is None


def test_auto_layout_of_blocked_attention_is_the_block():
    """Blocked neighborhoods (stride = kernel) take the block as the layout tile: every 64- and
    128-row kernel tile is then one grid box holding queries of one block, and meets only full key
    tiles; other neighborhoods keep the 64-token shape of choose_tile_shape."""
    pytest.importorskip("triton")
    from tessera.kernels.triton import masks
    from tessera.kernels.triton.flash_fwd import grid_box
    from tessera.natten import _resolve_layout, blocked_tile_shape
    from tessera.patterns.layout import Permuted, choose_tile_shape
    from tessera.patterns.neighborhood import Neighborhood

    cuda = torch.device("cuda")  # "auto" tiles only for CUDA tensors; nothing runs on it here
    grid, block = (16, 48, 48), (4, 8, 8)
    pattern = Neighborhood(grid, block, stride=block)
    layout = _resolve_layout("auto", grid, pattern.kernel, pattern.dilation, pattern.stride, pattern.causal, cuda)
    assert layout.tile_shape == block
    assert choose_tile_shape(grid, block, 64, stride=block) == (4, 4, 4)  # its 128-row tiles are no box
    for rows in (64, 128):
        plan = masks.get_plan(Permuted(pattern, layout), pattern.size, pattern.size, rows, rows, 1,
                              torch.device("cpu"))
        assert grid_box(plan, rows) == (rows // 64, 8, 8)
        assert plan.mask_mode == masks.MASK_NONE
    # Not blocked: stride below the kernel, dilation, a causal axis, blocks not tiling the grid;
    # blocks whose 128-row tiles are no box (64 tokens; 8 x 24: a 64-row run cuts a row).
    ones = (1, 1, 1)
    assert blocked_tile_shape(grid, block, ones, (4, 8, 4), (False,) * 3) is None
    assert blocked_tile_shape(grid, block, (1, 2, 1), block, (False,) * 3) is None
    assert blocked_tile_shape(grid, block, ones, block, (True, False, False)) is None
    assert blocked_tile_shape((16, 48, 44), block, ones, block, (False,) * 3) is None
    assert blocked_tile_shape(grid, (2, 4, 8), ones, (2, 4, 8), (False,) * 3) is None
    assert blocked_tile_shape((16, 48), (8, 24), (1, 1), (8, 24), (False, False)) is None
    assert blocked_tile_shape((16, 48), (8, 16), (1, 1), (8, 16), (False, False)) == (8, 16)
    assert blocked_tile_shape((256,), (128,), (1,), (128,), (False,)) == (128,)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op, grid, kernel, dilation, stride, padded", [
    (na2d, (32, 48), (7, 9), (2, 3), 1, False),               # dilation groups, batched
    (na3d, (8, 16, 16), (3, 5, 5), (1, 2, 2), (1, 2, 1), False),
    (na2d, (30, 48), (7, 9), (4, 2), 1, False),               # 30 % 4: one tiled order with dilation
    (na2d, (60, 50), (7, 7), (2, 2), 1, True),                # 30 x 25 groups, padded in (16, 4) tiles
    (na3d, (6, 40, 42), (3, 7, 7), (2, 2, 2), 1, True),       # 3 x 20 x 21 groups in (2, 4, 8) tiles
])
def test_gpu_dilated_against_float64(monkeypatch, op, grid, kernel, dilation, stride, padded, dtype):
    """The Triton kernels through na2d / na3d "auto" against the float64 reference, forward and
    backward (GQA, B = 2; called twice, the second call equal to the first), by the rule of
    tests/kernels/flash_cases.py: the kernel's error at most 2x (forward) or 3x (gradients) the
    reference's own in the input dtype, plus a small floor; the loss takes lse too. ``padded``:
    the groups' sub-grid is padded up to whole tiles (``natten._padded_groups``)."""
    import tessera.natten as natten
    from tessera.natten import dilation_groups
    assert (dilation_groups(grid, dilation) is None) == (grid == (30, 48))
    runs = []
    padded_groups = natten._padded_groups
    monkeypatch.setattr(natten, "_padded_groups", lambda *a: runs.append(1) or padded_groups(*a))
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(2, *grid, 8, 128), (2, *grid, 2, 128), (2, *grid, 2, 128)]
    inputs = [torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for shape in shapes]
    do = torch.randn(shapes[0], device="cuda", dtype=dtype, generator=gen)

    dlse = torch.randn((2, 8, *grid), device="cuda", dtype=torch.float64, generator=gen)

    def run(dt, backend):
        leaves = [t.detach().to(dt).requires_grad_() for t in inputs]
        o, lse = op(*leaves, kernel, dilation, stride, backend=backend, return_lse=True)
        grads = torch.autograd.grad((o, lse), leaves, (do.to(dt), dlse.to(lse.dtype)))
        return [o, lse, *grads]

    first = run(dtype, "triton")
    got = run(dtype, "triton")      # repeat launches: past Triton's binder (launcher.py)
    assert len(runs) == (2 if padded else 0)
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), first, got):
        assert torch.equal(a, b), f"{name}: a repeat call differs from the first"
    same = run(dtype, "reference")
    want = run(torch.float64, "reference")
    assert_error_rule(("o", "lse", "dq", "dk", "dv"), got, same, want, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spec", ["swin:grid=32x32,window=8x8", "maxvit_block:grid=28x28,block=7x7",
                                  "maxvit_grid:grid=28x28,grid_size=7x7", "swin:grid=4x16x16,window=2x8x8"])
@pytest.mark.parametrize("dim", [32, 64])
def test_gpu_attention_with_vision_neighborhoods_against_float64(monkeypatch, spec, dtype, dim):
    """``tessera.attention`` with unshifted Swin windows and MaxViT block and grid attention runs
    natten's path on CUDA (blocked; 7 x 7 blocks; 7 x 7 dilation groups addressed in place by
    the dilation fold, at both head dims' one-tile kernel choices) and meets the float64
    reference by the rule (GQA, B = 2; the loss takes lse too)."""
    import tessera
    import tessera.natten as natten
    from tessera.patterns import parse

    routed, folded = [], []
    original = natten.neighborhood_attention
    monkeypatch.setattr(natten, "neighborhood_attention", lambda *a, **kw: routed.append(1) or original(*a, **kw))
    fold = natten._folded_run
    monkeypatch.setattr(natten, "_folded_run", lambda *a, **kw: folded.append(fold(*a, **kw)) or folded[-1])
    pattern = parse(spec)
    n = math.prod(pattern.grid)
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(2, n, 4, dim), (2, n, 2, dim), (2, n, 2, dim)]
    inputs = [torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for shape in shapes]
    do = torch.randn(shapes[0], device="cuda", dtype=dtype, generator=gen)
    dlse = torch.randn((2, 4, n), device="cuda", dtype=torch.float64, generator=gen)

    def run(dt, backend):
        leaves = [t.detach().to(dt).requires_grad_() for t in inputs]
        o, lse = tessera.attention(*leaves, pattern=pattern, backend=backend, return_lse=True)
        return [o, lse, *torch.autograd.grad((o, lse), leaves, (do.to(dt), dlse.to(lse.dtype)))]

    got = run(dtype, "auto")
    assert routed
    assert bool(folded and folded[0] is not None) == spec.startswith("maxvit_grid"), folded
    assert_error_rule(("o", "lse", "dq", "dk", "dv"), got, run(dtype, "reference"),
                      run(torch.float64, "reference"), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_attention_with_a_neighborhood_pattern_takes_the_padded_path(monkeypatch, dtype):
    """``tessera.attention`` with a ``Neighborhood`` over a grid no tile divides (44 x 37, padded
    to 48 x 40 under "auto") runs natten's padded path on CUDA and meets the float64 reference by
    the rule (GQA, B = 2; the loss takes lse too)."""
    import tessera
    import tessera.natten as natten
    from tessera.patterns.neighborhood import Neighborhood

    runs = []
    padded_run = natten._padded_run
    monkeypatch.setattr(natten, "_padded_run", lambda *a: runs.append(1) or padded_run(*a))
    pattern = Neighborhood((44, 37), (13, 11))
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(2, 44 * 37, 4, 128), (2, 44 * 37, 2, 128), (2, 44 * 37, 2, 128)]
    inputs = [torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for shape in shapes]
    do = torch.randn(shapes[0], device="cuda", dtype=dtype, generator=gen)

    dlse = torch.randn((2, 4, 44 * 37), device="cuda", dtype=torch.float64, generator=gen)

    def run(dt, backend):
        leaves = [t.detach().to(dt).requires_grad_() for t in inputs]
        o, lse = tessera.attention(*leaves, pattern=pattern, backend=backend, return_lse=True)
        return [o, lse, *torch.autograd.grad((o, lse), leaves, (do.to(dt), dlse.to(lse.dtype)))]

    got = run(dtype, "auto")
    assert runs == [1]
    assert_error_rule(("o", "lse", "dq", "dk", "dv"), got, run(dtype, "reference"),
                      run(torch.float64, "reference"), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op, grid, kernel, extra, queries_per_chunk", [
    (na2d, (32, 48), (7, 9), 16, 1024),    # grid order, both Gluon backward kernels on Hopper
    (na3d, (4, 16, 16), (3, 5, 5), 77, 256),     # the extra tokens' queries in 4 chunks
])
def test_gpu_additional_keys_and_values_against_float64(monkeypatch, op, grid, kernel, extra, queries_per_chunk,
                                                        dtype):
    """Neighborhood plus extra tokens on the GPU kernels (merged through lse), o, lse and the
    gradients of q, k, v and the extra keys and values, the loss on o and lse, against the
    float64 reference by the rule (GQA, B = 2)."""
    import tessera.natten_additional as additional
    monkeypatch.setattr(additional, "QUERIES_PER_CHUNK", queries_per_chunk)
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(2, *grid, 8, 128), (2, *grid, 2, 128), (2, *grid, 2, 128), (2, extra, 2, 128), (2, extra, 2, 128)]
    inputs = [torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for shape in shapes]
    do = torch.randn(shapes[0], device="cuda", dtype=dtype, generator=gen)
    dlse = torch.randn((2, 8, *grid), device="cuda", dtype=torch.float64, generator=gen)

    def run(dt, backend):
        leaves = [t.detach().to(dt).requires_grad_() for t in inputs]
        o, lse = op(*leaves[:3], kernel, backend=backend, return_lse=True, additional_keys=leaves[3],
                    additional_values=leaves[4])
        return [o, lse, *torch.autograd.grad((o, lse), leaves, (do.to(dt), dlse.to(lse.dtype)))]

    assert_error_rule(("o", "lse", "dq", "dk", "dv", "dkeys", "dvalues"), run(dtype, "triton"),
                      run(dtype, "reference"), run(torch.float64, "reference"), dtype)


def test_call_plan_is_built_once_per_signature(monkeypatch):
    """Repeated calls with one signature reuse one plan (pattern, layout, grid-order pattern and
    its key); unhashable arguments still work, and the grid-order switch is part of the key."""
    import tessera.natten as natten
    from tessera.kernels.triton.masks import pattern_key
    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    monkeypatch.setattr(natten, "GRID_ORDER_IN_KERNEL", None)
    first = natten._call_plan((64, 64), 17, 1, 1, False, "auto", cuda)
    assert natten._call_plan((64, 64), 17, 1, 1, False, "auto", cuda) is first
    assert first.grid_order is not None and first.grid_order_key == pattern_key(first.grid_order)
    listed = natten._call_plan((64, 64), [17, 17], 1, 1, False, "auto", cuda)
    assert repr(listed.grid_order) == repr(first.grid_order)
    monkeypatch.setattr(natten, "GRID_ORDER_IN_KERNEL", False)
    off = natten._call_plan((64, 64), 17, 1, 1, False, "auto", cuda)
    assert off.grid_order is None and off.tiled is first.tiled
    assert natten._call_plan((64, 64), 17, 2, 1, False, "auto", cuda).per_dilation_group
    assert natten._call_plan((64, 64), 17, 1, 1, False, "auto", torch.device("cpu")).tiled is None
    # Equal but invalid values (17.0 == 17, 0 == False) still get their errors after a cached call.
    with pytest.raises(TypeError, match="kernel must be an int"):
        natten._call_plan((64, 64), 17.0, 1, 1, False, "auto", cuda)
    with pytest.raises(TypeError, match="causal must be a bool"):
        natten._call_plan((64, 64), 17, 1, 1, 0, "auto", cuda)


def test_repeat_calls_run_the_backends_prepared_call(monkeypatch):
    """A grid-order (or folded) call whose signature ran before goes straight to the backend's
    prepared run: no call building, no ``supports``. A new stride, scale, return_lse or a scale of
    another type is a new signature, and a bad argument still gets its error."""
    import tessera.natten as natten
    from tessera.kernels import registry

    log = []

    def run(call):
        log.append("run")
        return torch.zeros_like(call.q), torch.zeros(call.q.shape[0], call.q.shape[2], call.q.shape[1])

    def prepare(call):
        log.append("prepare")

        def prepared(q, k, v):
            log.append(("prepared", q.data_ptr()))
            return torch.zeros_like(q), torch.zeros(q.shape[0], q.shape[2], q.shape[1])
        return prepared

    def supports(call):
        log.append("supports")
        return None

    monkeypatch.setitem(registry._BACKENDS, "triton", registry.Backend("triton", run, supports, prepare))
    monkeypatch.setattr(natten, "_PREPARED", {})
    monkeypatch.setattr(natten, "GRID_ORDER_IN_KERNEL", True)
    inputs = [torch.randn(1, 8, 8, 2, 16) for _ in range(3)]
    na2d(*inputs, 3, layout=(4, 4), backend="triton")
    assert log == ["supports", "prepare", ("prepared", inputs[0].data_ptr())]
    fresh = [torch.randn(1, 8, 8, 2, 16) for _ in range(3)]
    log.clear()
    o = na2d(*fresh, 3, layout=(4, 4), backend="triton")
    assert log == [("prepared", fresh[0].data_ptr())] and o.shape == (1, 8, 8, 2, 16)
    for variant in (dict(scale=0.5), dict(return_lse=True)):
        log.clear()
        na2d(*fresh, 3, layout=(4, 4), backend="triton", **variant)
        assert log[:2] == ["supports", "prepare"], variant
    log.clear()
    strided = [torch.randn(1, 8, 8, 4, 16)[:, :, :, ::2] for _ in range(3)]   # other head strides
    na2d(*strided, 3, layout=(4, 4), backend="triton")
    assert log[:2] == ["supports", "prepare"]
    na2d(*fresh, 3, layout=(4, 4), backend="triton", scale=1.0)
    with pytest.raises(TypeError, match="scale must be a real number"):
        na2d(*fresh, 3, layout=(4, 4), backend="triton", scale=True)
    # Dilation groups folded in-kernel: the same, per fold.
    monkeypatch.setattr(natten, "_resolve_layout",
                        lambda layout, grid, kernel, dilation, stride, causal, device, pad=False:
                        natten._auto_layout(grid, kernel, dilation, stride, causal))
    natten._group_plan.cache_clear()
    try:
        big = [torch.randn(1, 16, 32, 2, 16) for _ in range(3)]
        log.clear()
        na2d(*big, 3, dilation=2, backend="triton")
        assert log[:2] == ["supports", "prepare"]
        log.clear()
        na2d(*big, 3, dilation=2, backend="triton")
        assert log == [("prepared", big[0].data_ptr())]
    finally:
        natten._group_plan.cache_clear()


def test_attention_routes_plain_neighborhoods_through_natten(monkeypatch):
    """``tessera.attention`` hands a plain ``Neighborhood`` pattern (object or spec string) to
    ``natten.neighborhood_attention`` where the Triton kernels take the call, in the call's own
    arguments (grid-shaped views, kernel, dilation, stride, per-axis causality, scale), and keeps
    every other call (another backend, the causal flag, bias, softcap, sinks, sigmoid scores,
    determinism, composed patterns) on its usual path."""
    import tessera
    import tessera.natten as natten
    from tessera.patterns.neighborhood import Neighborhood

    calls = []
    original = natten.neighborhood_attention

    def spy(q, k, v, kernel, dilation, stride, causal, *, na_dim, backend, scale, return_lse):
        calls.append((tuple(q.shape), kernel, dilation, stride, causal, na_dim, backend, scale))
        return original(q, k, v, kernel, dilation, stride, causal, na_dim=na_dim, backend="reference",
                        scale=scale, return_lse=return_lse)
    monkeypatch.setattr(natten, "neighborhood_attention", spy)
    pattern = Neighborhood((6, 8), (3, 5), dilation=(2, 1), stride=(1, 2), causal=(False, True))
    q = torch.randn(2, 48, 4, 16, dtype=torch.float64)
    k, v = torch.randn(2, 48, 2, 16, dtype=torch.float64), torch.randn(2, 48, 2, 8, dtype=torch.float64)
    o, lse = tessera.attention(q, k, v, pattern=pattern, backend="triton", scale=0.3, return_lse=True)
    assert calls == [((2, 6, 8, 4, 16), (3, 5), (2, 1), (1, 2), (False, True), 2, "triton", 0.3)]
    want, want_lse = tessera.attention(q, k, v, pattern=pattern, backend="reference", scale=0.3, return_lse=True)
    # natten's reference path runs the dilation groups apart: the same sums in another order.
    assert torch.allclose(o, want, rtol=0, atol=1e-12) and torch.allclose(lse, want_lse, rtol=0, atol=1e-12)
    o_bhsd = tessera.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), pattern=pattern,
                               backend="triton", scale=0.3, layout="bhsd")
    assert torch.equal(o_bhsd, o.transpose(1, 2)) and len(calls) == 2
    tessera.attention(q, k, v, pattern="neighborhood:grid=6x8,kernel=3x5", backend="triton")
    assert calls[-1][1:5] == ((3, 5), (1, 1), (1, 1), (False, False)) and len(calls) == 3
    for kwargs in (dict(backend="reference"), dict(backend="auto"), dict(causal=True, backend="reference"),
                   dict(softcap=5.0, backend="reference"), dict(bias=torch.zeros(1, 1, 48, 48, dtype=torch.float64),
                                                                backend="reference"),
                   dict(sinks=torch.zeros(4, dtype=torch.float64), backend="reference"),
                   dict(score="sigmoid", backend="reference"), dict(deterministic=True, backend="reference")):
        tessera.attention(q, k, v, pattern=pattern, **kwargs)
    tessera.attention(q, k, v, pattern=pattern | Neighborhood((6, 8), 1), backend="reference")
    assert len(calls) == 3


def test_attention_routes_vision_neighborhoods_through_natten(monkeypatch):
    """Unshifted Swin windows and MaxViT block attention go to ``natten.neighborhood_attention``
    as their equivalent neighborhoods (blocked), MaxViT grid attention as its dilated
    neighborhood (as block attention on its tokens reordered into blocks above D = 64 or without
    the dilation fold), and give the reference's result there; shifted Swin windows keep the usual path."""
    import tessera
    import tessera.natten as natten
    from tessera.patterns.vision import MaxViTBlock, MaxViTGrid, Swin

    calls = []
    original = natten.neighborhood_attention

    def spy(q, k, v, kernel, dilation, stride, causal, *, na_dim, backend, scale, return_lse):
        calls.append((tuple(q.shape), kernel, dilation, stride, causal))
        return original(q, k, v, kernel, dilation, stride, causal, na_dim=na_dim, backend="reference",
                        scale=scale, return_lse=return_lse)
    monkeypatch.setattr(natten, "neighborhood_attention", spy)
    q = torch.randn(2, 48, 4, 16, dtype=torch.float64)
    k, v = torch.randn(2, 48, 2, 16, dtype=torch.float64), torch.randn(2, 48, 2, 8, dtype=torch.float64)
    expected_calls = {
        Swin((6, 8), (3, 4)): ((2, 6, 8, 4, 16), (3, 4), (1, 1), (3, 4), (False, False)),
        MaxViTBlock((6, 8), 2): ((2, 6, 8, 4, 16), (2, 2), (1, 1), (2, 2), (False, False)),
        MaxViTGrid((6, 8), 2): ((2, 6, 8, 4, 16), (2, 2), (3, 4), (1, 1), (False, False)),   # dilated
        "swin:grid=6x8,window=3x4": ((2, 6, 8, 4, 16), (3, 4), (1, 1), (3, 4), (False, False)),
    }
    for pattern, call in expected_calls.items():
        calls.clear()
        o, lse = tessera.attention(q, k, v, pattern=pattern, backend="triton", return_lse=True)
        assert calls == [call], pattern
        want, want_lse = tessera.attention(q, k, v, pattern=pattern, backend="reference", return_lse=True)
        assert torch.allclose(o, want, rtol=0, atol=1e-12) and torch.allclose(lse, want_lse, rtol=0, atol=1e-12)
    # Above MAXVIT_FOLD_MAX_HEAD_DIM, and without natten's dilation fold, MaxViT grid attention
    # runs as blocks of swapped tokens.
    wide = [torch.randn(2, 48, 2, 128, dtype=torch.float64) for _ in range(3)]
    calls.clear()
    tessera.attention(*wide, pattern=MaxViTGrid((6, 8), 2), backend="triton")
    assert calls == [((2, 6, 8, 2, 128), (2, 2), (1, 1), (2, 2), (False, False))]
    monkeypatch.setattr(natten, "DILATION_FOLD_IN_KERNEL", False)
    calls.clear()
    o = tessera.attention(q, k, v, pattern=MaxViTGrid((6, 8), 2), backend="triton")
    assert calls == [((2, 6, 8, 4, 16), (2, 2), (1, 1), (2, 2), (False, False))]
    assert torch.allclose(o, tessera.attention(q, k, v, pattern=MaxViTGrid((6, 8), 2), backend="reference"),
                          rtol=0, atol=1e-12)
    calls.clear()
    tessera.attention(q, k, v, pattern=Swin((6, 8), (2, 4), shifted=True), backend="reference")
    tessera.attention(q, k, v, pattern=Swin((6, 8), (3, 4)), causal=True, backend="reference")
    assert calls == []
