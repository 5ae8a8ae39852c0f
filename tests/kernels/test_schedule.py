"""Launch orders (no kernel runs): permutations of the plan's entries in decreasing order of
listed work, per key/value head for dk/dv; chosen only where the longest program is long
against an SM's share of the launch."""

from __future__ import annotations

import torch

from tessera.kernels.triton import masks, schedule
from tessera.patterns import Causal, Strided


def _costs(lists: masks.TileLists) -> torch.Tensor:
    return (lists.full_count.float() + schedule.PARTIAL_TILE_COST * lists.part_count.float()).flatten()


def test_dense_maps_keep_the_plain_order():
    plan = masks.build_plan(None, 1000, 1000, 64, 64, 4, torch.device("cpu"))
    assert schedule.row_schedule(plan, 1, 4) is None and schedule.col_schedule(plan, 1, 4) is None
    # Their kernels are compiled without the run-time choice of order.
    assert not schedule.reorderable(plan) and not schedule.reorderable(plan, 4)
    causal = masks.build_plan(Causal(), 1000, 1000, 64, 64, 4, torch.device("cpu"))
    assert schedule.reorderable(causal) and schedule.reorderable(causal, 4)


def test_causal_rows_longest_first_on_small_launches_plain_on_large_ones():
    plan = masks.build_plan(Causal(), 1024, 1024, 64, 64, 4, torch.device("cpu"))
    rows = schedule.row_schedule(plan, 3, 4)
    assert rows.heads == 1
    # Causal with aligned tiles: query tile m lists m + 1 tiles, so the order is m descending.
    assert rows.order.tolist() == list(range(15, -1, -1))
    grid, reps = rows.launch(batch=3, kernel_heads=4)
    assert reps == 12 and grid == (16 * 12,)
    # 16k causal, batch 2, 16 heads: the longest row is 6% of an SM's share, the plain grid stays.
    big = masks.build_plan(Causal(), 16384, 16384, 128, 128, 16, torch.device("cpu"))
    assert schedule.row_schedule(big, 2, 16) is None


def test_strided_columns_longest_first_summed_over_each_kv_group():
    heads, kv_heads, n = 8, 2, 2048
    plan = masks.build_plan(Strided(block=64, local_blocks=2, stride=4), n, n, 64, 64, heads,
                            torch.device("cpu"))
    cols = schedule.col_schedule(plan, 2, kv_heads)
    assert cols.heads == kv_heads
    per_entry = _costs(plan.cols).view(kv_heads, heads // kv_heads, -1).sum(1).flatten()
    order = cols.order.long()
    assert sorted(order.tolist()) == list(range(per_entry.numel()))
    assert bool((per_entry[order][1:] <= per_entry[order][:-1]).all())
    # The long columns (a key block in a head's shard) come first; the last ones are short.
    assert per_entry[order[0]] > 4 * per_entry[order[-1]]
    grid, reps = cols.launch(batch=2, kernel_heads=kv_heads)
    assert reps == 2 and grid == (per_entry.numel() * 2,)


def test_benchmark_strided_dkdv_is_the_long_tail_case():
    # S2 strided at S = 32768, 16 heads: dk/dv columns in a head's shard span the rest of the
    # sequence (longest first); its forward rows do not (plain grid).
    plan = masks.build_plan(Strided(block=128, local_blocks=8, stride=8), 32768, 32768, 64, 128, 16,
                            torch.device("cpu"))
    assert schedule.col_schedule(plan, 1, 16) is not None
    assert schedule.row_schedule(plan, 1, 16) is None


def test_disabled_gives_the_plain_order(monkeypatch):
    monkeypatch.setattr(schedule, "ENABLED", False)
    plan = masks.build_plan(Causal(), 512, 512, 64, 64, 1, torch.device("cpu"))
    assert schedule.row_schedule(plan, 1, 1) is None and schedule.col_schedule(plan, 1, 1) is None
    assert not schedule.reorderable(plan)


def test_launch_arguments_plain_and_longest_first():
    dense = masks.build_plan(None, 1000, 1000, 64, 64, 4, torch.device("cpu"))
    plain = schedule.row_launch(dense, 2, 4)
    assert plain.grid == (16, 8) and (plain.reps, plain.heads, plain.scheduled) == (1, 1, 0)
    assert not plain.may_schedule and plain.order.dtype == torch.int32
    strided = masks.build_plan(Strided(block=64, local_blocks=2, stride=4), 2048, 2048, 64, 64, 8,
                               torch.device("cpu"))
    cols = schedule.col_launch(strided, 2, 2)
    found = schedule.col_schedule(strided, 2, 2)
    assert cols.scheduled == 1 and cols.may_schedule and cols.heads == found.heads == 2
    assert cols.grid == found.launch(2, 2)[0] and torch.equal(cols.order, found.order)
