"""The vision benchmark's window partitions and its SDPA-on-windows rows, on CPU."""

import math

import pytest
import torch

import tessera
from tessera.bench.attention import Case, _Inputs, _sdpa_fn, _step, maxvit_grid_windows, swin_windows, vision_cases
from tessera.patterns.vision import MaxViTGrid, Swin


def _group_mask(index: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.zeros(n, n, dtype=torch.bool)
    for row in index.tolist():
        mask[torch.tensor(row)[:, None], torch.tensor(row)[None, :]] = True
    return mask


@pytest.mark.parametrize("pattern, groups", [
    (Swin((8, 8), 4), swin_windows((4, 4))),
    (Swin((4, 6, 6), (2, 3, 3)), swin_windows((2, 3, 3))),
    (MaxViTGrid((8, 12), (2, 3)), maxvit_grid_windows((2, 3))),
])
def test_windows_partition_the_pattern_and_sdpa_on_them_is_the_attention(pattern, groups):
    grid = pattern.grid
    n = math.prod(grid)
    index = groups(grid)
    assert torch.equal(index.flatten().sort().values, torch.arange(n))
    assert torch.equal(_group_mask(index, n), pattern.dense_mask(n, n)[0])
    case = Case("windows", 2, 2, n, 16, pattern=lambda device: pattern, impls=("sdpa-flash",), windows=(grid, groups))
    inp = _Inputs(case, torch.device("cpu"), torch.float64)
    run = _sdpa_fn(case, pattern, inp, "sdpa-flash")
    inp.require_grad(False)
    o = run()                                               # [B * windows, H, tokens per window, D]
    per_window = o.view(2, index.shape[0], 2, index.shape[1], 16).transpose(2, 3).flatten(1, 2)
    got = torch.empty_like(inp.q)
    got[:, index.flatten()] = per_window
    want = tessera.attention(inp.q, inp.k, inp.v, pattern=pattern, backend="reference")
    assert torch.allclose(got, want, rtol=0, atol=1e-12)
    _step(run, inp, "fwd+bwd")()                            # gradients reach the window leaves
    assert all(t.requires_grad for t in run.leaves)


def test_vision_cases_build():
    cases = vision_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    for case in cases:
        if case.pattern is not None:
            case.pattern(torch.device("cpu")).check_lengths(case.seq, case.seq, case.heads)
    baselines = {(c.seq, c.batch, c.heads, c.head_dim) for c in cases if c.name.startswith("dense baseline")}
    assert {(c.seq, c.batch, c.heads, c.head_dim) for c in cases} == baselines


@pytest.mark.parametrize("name", ["2-D 128x128 k17", "2-D 128x128 k17 dil2", "2-D 100x100 k17 padded"])
def test_tile_map_speedup_scaled_to_the_whole_problem_counts_its_tiles(name):
    from tessera.bench.attention import dense_share, natten_cases, tiled_problem
    from tessera.patterns import predicted_speedup
    from tessera.patterns.neighborhood import PARTIAL_COST
    case = next(c for c in natten_cases() if c.name == name)
    tiled, groups = tiled_problem(case, torch.device("cpu"))
    seq = tiled.layout.size
    tiles = tiled.tile_map(seq, seq, 64, 64, 1)
    listed, full = int(tiles.kv_count.sum()), int(tiles.kv_full.sum())
    # Every group runs the same tile map; the whole problem's dense attention has
    # (case.seq / 64) ** 2 tile pairs (fractional where 64 does not divide it).
    whole = (case.seq / 64) ** 2 / (groups * (full + PARTIAL_COST * (listed - full)))
    got = dense_share(case, groups, seq) * predicted_speedup(tiled, seq, seq, 64, 64)
    assert got == pytest.approx(whole, rel=1e-12)
