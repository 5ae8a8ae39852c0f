"""The Gluon tiled-neighborhood forward (``tessera.kernels.gluon.na_forward``) against the float64
reference on the GPU (Hopper only; Gluon does not run in the interpreter), by the rule of
``flash_cases.py``: o and lse at most 2x the reference's own error in the input dtype, plus a
small floor. Also its scope checks (``supports``) and argument errors, which need no GPU."""

import math

import pytest
import torch

from conftest import assert_error_rule
from tessera.kernels.triton import masks
from tessera.kernels.triton.flash_fwd import grid_box
from tessera.natten import _auto_layout, na1d, na2d, na3d
from tessera.patterns import Neighborhood, Permuted

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


# The kernel tests' neighborhoods: 2-D at both head dims, 3-D, and blocked (full tiles, no mask).
KERNEL_CASES = [
    (na2d, (32, 48), (7, 9), 1, 128),
    (na2d, (64, 64), (17, 17), 1, 64),
    (na3d, (8, 16, 16), (3, 5, 5), 1, 128),
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8), 128),     # blocked: full tiles only, no mask
]


def _plan(grid, kernel, heads, device, stride=1, block_m=64, block_n=64):
    rule = Neighborhood(grid, kernel, stride=stride)
    layout = _auto_layout(rule.grid, rule.kernel, rule.dilation, rule.stride, rule.causal)
    seq = 1
    for g in grid:
        seq *= g
    return masks.get_plan(Permuted(rule, layout), seq, seq, block_m, block_n, heads, device)


def test_scope_and_arguments_without_a_gpu():
    from tessera.kernels.gluon import na_forward as gluon_forward
    plan = _plan((32, 32), (7, 7), 2, torch.device("cpu"))
    q = torch.empty(1, 1024, 2, 128, dtype=torch.bfloat16)
    assert gluon_forward.supports(q, q, q, plan)
    assert not gluon_forward.supports(q.float(), q.float(), q.float(), plan)           # 16-bit only
    assert not gluon_forward.supports(q[..., :96], q[..., :96], q[..., :96], plan)    # D in {32, 64, 128}
    assert gluon_forward.supports(q[..., :32], q[..., :32], q[..., :32], plan)
    # Same dtype, shape and strides, base 2 bytes past a 16-byte boundary: no bulk copies
    # (the kept answers are keyed by alignment too).
    shifted = torch.empty(q.numel() + 1, dtype=torch.bfloat16)[1:].view(q.shape)
    assert gluon_forward.supports(q, q, q, plan) and not gluon_forward.supports(shifted, q, q, plan)
    # Row-major order on a 10 x 12 grid: 64 positions are no grid box (no bulk copies).
    ragged = masks.get_plan(Neighborhood((10, 12), 3), 120, 120, 64, 64, 2, torch.device("cpu"))
    small = torch.empty(1, 120, 2, 128, dtype=torch.bfloat16)
    assert not gluon_forward.supports(small, small, small, ragged)
    with pytest.raises(ValueError, match="num_buffers"):
        gluon_forward.na_forward(q, q, q, plan, scale=0.1, num_buffers=2, overlap=True)
    with pytest.raises(ValueError, match="overlap"):
        gluon_forward.na_forward(q, q, q, plan, scale=0.1, overlap=False, specialized=True)
    with pytest.raises(ValueError, match="num_buffers"):
        gluon_forward.na_forward(q, q, q, plan, scale=0.1, num_buffers=0, overlap=False)
    with pytest.raises(ValueError, match="v_buffers"):
        gluon_forward.na_forward(q, q, q, plan, scale=0.1, num_buffers=2, v_buffers=3, overlap=False)
    with pytest.raises(ValueError, match="v_buffers"):
        gluon_forward.na_forward(q, q, q, plan, scale=0.1, num_buffers=3, v_buffers=1, overlap=True)
    blocked = _plan((8, 16, 16), (4, 8, 8), 2, torch.device("cpu"), (4, 8, 8), block_m=128)
    cube = torch.empty(1, 2048, 2, 128, dtype=torch.bfloat16)
    assert gluon_forward.supports(cube, cube, cube, blocked)
    with pytest.raises(ValueError, match="128-row"):
        gluon_forward.na_forward(cube, cube, cube, blocked, scale=0.1, overlap=True)
    with pytest.raises(ValueError, match="max_registers"):
        gluon_forward.na_forward(q, q, q, plan, scale=0.1, specialized=True, max_registers=168)
    with pytest.raises(ValueError, match="scope"):
        gluon_forward.na_forward(q.float(), q.float(), q.float(), plan, scale=0.1)
    with pytest.raises(ValueError, match="lazy_rescale"):
        gluon_forward.na_forward(q, q, q, plan, scale=0.1, overlap=False, lazy_rescale=-1.0)
    with pytest.raises(ValueError, match="lazy_rescale"):
        gluon_forward.na_forward(q, q, q, plan, scale=0.1, overlap=False, lazy_rescale=20.0)
    with pytest.raises(ValueError, match="lazy_rescale"):
        gluon_forward.na_forward(q, q, q, plan, scale=0.1, lazy_rescale=8.0)
    for bad in (dict(num_buffers=2, v_buffers=2), dict(num_buffers=1, v_buffers=1)):
        with pytest.raises(ValueError, match="defer_pv"):
            gluon_forward.na_forward(q, q, q, plan, scale=0.1, overlap=False, defer_pv=True, **bad)
    with pytest.raises(ValueError, match="v_buffers"):
        gluon_forward.na_forward(q, q, q, plan, scale=0.1, overlap=False, num_buffers=1, v_buffers=2)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("overlap, buffers, v_buffers, specialized", [
    (True, 3, None, False), (True, 4, None, False), (True, 3, None, True), (True, 4, None, True),
    (False, 2, None, False), (False, 2, 1, False), (False, 1, 1, False), (False, 3, 1, False)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op, grid, kernel, stride, dim", KERNEL_CASES)
def test_gluon_forward_against_float64(op, grid, kernel, stride, dim, dtype, overlap, buffers,
                                       v_buffers, specialized):
    _check_forward(op, grid, kernel, stride, dim, dtype, 64, num_buffers=buffers,
                   v_buffers=v_buffers, overlap=overlap, specialized=specialized)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("buffers, v_buffers, max_registers", [(1, 1, None), (2, 1, 128), (2, 1, None),
                                                              (2, 2, 128), (3, 2, 128)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [128, 64])
def test_gluon_forward_on_128_row_tiles_against_float64(dim, dtype, buffers, v_buffers, max_registers):
    """Blocked attention on 128 x 64 tiles (two warpgroups per program), sequential loop."""
    _check_forward(na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8), dim, dtype, 128, num_buffers=buffers,
                   v_buffers=v_buffers, overlap=False, max_registers=max_registers)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("buffers, v_buffers, defer_pv", [(2, 1, False), (1, 2, True)])
@pytest.mark.parametrize("q_scale", [1.0, 8.0])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op, grid, kernel, stride", [
    (na2d, (32, 48), (7, 9), 1),
    (na3d, (8, 16, 16), (3, 5, 5), 1),
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8)),           # blocked: unmasked tiles
])
def test_gluon_forward_lazy_rescale_against_float64(op, grid, kernel, stride, dtype, q_scale,
                                                    buffers, v_buffers, defer_pv):
    """``lazy_rescale`` (a row's running max moved only past a threshold, the output rescaled
    only in warps where some row moved): with q scaled by 8 the logits spread over tens of log2
    units, so rows move in the middle of the tile loop too, not only at its first tile."""
    _check_forward(op, grid, kernel, stride, 128, dtype, 64, q_scale=q_scale, num_buffers=buffers,
                   v_buffers=v_buffers, overlap=False, lazy_rescale=8.0, defer_pv=defer_pv)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op, grid, kernel, stride, dim", KERNEL_CASES)
def test_gluon_forward_deferred_pv_against_float64(op, grid, kernel, stride, dim, dtype):
    """``defer_pv``: each P @ V left in flight under the next tile's penalty and QK^T."""
    _check_forward(op, grid, kernel, stride, dim, dtype, 64, num_buffers=1, v_buffers=2,
                   overlap=False, defer_pv=True)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("defer_pv", [False, True])
@pytest.mark.parametrize("op, grid, kernel, stride", [
    (na2d, (32, 48), (7, 9), 1),
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8)),           # unmasked tiles: max over unscaled logits
])
def test_gluon_forward_negative_scale_against_float64(op, grid, kernel, stride, defer_pv):
    """A negative ``scale`` (the row max is then not the scaled max of the unscaled logits)."""
    _check_forward(op, grid, kernel, stride, 128, torch.bfloat16, 64, scale=-128 ** -0.5,
                   num_buffers=1 if defer_pv else 2, v_buffers=2 if defer_pv else 1,
                   overlap=False, defer_pv=defer_pv)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("variant", [dict(num_buffers=2, v_buffers=2, lazy_rescale=8.0),
                                     dict(num_buffers=1, v_buffers=2, defer_pv=True, lazy_rescale=8.0)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op, grid, kernel, stride", [
    (na2d, (32, 48), (7, 9), 1),
    (na3d, (8, 16, 16), (3, 5, 5), 1),
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8)),           # blocked: full tiles only, no mask
])
def test_gluon_forward_on_32_key_tiles_against_float64(op, grid, kernel, stride, dtype, variant):
    """64 x 32 tiles (half the K/V shared memory of 64 x 64: four programs per SM)."""
    _check_forward(op, grid, kernel, stride, 128, dtype, 64, block_n=32, overlap=False, **variant)


# Key boxes: (grid, kernel, stride, causal, query tile shape or None for natten's, dim).
BOX_CASES = [
    ((8, 24, 24), (5, 13, 13), 1, False, None, 128),      # half boxes along both axes
    ((8, 24, 24), (5, 13, 13), 1, False, None, 64),
    ((32, 48), (7, 9), 1, False, None, 128),
    ((24, 40), (11, 5), (2, 1), False, None, 128),        # stride groups
    ((32, 32), (9, 7), 1, (True, False), None, 64),       # one causal axis
    ((8, 16, 16), (3, 5, 5), 1, False, (2, 4, 8), 128),   # query tiles two frames deep
    ((8, 24, 24), (5, 11, 11), 1, False, (2, 8, 4), 64),  # the tiles key_boxes.box_plan takes here
    ((8, 24, 24), (5, 11, 11), 1, False, (2, 8, 4), 32),  # head dim 32 (Swin, DiNAT)
    ((32, 48), (7, 9), 1, False, None, 32),
]


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("lazy_rescale, q_scale", [(8.0, 1.0), (8.0, 8.0), (0.0, 1.0)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grid, kernel, stride, causal, tile_shape, dim", BOX_CASES)
def test_gluon_forward_on_key_boxes_against_float64(grid, kernel, stride, causal, tile_shape, dim,
                                                    dtype, lazy_rescale, q_scale):
    """``na_forward_boxes`` (each query tile over its full and half key boxes) against the
    float64 reference (GQA, B = 2), by the rule of ``_check_forward``."""
    from tessera.kernels.gluon import key_boxes, na_forward_boxes
    from tessera.patterns.layout import GridLayout
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, kv_heads = 2, 4, 2
    q, k, v = (torch.randn(batch, *grid, h, dim, device="cuda", dtype=dtype, generator=gen)
               for h in (heads, kv_heads, kv_heads))
    q = (q * q_scale).to(dtype)
    seq = q[0, ..., 0, 0].numel()
    rule = Neighborhood(grid, kernel, stride=stride, causal=causal)
    layout = (GridLayout(grid, tile_shape) if tile_shape is not None
              else _auto_layout(rule.grid, rule.kernel, rule.dilation, rule.stride, rule.causal))
    plan = masks.get_plan(Permuted(rule, layout), seq, seq, 64, 64, heads, q.device)
    flat = [t.reshape(batch, seq, t.shape[-2], dim) for t in (q, k, v)]
    assert na_forward_boxes.boxes_supported(*flat, plan)
    assert key_boxes.key_boxes(plan).boxes_32 > 0 or len(grid) == 2
    scale = dim ** -0.5
    o, lse = na_forward_boxes.na_forward_boxes(*flat, plan, scale=scale, lazy_rescale=lazy_rescale)
    again, _ = na_forward_boxes.na_forward_boxes(*flat, plan, scale=scale, lazy_rescale=lazy_rescale)
    assert torch.equal(o, again)       # the bound launch's repeat
    got = [o.reshape(q.shape), lse.reshape(batch, heads, *grid)]
    op = na3d if len(grid) == 3 else na2d
    same = op(q, k, v, kernel, stride=stride, is_causal=causal, backend="reference", return_lse=True,
              scale=scale)
    want = op(*(t.double() for t in (q, k, v)), kernel, stride=stride, is_causal=causal,
              backend="reference", return_lse=True, scale=scale)
    assert_error_rule(("o", "lse"), got, same, want, dtype)


def test_key_boxes_scope_and_arguments_without_a_gpu():
    from tessera.kernels.gluon import na_forward_boxes
    plan = _plan((32, 32), (7, 7), 2, torch.device("cpu"))
    q = torch.empty(1, 1024, 2, 128, dtype=torch.bfloat16)
    assert na_forward_boxes.boxes_supported(q, q, q, plan)
    assert not na_forward_boxes.boxes_supported(q.float(), q.float(), q.float(), plan)
    rows_128 = _plan((32, 32), (7, 7), 2, torch.device("cpu"), block_m=128)
    assert not na_forward_boxes.boxes_supported(q, q, q, rows_128)
    with pytest.raises(ValueError, match="lazy_rescale"):
        na_forward_boxes.na_forward_boxes(q, q, q, plan, scale=0.1, lazy_rescale=16.0)
    with pytest.raises(ValueError, match="scope"):
        na_forward_boxes.na_forward_boxes(q, q, q, rows_128, scale=0.1)


def _check_forward(op, grid, kernel, stride, dim, dtype, block_m, q_scale=1.0, scale=None,
                   block_n=64, forward=None, **forward_args):
    """``forward(**forward_args)`` (default ``na_forward``) on the plan at ``block_m`` x
    ``block_n`` tiles (GQA, B = 2) against the float64 reference: o and lse at most 2x the
    reference's own error in the input dtype, plus a small floor. q is standard normal times
    ``q_scale``; ``scale`` defaults to ``dim ** -0.5``."""
    from tessera.kernels.gluon import na_forward as gluon_forward
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, kv_heads = 2, 4, 2
    q, k, v = (torch.randn(batch, *grid, h, dim, device="cuda", dtype=dtype, generator=gen)
               for h in (heads, kv_heads, kv_heads))
    q = (q * q_scale).to(dtype)
    seq = q[0, ..., 0, 0].numel()
    plan = _plan(grid, kernel, heads, q.device, stride, block_m, block_n)
    flat = [t.reshape(batch, seq, t.shape[-2], dim) for t in (q, k, v)]
    assert gluon_forward.supports(*flat, plan)
    scale = dim ** -0.5 if scale is None else scale
    o, lse = (forward or gluon_forward.na_forward)(*flat, plan, scale=scale, **forward_args)
    got = [o.reshape(q.shape), lse.reshape(batch, heads, *grid)]
    same = op(q, k, v, kernel, stride=stride, backend="reference", return_lse=True, scale=scale)
    want = op(*(t.double() for t in (q, k, v)), kernel, stride=stride, backend="reference",
              return_lse=True, scale=scale)
    assert_error_rule(("o", "lse"), got, same, want, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("buffers, membership_word", [(2, False), (4, False), (3, True)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op, grid, kernel, stride, dim", KERNEL_CASES)
def test_gluon_forward_with_a_shared_key_stream_against_float64(op, grid, kernel, stride, dim, dtype,
                                                                buffers, membership_word):
    """``na_forward_shared`` (three query tiles per program over the union of their key lists;
    64 x 64 over 64 x 64 tiles leaves the last group one query tile), its consumers' bits read per
    entry or gathered once (``membership_word``)."""
    from tessera.kernels.gluon.na_forward_shared import na_forward_shared
    _check_forward(op, grid, kernel, stride, dim, dtype, 64, forward=na_forward_shared,
                   num_buffers=buffers, membership_word=membership_word)


def test_shared_key_lists_hold_each_listed_pair_once():
    from tessera.kernels.gluon.na_forward_shared import QUERIES, shared_lists
    plan = _plan((40, 48), (7, 9), 2, torch.device("cpu"))
    count, index, bits = shared_lists(plan, torch.device("cpu"))
    listed = set()
    rows = plan.rows
    for r in range(plan.n_q_tiles):
        for tiles, width in ((rows.part_index, rows.part_count), (rows.full_index, rows.full_count)):
            listed |= {(r, t) for t in tiles.reshape(plan.n_q_tiles, -1)[r, :width.reshape(-1)[r]].tolist()}
    assert count.numel() == -(-plan.n_q_tiles // QUERIES)
    held = set()
    for g in range(count.numel()):
        tiles = index[g, :count[g]].tolist()
        assert tiles == sorted(set(tiles))
        for t, mark in zip(tiles, bits[g, :count[g]].tolist()):
            assert 0 < mark < 2 ** QUERIES
            held |= {(g * QUERIES + w, t) for w in range(QUERIES) if mark >> w & 1}
    assert held == listed


def test_shared_key_stream_arguments_without_a_gpu():
    from tessera.kernels.gluon.na_forward_shared import na_forward_shared, shared_supports
    plan = _plan((32, 32), (7, 7), 2, torch.device("cpu"))
    q = torch.empty(1, 1024, 2, 128, dtype=torch.bfloat16)
    assert shared_supports(q, q, q, plan)
    assert not shared_supports(q.float(), q.float(), q.float(), plan)
    with pytest.raises(ValueError, match="num_buffers"):
        na_forward_shared(q, q, q, plan, scale=0.1, num_buffers=1)
    with pytest.raises(ValueError, match="consumer_registers"):
        na_forward_shared(q, q, q, plan, scale=0.1, consumer_registers=170)
    with pytest.raises(ValueError, match="scope"):
        na_forward_shared(q.float(), q.float(), q.float(), plan, scale=0.1)


# Head dim 32 (Swin's and DiNAT's heads) through the variants the routes take: 2-D, 3-D, blocked.
HEAD_DIM_32_CASES = [
    (na2d, (32, 48), (7, 9), 1),
    (na3d, (8, 16, 16), (3, 5, 5), 1),
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8)),
]


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op, grid, kernel, stride", HEAD_DIM_32_CASES)
@pytest.mark.parametrize("gluon_kernel", ["forward", "dq", "dkdv"])
def test_gluon_kernels_at_head_dim_32_against_float64(gluon_kernel, op, grid, kernel, stride, dtype):
    """``na_forward`` (the masked and the full-tile route variants), ``na_dq`` and ``na_dkdv``
    (the route's ring depth) at D = 32 against the float64 reference (GQA, B = 2)."""
    from tessera.kernels.triton import backward_route, forward_route
    if gluon_kernel == "forward":
        variant = forward_route.GLUON_MASKED if stride == 1 else forward_route.GLUON_VARIANT
        _check_forward(op, grid, kernel, stride, 32, dtype, 64, **variant)
    elif gluon_kernel == "dq":
        from tessera.kernels.gluon.na_dq import na_dq
        _check_gradients(lambda *args, scale: [na_dq(*args, scale=scale)], ("dq",), op, grid, kernel,
                         stride, 32, dtype)
    else:
        from tessera.kernels.gluon.na_dkdv import na_dkdv
        variant = backward_route.dkdv_variant(32, stride == 1)
        _check_gradients(lambda *args, scale: na_dkdv(*args, scale=scale, **variant),
                         ("dk", "dv"), op, grid, kernel, stride, 32, dtype)


def _fold_plan(grid, kernel, dilation, heads, device):
    """``(plan, fold)``: one dilation group's plan (its sub-grid in the tiled order natten picks
    on a GPU, 64 x 64 tiles) and the ``DilationFold`` that runs every group."""
    from tessera.kernels.triton.masks import DilationFold
    from tessera.natten import _group_plan
    dilations = (dilation,) * len(grid)
    pattern, _order, _key = _group_plan(grid, kernel, dilations, (1,) * len(grid),
                                        (False,) * len(grid), "cuda")
    fold = DilationFold(grid, dilations)
    seq = 1
    for g in grid:
        seq *= g
    return masks.get_plan(pattern, seq // fold.groups, seq // fold.groups, 64, 64, heads, device), fold


def test_fold_scope_without_a_gpu():
    """Under a dilation fold the forward takes 64-row plans whose tiles have depth one along
    grid axis 0, on tensors whose heads are contiguous with D."""
    from tessera.kernels.gluon import na_forward as gluon_forward
    plan, fold = _fold_plan((32, 48), (7, 9), 2, 2, torch.device("cpu"))
    q = torch.empty(1, 32 * 48, 2, 128, dtype=torch.bfloat16)
    assert gluon_forward.supports(q, q, q, plan, fold)
    spread = torch.empty(1, 32 * 48, 2, 256, dtype=torch.bfloat16)[..., :128]    # heads apart
    assert not gluon_forward.supports(spread, spread, spread, plan, fold)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("variant", [dict(num_buffers=2, v_buffers=1),
                                     dict(num_buffers=1, v_buffers=2, defer_pv=True, lazy_rescale=8.0)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grid, kernel, dilation", [((32, 48), (7, 9), 2), ((48, 48), (5, 7), 3)])
def test_gluon_forward_dilation_fold_against_float64(grid, kernel, dilation, dtype, variant):
    """A dilated neighborhood through a dilation fold (every group's tiles, the whole grid's
    tensors; GQA, B = 2) against the float64 reference, o and lse by the rule."""
    from tessera.kernels.gluon import na_forward as gluon_forward
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, kv_heads, dim = 2, 4, 2, 128
    q, k, v = (torch.randn(batch, *grid, h, dim, device="cuda", dtype=dtype, generator=gen)
               for h in (heads, kv_heads, kv_heads))
    plan, fold = _fold_plan(grid, kernel, dilation, heads, q.device)
    seq = q[0, ..., 0, 0].numel()
    flat = [t.reshape(batch, seq, t.shape[-2], dim) for t in (q, k, v)]
    assert gluon_forward.supports(*flat, plan, fold)
    o, lse = gluon_forward.na_forward(*flat, plan, scale=dim ** -0.5, overlap=False, fold=fold,
                                      **variant)
    got = [o.reshape(q.shape), lse.reshape(batch, heads, *grid)]
    same = na2d(q, k, v, kernel, dilation, backend="reference", return_lse=True)
    want = na2d(*(t.double() for t in (q, k, v)), kernel, dilation, backend="reference",
                return_lse=True)
    assert_error_rule(("o", "lse"), got, same, want, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("dim", [128, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grid, kernel, dilation", [((32, 48), (7, 9), 2), ((48, 48), (5, 7), 3)])
@pytest.mark.parametrize("gradient", ["dq", "dkdv"])
def test_gluon_backward_dilation_fold_against_float64(gradient, grid, kernel, dilation, dtype, dim):
    """``na_dq`` and ``na_dkdv`` (the route's variant at ``dim``) through a dilation fold (every
    group's tiles, the whole grid's tensors, lse and delta; GQA, B = 2) against the float64
    reference's dq, or dk and dv, by the rule."""
    from tessera.kernels.gluon.na_dkdv import na_dkdv
    from tessera.kernels.gluon.na_dq import na_dq
    from tessera.kernels.triton import backward_route
    from tessera.kernels.triton.row_dot import row_dot
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, kv_heads = 2, 4, 2
    q, k, v, do = (torch.randn(batch, *grid, h, dim, device="cuda", dtype=dtype, generator=gen)
                   for h in (heads, kv_heads, kv_heads, heads))
    plan, fold = _fold_plan(grid, kernel, dilation, heads, q.device)
    seq = q[0, ..., 0, 0].numel()
    o, lse = na2d(q, k, v, kernel, dilation, backend="triton", return_lse=True)
    flat = [t.reshape(batch, seq, t.shape[-2], dim) for t in (q, k, v, do, o)]
    stats = (lse.reshape(batch, heads, seq).contiguous(), row_dot(flat[4], flat[3]))
    if gradient == "dq":
        names = ("dq",)
        got = [na_dq(*flat[:4], *stats, plan, scale=dim ** -0.5, fold=fold, **backward_route.DQ_VARIANT)]
    else:
        names = ("dk", "dv")
        got = list(na_dkdv(*flat[:4], *stats, plan, scale=dim ** -0.5, fold=fold,
                           **backward_route.dkdv_variant(dim, True)))

    reference_grads = _reference_gradients(
        lambda *leaves, backend: na2d(*leaves, kernel, dilation, backend=backend), q, k, v, do, names, seq)
    assert_error_rule(names, got, reference_grads(dtype), reference_grads(torch.float64), dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dilated_route_through_natten_against_float64(monkeypatch, dtype):
    """na2d with dilation 2 on the GPU runs its forward, dq and dk/dv through the Gluon kernels
    under a dilation fold (spies see the fold); a repeat call equals the first, and forward and
    backward (GQA, B = 2) meet the float64 reference by the rule."""
    from tessera.kernels.gluon import na_dkdv, na_dq
    from tessera.kernels.gluon import na_forward as gluon_forward
    folds = {"forward": [], "dq": [], "dkdv": []}

    def spy(name, original):
        def run(*args, **kwargs):
            folds[name].append(kwargs.get("fold"))
            return original(*args, **kwargs)
        return run
    monkeypatch.setattr(gluon_forward, "na_forward", spy("forward", gluon_forward.na_forward))
    monkeypatch.setattr(na_dq, "na_dq", spy("dq", na_dq.na_dq))
    monkeypatch.setattr(na_dkdv, "na_dkdv", spy("dkdv", na_dkdv.na_dkdv))
    gen = torch.Generator(device="cuda").manual_seed(0)
    grid, kernel, dim = (48, 64), (7, 9), 128
    shapes = [(2, *grid, 4, dim), (2, *grid, 2, dim), (2, *grid, 2, dim)]
    inputs = [torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for shape in shapes]
    do = torch.randn(shapes[0], device="cuda", dtype=dtype, generator=gen)

    def run(dt, backend):
        leaves = [t.detach().to(dt).requires_grad_() for t in inputs]
        o, lse = na2d(*leaves, kernel, 2, backend=backend, return_lse=True)
        return [o, lse, *torch.autograd.grad(o, leaves, do.to(dt))]

    first = run(dtype, "triton")
    got = run(dtype, "triton")
    for name, seen in folds.items():
        assert len(seen) == 2 and all(fold is not None and fold.groups == 4 for fold in seen), name
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), first, got):
        assert torch.equal(a, b), f"{name}: a repeat call differs from the first"
    assert_error_rule(("o", "lse", "dq", "dk", "dv"), got, run(dtype, "reference"),
                      run(torch.float64, "reference"), dtype)


def test_dkdv_arguments_without_a_gpu():
    from tessera.kernels.gluon.na_dkdv import na_dkdv
    plan = _plan((32, 32), (7, 7), 2, torch.device("cpu"))
    q = torch.empty(1, 1024, 2, 128, dtype=torch.bfloat16)
    stats = torch.empty(1, 2, 1024)
    with pytest.raises(ValueError, match="num_buffers"):
        na_dkdv(q, q, q, q, stats, stats, plan, scale=0.1, num_buffers=1)
    with pytest.raises(ValueError, match="pipeline"):
        na_dkdv(q, q, q, q, stats, stats, plan, scale=0.1, pipeline=3)
    with pytest.raises(ValueError, match="scope"):
        na_dkdv(q.float(), q.float(), q.float(), q.float(), stats, stats, plan, scale=0.1)
    with pytest.raises(ValueError, match="lse"):
        na_dkdv(q, q, q, q, stats[:, :1], stats, plan, scale=0.1)
    with pytest.raises(ValueError, match="delta"):
        na_dkdv(q, q, q, q, stats, stats.double(), plan, scale=0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("pipeline", [0, 1, 2], ids=["sequential", "defer_dk", "early_dp"])
@pytest.mark.parametrize("buffers", [2, 3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op, grid, kernel, stride, dim", KERNEL_CASES + [(na2d, (40, 24), (9, 5), 1, 32)])
def test_gluon_dkdv_against_float64(op, grid, kernel, stride, dim, dtype, buffers, pipeline):
    """``na_dkdv`` against the float64 reference's dk and dv (``_check_gradients``), in each of
    its loops (``pipeline``)."""
    from tessera.kernels.gluon.na_dkdv import na_dkdv
    _check_gradients(lambda *args, scale: na_dkdv(*args, scale=scale, num_buffers=buffers,
                                                  pipeline=pipeline),
                     ("dk", "dv"), op, grid, kernel, stride, dim, dtype)


def _check_gradients(run_kernel, names, op, grid, kernel, stride, dim, dtype, causal=False,
                     tile_shape=None):
    """``run_kernel(q, k, v, do, lse, delta, plan, scale=...)`` (grid-order ``[B, S, H, D]``
    tensors, the forward's lse, delta = rowsum(o * do), the 64 x 64 plan in natten's tiled order
    or in tiles of ``tile_shape``; GQA, B = 2) returns the gradients ``names`` (of dq, dk, dv),
    each within 3x the same-dtype reference's error of the float64 reference's, plus a floor."""
    from tessera.kernels.triton.row_dot import row_dot
    from tessera.patterns.layout import GridLayout
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, kv_heads = 2, 4, 2
    q, k, v, do = (torch.randn(batch, *grid, h, dim, device="cuda", dtype=dtype, generator=gen)
                   for h in (heads, kv_heads, kv_heads, heads))
    seq = q[0, ..., 0, 0].numel()
    o, lse = op(q, k, v, kernel, stride=stride, is_causal=causal, backend="triton", return_lse=True)
    flat = [t.reshape(batch, seq, t.shape[-2], dim) for t in (q, k, v, do, o)]
    plan = _plan(grid, kernel, heads, q.device, stride)
    if causal or tile_shape is not None:
        rule = Neighborhood(grid, kernel, stride=stride, causal=causal)
        layout = (GridLayout(grid, tile_shape) if tile_shape is not None
                  else _auto_layout(rule.grid, rule.kernel, rule.dilation, rule.stride, rule.causal))
        plan = masks.get_plan(Permuted(rule, layout), seq, seq, 64, 64, heads, q.device)
    got = run_kernel(*flat[:4], lse.reshape(batch, heads, seq).contiguous(),
                     row_dot(flat[4], flat[3]), plan, scale=dim ** -0.5)

    reference_grads = _reference_gradients(
        lambda *leaves, backend: op(*leaves, kernel, stride=stride, is_causal=causal, backend=backend),
        q, k, v, do, names, seq)
    assert_error_rule(names, got, reference_grads(dtype), reference_grads(torch.float64), dtype)


def _reference_gradients(attend, q, k, v, do, names, rows: int):
    """``grads(dt)``: the gradients ``names`` (of dq, dk, dv) of ``attend(q, k, v,
    backend="reference")`` cast to ``dt``, for the output gradient ``do``, each as ``[B, rows, H,
    D]`` (the kernels' flattened grid)."""
    def grads(dt):
        leaves = [t.detach().to(dt).requires_grad_() for t in (q, k, v)]
        out = attend(*leaves, backend="reference")
        by_name = dict(zip(("dq", "dk", "dv"), torch.autograd.grad(out, leaves, do.to(dt))))
        return [by_name[name].reshape(q.shape[0], rows, by_name[name].shape[-2], q.shape[-1])
                for name in names]
    return grads


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grid, kernel, stride, causal, tile_shape, dim", BOX_CASES)
def test_gluon_dq_on_key_boxes_against_float64(grid, kernel, stride, causal, tile_shape, dim, dtype):
    """``na_dq_boxes`` against the float64 reference's dq (``_check_gradients``), each query
    tile over its key boxes."""
    from tessera.kernels.gluon.na_dq_boxes import na_dq_boxes
    op = na3d if len(grid) == 3 else na2d
    _check_gradients(lambda *args, scale: [na_dq_boxes(*args, scale=scale)], ("dq",), op, grid, kernel,
                     stride, dim, dtype, causal, tile_shape)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grid, kernel, stride, causal, tile_shape, dim", BOX_CASES)
def test_gluon_dkdv_on_query_boxes_against_float64(grid, kernel, stride, causal, tile_shape, dim, dtype):
    """``na_dkdv_boxes`` against the float64 reference's dk and dv (``_check_gradients``), each
    key tile over its query boxes; a repeat call (the bound launch) gives the same gradients."""
    from tessera.kernels.gluon.na_dkdv_boxes import na_dkdv_boxes

    def run(*args, scale):
        first = na_dkdv_boxes(*args, scale=scale)
        again = na_dkdv_boxes(*args, scale=scale)
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        return first
    op = na3d if len(grid) == 3 else na2d
    _check_gradients(run, ("dk", "dv"), op, grid, kernel, stride, dim, dtype, causal, tile_shape)


def test_dkdv_on_query_boxes_arguments_without_a_gpu():
    from tessera.kernels.gluon.na_dkdv_boxes import dkdv_boxes_supported, na_dkdv_boxes
    plan = _plan((32, 32), (7, 7), 2, torch.device("cpu"))
    q = torch.empty(1, 1024, 2, 128, dtype=torch.bfloat16)
    stats = torch.empty(1, 2, 1024)
    assert dkdv_boxes_supported(q, q, q, plan)
    with pytest.raises(ValueError, match="scope"):
        na_dkdv_boxes(q, q, q, q.float(), stats, stats, plan, scale=0.1)
    with pytest.raises(ValueError, match="lse"):
        na_dkdv_boxes(q, q, q, q, stats[:, :1], stats, plan, scale=0.1)
    with pytest.raises(ValueError, match="delta"):
        na_dkdv_boxes(q, q, q, q, stats, stats.double(), plan, scale=0.1)
    one_axis = _plan((4096,), (1024,), 2, torch.device("cpu"))     # axes 1 and 2 shorter than a box
    rows = torch.empty(1, 4096, 2, 128, dtype=torch.bfloat16)
    assert not dkdv_boxes_supported(rows, rows, rows, one_axis)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gluon_dq_on_key_boxes_under_a_register_cap_against_float64(dtype):
    """The same at 168 registers per thread (three programs per SM at D = 64)."""
    from tessera.kernels.gluon.na_dq_boxes import na_dq_boxes
    _check_gradients(lambda *args, scale: [na_dq_boxes(*args, scale=scale, max_registers=168)], ("dq",),
                     na3d, (8, 24, 24), (5, 13, 13), 1, 64, dtype)


def test_dq_on_key_boxes_arguments_without_a_gpu():
    from tessera.kernels.gluon.na_dq_boxes import na_dq_boxes
    plan = _plan((32, 32), (7, 7), 2, torch.device("cpu"))
    q = torch.empty(1, 1024, 2, 128, dtype=torch.bfloat16)
    stats = torch.empty(1, 2, 1024)
    with pytest.raises(ValueError, match="scope"):
        na_dq_boxes(q, q, q, q.float(), stats, stats, plan, scale=0.1)
    with pytest.raises(ValueError, match="lse"):
        na_dq_boxes(q, q, q, q, stats[:, :1], stats, plan, scale=0.1)
    with pytest.raises(ValueError, match="delta"):
        na_dq_boxes(q, q, q, q, stats, stats.double(), plan, scale=0.1)


def test_dq_arguments_without_a_gpu():
    from tessera.kernels.gluon.na_dq import na_dq
    plan = _plan((32, 32), (7, 7), 2, torch.device("cpu"))
    q = torch.empty(1, 1024, 2, 128, dtype=torch.bfloat16)
    stats = torch.empty(1, 2, 1024)
    with pytest.raises(ValueError, match="v_buffers"):
        na_dq(q, q, q, q, stats, stats, plan, scale=0.1, num_buffers=1, v_buffers=2)
    with pytest.raises(ValueError, match="scope"):
        na_dq(q.float(), q.float(), q.float(), q.float(), stats, stats, plan, scale=0.1)
    with pytest.raises(ValueError, match="lse"):
        na_dq(q, q, q, q, stats[:, :1], stats, plan, scale=0.1)
    with pytest.raises(ValueError, match="delta"):
        na_dq(q, q, q, q, stats, stats.double(), plan, scale=0.1)
    narrow = _plan((32, 32), (7, 7), 2, torch.device("cpu"), block_n=32)
    with pytest.raises(ValueError, match="64 x 64 tiles"):   # the forward takes 32-key tiles, dq not
        na_dq(q, q, q, q, stats, stats, narrow, scale=0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("buffers, v_buffers, max_registers", [(1, 1, None), (2, 1, None), (2, 2, 168)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op, grid, kernel, stride, dim", KERNEL_CASES)
def test_gluon_dq_against_float64(op, grid, kernel, stride, dim, dtype, buffers, v_buffers,
                                  max_registers):
    """``na_dq`` against the float64 reference's dq (``_check_gradients``)."""
    from tessera.kernels.gluon.na_dq import na_dq
    _check_gradients(lambda *args, scale: [na_dq(*args, scale=scale, num_buffers=buffers,
                                                 v_buffers=v_buffers, max_registers=max_registers)],
                     ("dq",), op, grid, kernel, stride, dim, dtype)


def test_forward_route_stays_on_triton_without_a_gpu():
    from tessera.kernels.triton import forward_route
    plan = _plan((32, 32), (7, 7), 2, torch.device("cpu"))
    q = torch.empty(1, 1024, 2, 128, dtype=torch.bfloat16)
    assert forward_route.gluon_variant(q, q, q, plan) is None


@pytest.mark.parametrize("grid, kernel, stride, dim, forward, dq", [
    ((32, 32), (7, 7), 1, 128, "boxes", True),            # key boxes: 0.84 of the listed tiles
    ((32, 32), (7, 7), 1, 64, "boxes", True),             # all tiles partial
    ((64, 64), (17, 17), 1, 128, "masked", True),         # key boxes: 0.93 of the listed tiles
    ((4096,), (1024,), 1, 128, "masked", False),          # 16.8 tiles, 9% partial
    ((4096,), (1024,), 1, 64, None, False),
    ((8, 16, 16), (4, 8, 8), (4, 8, 8), 128, "full-128", True),
    ((8, 16, 16), (4, 8, 8), (4, 8, 8), 64, "full-64", True),
    ((32, 32), (7, 7), 1, 32, "boxes", True),             # head dim 32 takes D = 64's routes
    ((64, 64), (17, 17), 1, 32, "masked", True),
    ((8, 16, 16), (4, 8, 8), (4, 8, 8), 32, "full-64", True),
])
def test_route_decisions_as_on_hopper(monkeypatch, grid, kernel, stride, dim, forward, dq):
    """The forward and backward routes' decisions with the Hopper check forced true (CPU
    tensors): the variant each plan gets (``GLUON_MASKED``, ``GLUON_FULL_128``, ``GLUON_VARIANT``
    on 64-row tiles, or None for Triton) and whether dq goes to Gluon. A full-tile plan at the
    D = 64 config's 128 x 64 tiles asks for 64-row tiles too; a masked one at 128 rows stays on
    Triton. Masked plans whose key boxes cost at most ``BOXES_MAX_COST`` of their listed tiles
    take ``GLUON_BOXES`` (``GLUON_MASKED`` with ``BOXES_ENABLED`` off)."""
    from tessera.kernels.triton import backward_route, forward_route
    monkeypatch.setattr(forward_route, "on_hopper", lambda t: True)
    seq = 1
    for g in grid:
        seq *= g
    plan = _plan(grid, kernel, 2, torch.device("cpu"), stride)
    q = torch.empty(1, seq, 2, dim, dtype=torch.bfloat16)
    want = {"masked": forward_route.GLUON_MASKED, "full-128": forward_route.GLUON_FULL_128,
            "full-64": dict(forward_route.GLUON_VARIANT, block_m=64), None: None,
            "boxes": forward_route.GLUON_BOXES}[forward]
    assert forward_route.gluon_variant(q, q, q, plan) == want
    if forward == "boxes":
        monkeypatch.setattr(forward_route, "BOXES_ENABLED", False)
        assert forward_route.gluon_variant(q, q, q, plan) == forward_route.GLUON_MASKED
        monkeypatch.setattr(forward_route, "BOXES_ENABLED", True)
    assert backward_route.routes(q, q, q, torch.empty_like(q), plan, plan) == (dq, True)
    assert backward_route.dq_on_boxes(plan) is (forward == "boxes")
    rows_128 = _plan(grid, kernel, 2, torch.device("cpu"), stride, block_m=128)
    if forward == "full-64":
        assert forward_route.gluon_variant(q, q, q, rows_128) == want
    elif forward in ("masked", "boxes"):
        assert forward_route.gluon_variant(q, q, q, rows_128) is None


@pytest.mark.parametrize("grid, kernel, boxes", [
    ((16, 48, 48), (5, 13, 13), False),   # query boxes 31.7 against 35.6 listed tiles: over 0.8
    ((16, 48, 48), (3, 7, 7), True),      # 10.3 over (1, 8, 8) key tiles against 19.8
    ((32, 32), (7, 7), True),             # 3.25 against 4.75
    ((128, 128), (17, 17), False),        # 9 against 9
    ((4096,), (1024,), False),            # 1-D: no boxes
])
def test_dkdv_box_route_decisions(monkeypatch, grid, kernel, boxes):
    """``backward_route.dkdv_on_boxes``: query boxes where they cost at most
    ``DKDV_BOXES_MAX_COST`` of the plan's listed tiles, never with ``DKDV_BOXES_ENABLED`` off."""
    from tessera.kernels.triton import backward_route
    plan = _plan(grid, kernel, 2, torch.device("cpu"))
    assert backward_route.dkdv_on_boxes(plan) is boxes
    monkeypatch.setattr(backward_route, "DKDV_BOXES_ENABLED", False)
    assert backward_route.dkdv_on_boxes(plan) is False


def test_listed_tile_limits_on_the_suite_plans():
    """The routes' tile rules on the suite's plans: 2-D kernel 17 lists 9 key tiles per query
    tile (86% partial), within both tile-count limits (``few_listed_tiles``); 3-D 5 x 13 x 13
    lists 35.6, all partial: within the forward's ``MAX_MASKED_TILES``, over dq's
    ``DQ_MAX_MASKED_TILES`` but over ``DQ_MIN_PARTIAL``; 1-D window 2048 lists 32.9, 6% partial:
    under ``DQ_MIN_PARTIAL``."""
    from tessera.kernels.triton import backward_route, forward_route
    cpu = torch.device("cpu")
    for grid, kernel, per_tile, partial, forward, few in (
            ((128, 128), (17, 17), 9.0, 0.86, True, True),
            ((16, 48, 48), (5, 13, 13), 35.6, 1.0, True, False),
            ((32768,), (2048,), 32.9, 0.06, True, False)):
        plan = _plan(grid, kernel, 1, cpu)
        assert plan.listed_pairs() / (plan.map_heads * plan.n_q_tiles) == pytest.approx(per_tile, abs=0.05)
        assert plan.partial_fraction() == pytest.approx(partial, abs=0.005)
        assert forward_route.few_listed_tiles(plan, forward_route.MAX_MASKED_TILES) is forward
        assert forward_route.few_listed_tiles(plan, backward_route.DQ_MAX_MASKED_TILES) is few
        assert (plan.partial_fraction() >= backward_route.DQ_MIN_PARTIAL) is (partial > 0.5)


def _tile_text(plan, ndim: int) -> str:
    """A plan's 64-row query tile over the last ``ndim`` grid axes, as in "2x8x4"."""
    return "x".join(str(extent) for extent in grid_box(plan, 64)[-ndim:])


def _record_gluon_launches(monkeypatch, ndim: int, forward: bool = True, backward: bool = True) -> list:
    """A list that spies on the Gluon entry points fill with one label per launch: for the
    forward (``forward``) the query-tile rows of ``na_forward`` or "boxes@" and the box plan's
    query tile (``_tile_text``) of ``na_forward_boxes``; for the backward (``backward``) "dq" and
    "dkdv" (``na_dq``, ``na_dkdv``) or "dq-boxes@" / "dkdv-boxes@" and the box plan's tile."""
    from tessera.kernels.gluon import na_dkdv, na_dkdv_boxes, na_dq, na_dq_boxes, na_forward, na_forward_boxes
    launches = []
    labels = {
        (na_forward, "na_forward"): lambda args: args[3].block_m,
        (na_forward_boxes, "na_forward_boxes"): lambda args: "boxes@" + _tile_text(args[3], ndim),
        (na_dq, "na_dq"): lambda args: "dq",
        (na_dq_boxes, "na_dq_boxes"): lambda args: "dq-boxes@" + _tile_text(args[6], ndim),
        (na_dkdv, "na_dkdv"): lambda args: "dkdv",
        (na_dkdv_boxes, "na_dkdv_boxes"): lambda args: "dkdv-boxes@" + _tile_text(args[6], ndim),
    }
    spied = list(labels.items())
    spied = (spied[:2] if forward else []) + (spied[2:] if backward else [])
    for (module, name), label in spied:
        def spy(*args, _original=getattr(module, name), _label=label, **kwargs):
            launches.append(_label(args))
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, name, spy)
    return launches


def _natten_runner(op, grid, kernel, dim: int, dtype, batch: int = 2, **options):
    """``run(dt, backend) -> [o, lse, dq, dk, dv]`` of ``op`` (na1d / na2d / na3d) over fixed
    random GPU inputs (``[batch, *grid, H, dim]``, 4 query and 2 kv heads, and an output
    gradient) cast to ``dt``; ``options``: ``op``'s other keyword arguments."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(batch, *grid, 4, dim), (batch, *grid, 2, dim), (batch, *grid, 2, dim)]
    inputs = [torch.randn(shape, device="cuda", dtype=dtype, generator=gen) for shape in shapes]
    do = torch.randn(shapes[0], device="cuda", dtype=dtype, generator=gen)

    def run(dt, backend):
        leaves = [t.detach().to(dt).requires_grad_() for t in inputs]
        o, lse = op(*leaves, kernel, backend=backend, return_lse=True, **options)
        return [o, lse, *torch.autograd.grad(o, leaves, do.to(dt))]
    return run


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("op, grid, kernel, stride, dim, routed", [
    (na2d, (48, 40), (13, 11), 1, 128, "boxes@8x8"),      # 2-D: key boxes, 0.80 of the listed tiles
    (na2d, (48, 40), (13, 11), 1, 64, "boxes@8x8"),       # masked at D = 64, all tiles partial
    (na2d, (64, 64), (17, 17), 1, 128, 64),               # 2-D, key boxes 0.93 of the tiles
    (na3d, (8, 24, 24), (5, 13, 13), 1, 128, "boxes@1x8x8"),  # 3-D: key boxes, 0.87 of the tiles
    # natten's order (8, 1, 8) lists 25.7 key tiles; key boxes on (2, 8, 4) query tiles cost 22.7.
    (na3d, (8, 24, 24), (5, 11, 11), 1, 128, "boxes@2x8x4"),
    (na3d, (8, 16, 16), (3, 5, 5), 1, 64, "boxes@2x8x4"),      # 7.5 key tiles, boxes 6.0
    (na1d, (4096,), (1024,), 1, 128, 64),                 # 1-D, 9% partial
    (na1d, (4096,), (1024,), 1, 64, None),                # the same at D = 64: Triton
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8), 128, 128),  # blocked: 128-row tiles
    # Full tiles at D = 64: the tuned config has 128-row tiles (tuning._gpu_config); the route
    # asks for the 64-row plan (Gluon on 128-row tiles was slower there).
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8), 64, 64),
    (na2d, (48, 40), (13, 11), 1, 32, "boxes@8x8"),       # head dim 32 takes D = 64's routes
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8), 32, 64),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_forward_route_through_natten_against_float64(monkeypatch, op, grid, kernel, stride, dim,
                                                      routed, dtype):
    """na2d / na3d on the GPU take the Gluon forward exactly where ``forward_route`` says (a spy
    records each launch's query-tile rows, or "boxes@" and the query tile for
    ``na_forward_boxes``; ``routed``: what it records, None for the Triton kernel),
    a repeat call (past the launcher's first, binding launch) equals the first, and forward and
    backward (GQA, B = 2) meet the float64 reference by the rule of
    tests/kernels/flash_cases.py: 2x (o, lse) or 3x (gradients) the reference's own error in
    the input dtype, plus a small floor."""
    launches = _record_gluon_launches(monkeypatch, len(grid), backward=False)
    run = _natten_runner(op, grid, kernel, dim, dtype, stride=stride)
    first = run(dtype, "triton")
    got = run(dtype, "triton")      # a repeat launch: the launcher's direct path
    assert launches == ([routed] * 2 if routed else [])
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), first, got):
        assert torch.equal(a, b), f"{name}: a repeat call differs from the first"
    same = run(dtype, "reference")
    want = run(torch.float64, "reference")
    assert_error_rule(("o", "lse", "dq", "dk", "dv"), got, same, want, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("op, grid, kernel, stride, dim, routed", [
    (na2d, (48, 40), (13, 11), 1, 128, {"dq-boxes@8x8", "dkdv"}),   # key boxes: 0.80 of the tiles
    (na2d, (64, 64), (17, 17), 1, 64, {"dq", "dkdv"}),            # key boxes: 0.93 of the tiles
    # 27.2 key tiles per query tile, all partial; key boxes 0.87 of them.
    (na3d, (8, 24, 24), (5, 13, 13), 1, 128, {"dq-boxes@1x8x8", "dkdv"}),
    (na3d, (8, 24, 24), (5, 13, 13), 1, 64, {"dq-boxes@1x8x8", "dkdv"}),
    # dq on key boxes in (2, 8, 4) query tiles, dk/dv on natten's (8, 1, 8) tiles.
    (na3d, (8, 24, 24), (5, 11, 11), 1, 128, {"dq-boxes@2x8x4", "dkdv"}),
    # 16.8 key tiles per query tile, 9% partial: dq stays on Triton.
    (na1d, (4096,), (1024,), 1, 128, {"dkdv"}),
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8), 128, {"dq", "dkdv"}),
    # Full tiles at D = 64 and 32: dq and dk/dv on 64 x 64 tiles (tuning._gpu_config), in Gluon.
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8), 64, {"dq", "dkdv"}),
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8), 32, {"dq", "dkdv"}),
    # dk/dv on query boxes over (8, 8) key tiles: 3.7 boxes against natten's 5.0 (32 x 2) tiles.
    (na2d, (32, 48), (7, 9), 1, 128, {"dq-boxes@8x8", "dkdv-boxes@8x8"}),
    # natten's (8, 2, 4) tiles list 13.1 per key tile; query boxes over (1, 8, 8) cost 9.8;
    # dq's key boxes over (2, 8, 4) query tiles 9.7.
    (na3d, (8, 32, 32), (3, 7, 7), 1, 64, {"dq-boxes@2x8x4", "dkdv-boxes@1x8x8"}),
    (na3d, (8, 24, 24), (5, 13, 13), 1, 32, {"dq-boxes@1x8x8", "dkdv"}),
    (na2d, (32, 48), (7, 9), 1, 32, {"dq-boxes@8x8", "dkdv-boxes@8x8"}),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gradient", ["dq", "dkdv", "both"])
def test_backward_route_through_natten_against_float64(monkeypatch, op, grid, kernel, stride, dim,
                                                       routed, dtype, gradient):
    """With ``backward_route.GLUON_DQ_ENABLED`` and / or ``GLUON_DKDV_ENABLED`` (the other off),
    na2d / na3d backward passes take dq from ``na_dq`` or ``na_dq_boxes`` ("dq-boxes@" and its
    query tile) and dk and dv from ``na_dkdv`` or ``na_dkdv_boxes`` ("dkdv-boxes@" and its key
    tile) where the route sends them (``routed``; spies count launches per kernel), a repeat call equals the first, and forward and backward (GQA, B = 2) meet the
    float64 reference by the rule."""
    from tessera.kernels.triton import backward_route
    chosen = ["dq", "dkdv"] if gradient == "both" else [gradient]
    monkeypatch.setattr(backward_route, "GLUON_DQ_ENABLED", "dq" in chosen)
    monkeypatch.setattr(backward_route, "GLUON_DKDV_ENABLED", "dkdv" in chosen)
    launches = _record_gluon_launches(monkeypatch, len(grid), forward=False)
    run = _natten_runner(op, grid, kernel, dim, dtype, stride=stride)
    first = run(dtype, "triton")
    got = run(dtype, "triton")
    assert sorted(launches) == sorted(2 * [label for label in routed if label.split("-")[0] in chosen])
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), first, got):
        assert torch.equal(a, b), f"{name}: a repeat call differs from the first"
    assert_error_rule(("o", "lse", "dq", "dk", "dv"), got, run(dtype, "reference"),
                      run(torch.float64, "reference"), dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("op, grid, kernel, stride, dim", [
    (na2d, (32, 48), (7, 9), 1, 128),
    (na3d, (8, 16, 16), (4, 8, 8), (4, 8, 8), 128),     # blocked: 128-row forward tiles
    (na2d, (64, 64), (17, 17), 2, 64),
    (na3d, (8, 24, 24), (5, 13, 13), 1, 128),         # forward and dq on key boxes
    (na3d, (8, 24, 24), (5, 11, 11), 1, 128),         # the same on (2, 8, 4) query tiles
])
def test_bound_launches_take_each_calls_tensors(op, grid, kernel, stride, dim):
    """Repeat forward+backward calls of one shape (the Gluon kernels' bound launches, which fill
    in only the tensors) on fresh inputs each time, some at a freed input's address, meet the
    float64 reference on their own inputs: no launch reads an earlier call's tensors."""
    from tessera.kernels.triton import launcher
    assert launcher.BIND_LAUNCHES
    gen = torch.Generator(device="cuda").manual_seed(1)
    shape = (2, *grid, 2, dim)

    def step(tensors, dt, backend):
        leaves = [t.detach().to(dt).requires_grad_() for t in tensors[:3]]
        o, lse = op(*leaves, kernel, stride=stride, backend=backend, return_lse=True)
        return [o, lse, *torch.autograd.grad(o, leaves, tensors[3].to(dt))]

    for _ in range(3):
        tensors = [torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4)]
        got = step(tensors, torch.bfloat16, "triton")
        assert_error_rule(("o", "lse", "dq", "dk", "dv"), got, step(tensors, torch.bfloat16, "reference"),
                          step(tensors, torch.float64, "reference"), torch.bfloat16)
        del got


# Grids that no 64-token tile shape divides: natten pads them up to whole tiles of the layout's
# shape (padded grid in the comment; the layout is given where "auto" would choose another) and
# the routes decide on the padded plan. Each
# case's forward route (a query-tile height, or "boxes@" and the box plan's query tile) and
# backward kernels (labels as in test_backward_route_through_natten_against_float64).
PADDED_CASES = [
    # 48 x 40 in (8, 8) tiles.
    (na2d, (44, 37), (13, 11), 1, False, (8, 8), 128, "boxes@8x8", {"dq-boxes@8x8", "dkdv"}),
    (na2d, (44, 37), (13, 11), 1, False, (8, 8), 64, "boxes@8x8", {"dq-boxes@8x8", "dkdv"}),
    # 32 x 48: a stride and a causal axis; dk/dv on query boxes.
    (na2d, (30, 45), (7, 9), (2, 1), (False, True), (8, 8), 128, "boxes@8x8",
     {"dq-boxes@8x8", "dkdv-boxes@8x8"}),
    # 8 x 24 x 28 in (2, 8, 4) tiles, causal along the frames.
    (na3d, (7, 21, 26), (3, 7, 9), 1, (True, False, False), (2, 8, 4), 64, "boxes@2x8x4",
     {"dq-boxes@2x8x4", "dkdv-boxes@2x8x4"}),
    # 8 x 24 x 28 in (4, 4, 4) tiles at head dim 32.
    (na3d, (7, 21, 26), (3, 7, 9), (1, 2, 1), False, (4, 4, 4), 32, "boxes@2x8x4",
     {"dq-boxes@2x8x4", "dkdv-boxes@4x4x4"}),
    # The suite's padded 2-D case under "auto": 104 x 104, masked 64-row tiles.
    (na2d, (100, 100), (17, 17), 1, False, "auto", 128, 64, {"dq", "dkdv"}),
]


def _padded_plan(grid, kernel, stride, causal, layout):
    from tessera.natten import _build_call_plan
    n = len(grid)
    call_plan = _build_call_plan(grid, kernel, (1,) * n, stride if isinstance(stride, tuple) else (stride,) * n,
                                 causal if isinstance(causal, tuple) else (causal,) * n, layout,
                                 torch.device("cuda"))
    size = call_plan.grid_order.layout.size
    return call_plan, masks.get_plan(call_plan.grid_order, size, size, 64, 64, 2, torch.device("cpu"))


@pytest.mark.parametrize("dim, capped", [(128, True), (64, False)])
def test_padded_masked_forward_takes_the_register_cap_at_head_dim_128(monkeypatch, dim, capped):
    """The suite's padded 2-D plan (``na_mask.NA_PADDED``) on the masked Gluon forward gets
    ``PADDED_MAX_REGISTERS`` at D = 128 only; the unpadded 128 x 128 plan never does."""
    from tessera.kernels.triton import forward_route
    monkeypatch.setattr(forward_route, "on_hopper", lambda t: True)
    _call_plan, plan = _padded_plan((100, 100), (17, 17), 1, False, "auto")
    q = torch.empty(1, plan.q_len, 2, dim, dtype=torch.bfloat16)
    want = dict(forward_route.GLUON_MASKED)
    if capped:
        want["max_registers"] = forward_route.PADDED_MAX_REGISTERS
    assert forward_route.gluon_variant(q, q, q, plan) == want
    plain = _plan((128, 128), (17, 17), 2, torch.device("cpu"))
    q = torch.empty(1, 128 * 128, 2, dim, dtype=torch.bfloat16)
    assert forward_route.gluon_variant(q, q, q, plain) == forward_route.GLUON_MASKED


@pytest.mark.parametrize("op, grid, kernel, stride, causal, layout, dim, forward, backward", PADDED_CASES)
def test_padded_grid_routes_as_on_hopper(monkeypatch, op, grid, kernel, stride, causal, layout, dim, forward,
                                         backward):
    """The padded cases' route decisions with the Hopper check forced true (CPU tensors), as the
    GPU test below expects them."""
    from tessera.kernels.gluon import key_boxes
    from tessera.kernels.triton import backward_route, forward_route
    monkeypatch.setattr(forward_route, "on_hopper", lambda t: True)
    call_plan, plan = _padded_plan(grid, kernel, stride, causal, layout)
    assert call_plan.padded is not None and call_plan.padded != grid
    q = torch.empty(1, plan.q_len, 2, dim, dtype=torch.bfloat16)
    variant = forward_route.gluon_variant(q, q, q, plan)
    got = ("boxes@" + _tile_text(key_boxes.box_plan(plan), len(grid)) if variant.get("boxes")
           else variant.get("block_m", 64))
    assert got == forward
    dq, dkdv = backward_route.routes(q, q, q, torch.empty_like(q), plan, plan)
    labels = set()
    if dq:
        labels.add("dq-boxes@" + _tile_text(key_boxes.box_plan(plan), len(grid))
                   if backward_route.dq_on_boxes(plan) else "dq")
    if dkdv:
        labels.add("dkdv-boxes@" + _tile_text(key_boxes.box_plan(plan, key_boxes.query_boxes), len(grid))
                   if backward_route.dkdv_on_boxes(plan) else "dkdv")
    assert labels == backward


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("op, grid, kernel, stride, causal, layout, dim, forward, backward", PADDED_CASES)
def test_padded_grid_extent_only_calls_as_on_hopper(monkeypatch, op, grid, kernel, stride, causal, layout, dim,
                                                    forward, backward, batch):
    """The Triton backend takes the padded cases' calls on unpadded q, k, v (``extent_only``)
    with the Hopper check forced true (CPU tensors): batch its own view axis where axis 0 is
    padded and B > 1 (``na_forward.batch_axis``). It names why it does not without the forced
    check (CPU tensors, no Hopper GPU) and for q holding the padded grid."""
    from tessera.kernels.registry import AttentionCall
    from tessera.kernels.triton import backend, forward_route
    call_plan, plan = _padded_plan(grid, kernel, stride, causal, layout)
    n = math.prod(grid)
    q = torch.zeros(batch, n, 4, dim, dtype=torch.bfloat16)
    kv = torch.zeros(batch, n, 2, dim, dtype=torch.bfloat16)
    call = AttentionCall(q=q, k=kv, v=kv, pattern=call_plan.grid_order, causal=False, scale=0.125,
                         score="softmax", sigmoid_bias=None, bias=None, softcap=None, sinks=None,
                         return_lse=True, grid_order=True, pattern_key=call_plan.grid_order_key,
                         extent_only=True)
    assert "needs CUDA tensors" in backend.supports(call)
    assert "Hopper GPU" in backend._extent_only_reason(call)
    monkeypatch.setattr(forward_route, "on_hopper", lambda t: True)
    assert backend._extent_only_reason(call) is None
    from tessera.kernels.gluon import na_forward
    expect_batch_axis = batch > 1 and len(grid) == 3 and call_plan.padded[0] != grid[0]
    assert na_forward.batch_axis(q, plan) == expect_batch_axis
    assert bool(na_forward.static_switches(q, plan) & masks.NA_BATCH_AXIS_BIT) == expect_batch_axis
    padded_q = torch.zeros(batch, plan.q_len, 4, dim, dtype=torch.bfloat16)
    call.q = padded_q
    assert "holding the extent's" in backend._extent_only_reason(call)


@pytest.mark.gpu
@pytest.mark.skipif(not HOPPER, reason="needs a Hopper GPU")
@pytest.mark.parametrize("op, grid, kernel, stride, causal, layout, dim, forward, backward", PADDED_CASES)
@pytest.mark.parametrize("dtype, batch", [(torch.bfloat16, 2), (torch.float16, 2), (torch.bfloat16, 1)])
def test_padded_grids_through_natten_against_float64(monkeypatch, op, grid, kernel, stride, causal, layout, dim,
                                                     forward, backward, dtype, batch):
    """na2d / na3d on grids that no tile shape divides run the Gluon kernels on the padded grid
    (spies record each launch as in the route tests above), reading q, k, v unpadded with no
    padding copies (batch its own view axis where axis 0 is padded and B = 2). A repeat call
    equals the first, the padded copies' path gives the same bits, and o, lse and the gradients
    (GQA) meet the float64 reference on the grid by the rule."""
    import tessera.natten as natten_module
    copies = []
    monkeypatch.setattr(natten_module, "pad_grids",
                        lambda *args, _original=natten_module.pad_grids: copies.append(1) or _original(*args))
    launches = _record_gluon_launches(monkeypatch, len(grid))
    run = _natten_runner(op, grid, kernel, dim, dtype, batch, stride=stride, is_causal=causal, layout=layout)
    first = run(dtype, "triton")
    got = run(dtype, "triton")
    assert sorted(map(str, launches)) == sorted(map(str, 2 * [forward, *backward]))
    assert not copies
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), first, got):
        assert torch.equal(a, b), f"{name}: a repeat call differs from the first"
    monkeypatch.setattr(natten_module, "PAD_IN_KERNEL", False)
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), got, run(dtype, "triton")):
        assert torch.equal(a, b), f"{name}: the padded copies' path differs"
    assert_error_rule(("o", "lse", "dq", "dk", "dv"), got, run(dtype, "reference"),
                      run(torch.float64, "reference"), dtype)
