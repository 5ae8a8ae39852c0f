"""Which backward calls overlap dq and dk/dv on two streams (no kernel runs): by the listed work
of the plan, over batch and heads; the N-D suite's 2-D step stays on one stream, its 3-D one
takes two."""

from __future__ import annotations

import math
from unittest import mock

import torch

from tessera.kernels.triton import flash_bwd, masks, streams
from tessera.natten import _call_plan


def _tiled_plan(grid, kernel, stride=1):
    pattern = _call_plan(grid, kernel, 1, stride, False, "auto", torch.device("cuda")).grid_order
    size = math.prod(grid)
    return masks.build_plan(pattern, size, size, 64, 64, 16, torch.device("cpu"))


def test_suite_steps_2d_on_one_stream_3d_on_two():
    two_d = _tiled_plan((128, 128), (17, 17))
    three_d = _tiled_plan((16, 48, 48), (5, 13, 13))
    assert not flash_bwd.overlap_pays(two_d, 1, 16, 256)
    assert flash_bwd.overlap_pays(three_d, 1, 16, 256)
    # Work grows with batch, heads and head dims.
    assert flash_bwd.overlap_pays(two_d, 4, 16, 256)
    assert not flash_bwd.overlap_pays(three_d, 1, 2, 256)


def test_work_counts_each_head_once_with_per_head_maps():
    plan = masks.build_plan(None, 4096, 4096, 64, 64, 4, torch.device("cpu"))
    listed = plan.listed_pairs()
    assert listed == 64 * 64
    work = listed * 4 * 64 * 64 * 256
    with mock.patch.object(flash_bwd, "OVERLAP_MIN_WORK", work):
        assert flash_bwd.overlap_pays(plan, 1, 4, 256)
        assert not flash_bwd.overlap_pays(plan, 1, 2, 256)
        plan.map_heads = 4                     # a per-head map lists every head's tiles itself
        plan._listed = listed * 4
        assert flash_bwd.overlap_pays(plan, 1, 4, 256)


def test_no_side_stream_off_cuda():
    assert not streams.possible(torch.device("cpu"))
    assert streams.fork(torch.device("cpu")) is None
