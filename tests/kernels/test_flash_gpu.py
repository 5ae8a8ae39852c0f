"""Triton flash kernels on a CUDA GPU: bf16/fp16 at long lengths, every score variant, fully masked
rows, extreme logits, NaN-poisoned outputs. Marked ``gpu``: skipped without CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from flash_cases import check_against_reference, grid_order_outputs, make_call, make_inputs

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("nan_poison")]

if torch.cuda.is_available():
    from tessera.bias import ALiBi, LowRank, RelativePosition, TensorBias
    from tessera.bench.switches import get_switch, set_switch
    from tessera.kernels.triton.backend import run
    from tessera.patterns import Causal, FromMask, Neighborhood, Power, Strided, Window
    from tessera.patterns.layout import GridLayout, Permuted
    from tessera.patterns.blocksparse import BlockSparse

DEVICE = "cuda"


def _patterns():
    return {
        "dense": None,
        "causal": Causal(),
        "window": Window(300, 0),
        "power": Power(128),           # bitmask tiles at 128 x 128
        "power256": Power(256),        # one offset interval per tile: per-tile bands
        "strided": Strided(block=64, local_blocks=2, stride=4),
        "blocksparse": BlockSparse.random(2048, 0.3, block=96, seed=3),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["dense", "causal", "window", "power", "power256", "strided",
                                  "blocksparse"])
def test_patterns_forward_backward(name, dtype):
    pattern = _patterns()[name]
    q, k, v = make_inputs(2, 1000, 1500, 8, 2, 128, dtype, DEVICE)
    check_against_reference(q, k, v, pattern)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_patterns_forward_backward_strided_band_masked_longest_first(dtype):
    # Aligned S2 blocks: the causal diagonal tiles are the only partial ones (one offset band),
    # per-head lists of unequal length launch longest first (GQA, batch 2).
    from tessera.kernels.triton import masks, schedule
    pattern = Strided(block=128, local_blocks=3, stride=4)
    plan = masks.get_plan(pattern, 4096, 4096, 64, 64, 8, torch.device(DEVICE))
    assert plan.mask_mode == masks.MASK_BAND and schedule.col_schedule(plan, 2, 2) is not None
    q, k, v = make_inputs(2, 4096, 4096, 8, 2, 128, dtype, DEVICE)
    check_against_reference(q, k, v, pattern)


def _misaligned(shape, dtype):
    """A leaf tensor of ``shape`` whose address is 2 elements past a 16-byte boundary."""
    storage = torch.randn(math.prod(shape) + 2, device=DEVICE, dtype=dtype)
    return storage[2:].view(shape).requires_grad_(True)


def test_patterns_forward_backward_repeat_launches_misaligned():
    # Launches after the first of a specialization key skip Triton's binder (launcher.py): fresh
    # inputs at one shape, then inputs not 16-byte aligned (another key), then aligned again.
    for aligned in (True, True, False, False, True):
        if aligned:
            q, k, v = make_inputs(2, 700, 700, 4, 2, 64, torch.bfloat16, DEVICE)
        else:
            q, k, v = (_misaligned(shape, torch.bfloat16) for shape in ((2, 700, 4, 64), (2, 700, 2, 64),
                                                                         (2, 700, 2, 64)))
            assert q.data_ptr() % 16 != 0
        check_against_reference(q, k, v, Window(200, 0))


def _neighborhoods():
    """N-D neighborhoods in a tiled token order (the in-kernel N-D mask) and row-major (its
    general integer-division path)."""
    two_d = Neighborhood((32, 48), (7, 9), dilation=(1, 2))
    three_d = Neighborhood((8, 16, 16), (3, 5, 5), causal=(True, False, False))
    return {
        "2d tiled": Permuted(two_d, GridLayout((32, 48), (8, 8))),
        "2d row-major": two_d,
        "3d tiled": Permuted(three_d, GridLayout((8, 16, 16), (1, 8, 8))),
        "3d strided tiled": Permuted(Neighborhood((8, 16, 16), (3, 7, 7), stride=(1, 2, 2)),
                                     GridLayout((8, 16, 16), (2, 4, 8))),
        # Blocked, each 4 x 8 x 8 block one layout tile (natten's "auto" layout): no partial tiles,
        # 64- and 128-row kernel tiles are grid boxes.
        "3d blocked": Permuted(Neighborhood((8, 16, 16), (4, 8, 8), stride=(4, 8, 8)),
                               GridLayout((8, 16, 16), (4, 8, 8))),
    }


@pytest.mark.parametrize("overlap", [True, False])
def test_neighborhood_backward_on_one_and_two_streams(overlap, monkeypatch):
    # Two streams: row_dot gives delta and dk/dv runs next to dq; one stream: dq computes delta
    # and runs first. OVERLAP_MIN_WORK forces either for the same call.
    from tessera.kernels.triton import flash_bwd
    monkeypatch.setattr(flash_bwd, "OVERLAP_MIN_WORK", 0 if overlap else float("inf"))
    q, k, v = make_inputs(2, 2048, 2048, 8, 2, 128, torch.bfloat16, DEVICE)
    check_against_reference(q, k, v, _neighborhoods()["3d tiled"])


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("name", ["dense", "causal", "power"])
def test_lse_gradient_on_one_and_two_streams(name, overlap, monkeypatch):
    # The loss on o and lse: delta - dlse from row_dot on either stream setting (dq's own delta
    # is off with a lse gradient), bf16, GQA, odd lengths, against float64.
    from tessera.kernels.triton import flash_bwd
    monkeypatch.setattr(flash_bwd, "OVERLAP_MIN_WORK", 0 if overlap else float("inf"))
    q, k, v = make_inputs(2, 1000, 1500, 8, 2, 128, torch.bfloat16, DEVICE)
    check_against_reference(q, k, v, _patterns()[name], lse_gradient=True)


@pytest.mark.parametrize("name", ["2d tiled", "3d tiled", "3d blocked"])
def test_neighborhood_repeat_launches(name):
    # The second call of each launch key skips Triton's binder (launcher.py): fresh inputs, the
    # same shapes, checked like the first.
    pattern = _neighborhoods()[name]
    seq = 1536 if name.startswith("2d") else 2048
    for _ in range(2):
        q, k, v = make_inputs(1, seq, seq, 4, 2, 128, torch.bfloat16, DEVICE)
        check_against_reference(q, k, v, pattern)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["2d tiled", "2d row-major", "3d tiled", "3d strided tiled"])
def test_neighborhood_forward_backward(name, dtype):
    from tessera.kernels.triton import masks
    pattern = _neighborhoods()[name]
    seq = 1536 if name.startswith("2d") else 2048
    plan = masks.get_plan(pattern, seq, seq, 64, 64, 8, torch.device(DEVICE))
    assert plan.mask_mode == masks.MASK_NEIGHBORHOOD
    q, k, v = make_inputs(2, seq, seq, 8, 2, 128, dtype, DEVICE)
    check_against_reference(q, k, v, pattern)


GLUON_ROUTES = ("forward_route.GLUON_ENABLED", "backward_route.GLUON_DQ_ENABLED",
                "backward_route.GLUON_DKDV_ENABLED")


def assert_grid_order_matches_reordering(q, k, v, pattern):
    """Outputs and gradients of grid-order tensors addressed through the tiled order in-kernel
    by the Triton kernels equal those of reordering around the call (finite, within 2e-3). The
    Gluon routes are off: the grid-order path would take the Gluon kernels, whose softmax rounds
    differently (``lazy_rescale``); they meet float64 in tests/kernels/test_gluon_gpu.py."""
    do = torch.randn_like(q)
    before = {name: get_switch(name) for name in GLUON_ROUTES}
    try:
        for name in GLUON_ROUTES:
            set_switch(name, False)
        in_kernel = grid_order_outputs(q, k, v, do, pattern, True)
    finally:
        for name, value in before.items():
            set_switch(name, value)
    reordered = grid_order_outputs(q, k, v, do, pattern, False)
    for label, a, b in zip(("o", "lse", "dq", "dk", "dv"), in_kernel, reordered):
        assert torch.isfinite(a).all(), label
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3, msg=label)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["2d tiled", "3d tiled", "3d strided tiled", "3d blocked"])
def test_neighborhood_grid_order_matches_reordering(name, dtype):
    # Grid-order tensors addressed through the tiled order in-kernel (TMA boxes where the kernel
    # tiles are whole rows or planes of a layout tile) against reordering around the call.
    pattern = _neighborhoods()[name]
    seq = 1536 if name.startswith("2d") else 2048
    q, k, v = make_inputs(2, seq, seq, 8, 2, 128, dtype, DEVICE)
    assert_grid_order_matches_reordering(q, k, v, pattern)


@pytest.mark.parametrize("dim", [32, 64])
@pytest.mark.parametrize("name", ["2d tiled", "3d tiled"])
def test_neighborhood_small_head_dims(name, dim):
    # Neighborhoods at the small head dims (their kernel configs differ from D = 128's,
    # tuning.py): against float64, then grid-order addressing against reordering.
    pattern = _neighborhoods()[name]
    seq = 1536 if name.startswith("2d") else 2048
    q, k, v = make_inputs(2, seq, seq, 8, 2, dim, torch.bfloat16, DEVICE)
    check_against_reference(q, k, v, pattern)
    assert_grid_order_matches_reordering(q, k, v, pattern)


@pytest.mark.parametrize("dim", [32, 64, 96, 256])
def test_head_dims(dim):
    q, k, v = make_inputs(1, 777, 777, 4, 4, dim, torch.bfloat16, DEVICE, layout="bhsd")
    check_against_reference(q, k, v, Causal())


def test_fp32_inputs():
    q, k, v = make_inputs(1, 500, 600, 4, 2, 64, torch.float32, DEVICE)
    check_against_reference(q, k, v, Window(100, 20))


@pytest.mark.parametrize("name", ["dense", "causal", "window"])
def test_long_sequences_forward(name):
    pattern = {"dense": None, "causal": Causal(), "window": Window(1023, 0)}[name]
    q, k, v = make_inputs(1, 16384, 16384, 2, 1, 128, torch.bfloat16, DEVICE, requires_grad=False)
    check_against_reference(q, k, v, pattern, backward=False)


def test_long_sequence_backward_window():
    q, k, v = make_inputs(1, 16384, 16384, 2, 2, 64, torch.bfloat16, DEVICE)
    check_against_reference(q, k, v, Window(511, 0))


@pytest.mark.parametrize("variant", ["softcap", "sinks", "alibi", "sigmoid", "tensor_bias"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_score_variants(variant, dtype):
    heads = 4
    q, k, v = make_inputs(2, 700, 900, heads, 2, 64, dtype, DEVICE)
    extra = {}
    if variant == "softcap":
        extra["softcap"] = 5.0
        q.data.mul_(4.0)
    elif variant == "sinks":
        extra["sinks"] = torch.randn(heads, device=DEVICE).requires_grad_()
    elif variant == "alibi":
        extra["bias"] = ALiBi(ALiBi.default_slopes(heads, device=DEVICE).requires_grad_())
    elif variant == "sigmoid":
        extra.update(score="sigmoid", sigmoid_bias=-math.log(900))
    elif variant == "tensor_bias":
        extra["bias"] = TensorBias(torch.randn(1, heads, 700, 900, device=DEVICE).requires_grad_())
    check_against_reference(q, k, v, Window(400, 50), **extra)


@pytest.mark.parametrize("rank, broadcast, dtype", [(8, True, torch.bfloat16), (64, False, torch.float16),
                                                    (3, False, torch.float32)])
def test_low_rank_bias(rank, broadcast, dtype):
    heads = 4
    q, k, v = make_inputs(2, 700, 900, heads, 2, 128, dtype, DEVICE)
    u = torch.randn(1 if broadcast else 2, heads, 700, rank, device=DEVICE, dtype=dtype) / math.sqrt(rank)
    w = torch.randn(2, 1 if broadcast else heads, 900, rank, device=DEVICE, dtype=dtype)
    check_against_reference(q, k, v, Power(256), bias=LowRank(u.requires_grad_(), w.requires_grad_()))


@pytest.mark.parametrize("grid, table_heads", [((24, 40), 4), ((4, 8, 30), 1), ((960,), 4)])
def test_relative_position_bias(grid, table_heads):
    seq = math.prod(grid)
    q, k, v = make_inputs(2, seq, seq, 4, 2, 64, torch.bfloat16, DEVICE)
    table = torch.randn(table_heads, *(2 * g - 1 for g in grid), device=DEVICE).requires_grad_()
    check_against_reference(q, k, v, Causal(), bias=RelativePosition(table, grid))


def test_every_softmax_variant_at_once_head_dim_128():
    # softcap + sinks + learnable tensor bias + bitmask tiles: the largest kernels (shared memory
    # fallback to smaller tiles when the default does not fit).
    heads = 4
    q, k, v = make_inputs(1, 900, 1100, heads, 2, 128, torch.bfloat16, DEVICE)
    with torch.no_grad():
        q.mul_(3.0)
    check_against_reference(q, k, v, Power(64), softcap=8.0,
                            sinks=torch.randn(heads, device=DEVICE).requires_grad_(),
                            bias=TensorBias(torch.randn(1, heads, 900, 1100, device=DEVICE).requires_grad_()))


def test_fully_masked_rows_zero_output_finite_grads():
    heads, q_len, k_len = 4, 600, 700
    allowed = torch.rand(heads, q_len, k_len, device=DEVICE) < 0.2
    allowed[:, 100:140] = False
    q, k, v = make_inputs(1, q_len, k_len, heads, 2, 64, torch.bfloat16, DEVICE)
    pattern = FromMask(allowed)
    check_against_reference(q, k, v, pattern)
    o, lse = run(make_call(q, k, v, pattern))
    o.float().sum().backward()
    assert torch.all(o[:, 100:140] == 0) and torch.all(lse[:, :, 100:140] == -math.inf)
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_extreme_logits_no_nan():
    q, k, v = make_inputs(1, 1000, 1000, 2, 2, 64, torch.bfloat16, DEVICE)
    with torch.no_grad():
        q.mul_(40.0)
        k.mul_(40.0)          # |s| ~ 1e4 after scaling
    o, lse = run(make_call(q, k, v, Causal()))
    o.float().sum().backward()
    assert torch.isfinite(o).all() and torch.isfinite(lse).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
