"""Upper bounds of the N-D suite's speedups from the tile maps alone (CPU, no GPU needed).

    python benchmarks/natten_bounds.py --results benchmarks/results/2026-11-30-h200-natten.json

For each tiled case of ``tessera.bench.attention.natten_cases`` (the layout ``tessera.natten`` picks
on a GPU), the kernels visit every key tile listed for a query tile, whatever part of it the mask
keeps. At 64 x 64 tiles (the kernels' tiles on neighborhood maps) the case can therefore run at most
``dense tiles / listed tiles`` times faster than a dense kernel that processes tiles at the same rate
(``max x``; ``of ideal``: that bound over the ideal speedup ``1 / density``, the ceiling of the issue's
"fraction of ideal" at these tiles).
With the results file's own dense times (tessera's dense kernel at the case's length) and Flex's
row-major times, the script prints per direction:

- ``bound``: the best time if every listed tile ran at the dense kernel's tile rate, and the ratio to
  Flex row-major it would give;
- ``needed``: the fraction of that dense tile rate the masked tiles must reach for the issue's targets
  (forward 5x Flex row-major, forward+backward 3x, set for the 2-D and 3-D neighborhoods; printed for
  every case); above 1.0 the target is out of reach for these tiles unless the masked tiles run faster
  than the dense kernel.
"""

from __future__ import annotations

import argparse
import json

import torch

from tessera.bench.attention import natten_cases, tiled_problem
from tessera.patterns import Neighborhood

TILE = 64
TARGETS = {"fwd": 5.0, "fwd+bwd": 3.0}


def listed_tiles(case) -> tuple[float, int]:
    """Mean key tiles listed per query tile, and key tiles per row of a dense map over the whole
    sequence, at TILE x TILE (split into dilation groups as tessera runs it: ``tiled_problem``)."""
    tiled, groups = tiled_problem(case, torch.device("cpu"))
    seq = case.seq // groups
    tiles = tiled.tile_map(seq, seq, TILE, TILE)
    return tiles.kv_count.float().mean().item(), -(-case.seq // TILE)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", required=True, help="a natten suite results JSON (benchmarks/natten.py)")
    args = parser.parse_args()
    with open(args.results) as f:
        records = json.load(f)["records"]
    ms = {(r["case"], r["impl"], r["direction"]): r["ms"] for r in records if r["ms"]}
    print(f"{'case':34s} {'tiles':>12s} {'max x':>6s} {'of ideal':>8s}  {'dir':8s} {'dense ms':>9s} {'bound ms':>9s} "
          f"{'flex ms':>8s} {'bound/flex':>10s} {'needed':>7s}")
    for case in natten_cases():
        if case.na is None or case.na.get("layout") != "auto":
            continue
        listed, dense_tiles = listed_tiles(case)
        na = case.na
        density = Neighborhood(na["grid"], na["kernel"], na["dilation"], na["stride"]).density(case.seq, case.seq)
        of_ideal = dense_tiles / listed * density
        for direction, target in TARGETS.items():
            dense = ms.get((f"dense baseline S={case.seq} B=1 H=16 D={case.head_dim}", "tessera", direction))
            flex = ms.get((case.name, "flex", direction))
            if dense is None or flex is None:
                continue
            bound = dense * listed / dense_tiles
            needed = bound / (flex / target)
            print(f"{case.name:34s} {listed:5.1f}/{dense_tiles:<6d} {dense_tiles / listed:6.1f} {of_ideal:8.2f}  "
                  f"{direction:8s} "
                  f"{dense:9.3f} {bound:9.3f} {flex:8.3f} {flex / bound:10.2f} {needed:7.2f}")


if __name__ == "__main__":
    main()
