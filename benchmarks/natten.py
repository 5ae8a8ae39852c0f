"""N-D neighborhood benchmark (the N-D issue's suite) -> one results JSON.

    python benchmarks/natten.py --out benchmarks/results [--only SUBSTRING ...] [--impls tessera ...]
        [--grid-order auto|on|off --suite natten-grid-order-on] [--graph]

GPU only: tessera (tessera.natten, tiled token order chosen automatically, permutation included
in the time; one case also row-major) against FlexAttention with the same mask in row-major order
("flex") and in tessera's tiled order ("flex-tiled"), and dense cuDNN baselines. bf16, H = 16.
The results file's notes give, per case with a tiled layout, the ideal speedup over dense
(1 / density), the tile-map prediction (``predicted_speedup``; for cases whose forward runs on
key boxes also ``key_boxes.predicted_speedup``) and the measured forward and
forward+backward speedups over tessera's own dense kernel at the same shape with their fraction
of the ideal. ``--graph`` adds each N-D case's rows replayed from CUDA graphs, GPU time without the
host (``tessera.bench.timing.graph_replay_ms``), and their Flex ratios to the notes.
"""

from __future__ import annotations

import argparse
import datetime
import json
from dataclasses import replace
from pathlib import Path

import torch

from tessera.bench.attention import GRAPH_SUFFIX, dense_share, natten_cases, run_case, tiled_problem
from tessera.bench.timing import warm_up_gpu
from tessera.bench.report import print_table, results_path, write_results
from tessera.kernels.gluon import key_boxes
from tessera.kernels.triton import forward_route, masks
from tessera.kernels.triton.backend import forward_tiles
from tessera.kernels.triton.flash_fwd import grid_box
from tessera.patterns import Neighborhood, predicted_speedup


def _own_dense_ms(records: list[dict], seq: int, dim: int, direction: str):
    name = f"dense baseline S={seq} B=1 H=16 D={dim}"
    for r in records:
        if r["case"] == name and r["impl"] == "tessera" and r["direction"] == direction and r["ms"]:
            return r["ms"]
    return None


def _ms(records: list[dict], case: str, impl: str, direction: str):
    return next((r["ms"] for r in records if r["case"] == case and r["impl"] == impl
                 and r["direction"] == direction and r["ms"]), None)


def _boxes_prediction(tiled, seq: int, groups: int):
    """``(speedup, query tile text)`` of ``key_boxes.predicted_speedup`` where the forward runs
    on key boxes (``forward_route.cheaper_on_boxes`` on the 64 x 64 plan; undilated), else None."""
    if groups != 1:
        return None
    plan = masks.get_plan(tiled, seq, seq, 64, 64, 1, torch.device("cpu"))
    if plan.mask_mode != masks.MASK_NEIGHBORHOOD or not forward_route.cheaper_on_boxes(plan):
        return None
    tile = grid_box(key_boxes.box_plan(plan), 64)[3 - len(tiled.layout.grid):]
    return key_boxes.predicted_speedup(plan), "x".join(map(str, tile))


def speedup_notes(cases, records: list[dict]) -> list[str]:
    """One line per tiled case: ideal, predicted and measured speedups over tessera's dense, and the
    ratios to Flex row-major and Flex tiled (Flex ms / tessera ms) that the N-D issue's targets name."""
    notes = []
    for case in cases:
        if case.na is None or case.na.get("layout") != "auto":
            continue
        na = case.na
        ideal = 1.0 / Neighborhood(na["grid"], na["kernel"], na["dilation"], na["stride"]).density(case.seq, case.seq)
        tiled, groups = tiled_problem(case, torch.device("cpu"))
        seq = tiled.layout.size
        block_m, block_n = forward_tiles(tiled, seq, seq, case.heads, case.head_dim)
        share = dense_share(case, groups, seq)
        predicted = share * predicted_speedup(tiled, seq, seq, block_m, block_n)
        parts = [f"{case.name}: ideal {ideal:.1f}x, predicted {predicted:.1f}x ({block_m}x{block_n} tiles)"]
        on_boxes = _boxes_prediction(tiled, seq, groups)
        if on_boxes is not None:
            parts[0] += f", {on_boxes[0] * share:.1f}x on key boxes ({on_boxes[1]} query tiles)"
        for direction in ("fwd", "fwd+bwd"):
            ours = _ms(records, case.name, "tessera", direction)
            dense = _own_dense_ms(records, case.seq, case.head_dim, direction)
            if ours and dense:
                measured = dense / ours
                parts.append(f"measured {direction} {measured:.1f}x ({measured / ideal:.2f} of ideal)")
            for impl in ("flex", "flex-tiled"):
                theirs = _ms(records, case.name, impl, direction)
                if ours and theirs:
                    parts.append(f"{direction} {theirs / ours:.2f}x {impl}")
                ours_graph = _ms(records, case.name + GRAPH_SUFFIX, "tessera", direction)
                theirs_graph = _ms(records, case.name + GRAPH_SUFFIX, impl, direction)
                if ours_graph and theirs_graph:
                    parts.append(f"{direction} {theirs_graph / ours_graph:.2f}x {impl} in CUDA graphs")
        notes.append(", ".join(parts))
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for the results JSON")
    parser.add_argument("--only", nargs="*", default=None, help="run only cases whose name contains one of these")
    parser.add_argument("--impls", nargs="*", default=None,
                        help="run only these implementations (dense baselines keep theirs)")
    parser.add_argument("--suite", default="natten", help="suite name in the results file name")
    parser.add_argument("--graph", action="store_true",
                        help="also time every N-D case's implementations replayed from CUDA graphs (GPU time "
                             "alone; case names end in ' [cuda graph]')")
    parser.add_argument("--grid-order", choices=("auto", "on", "off"), default="auto",
                        help="whether tessera addresses the tiled order in-kernel instead of reordering q, k, v "
                             "and o (tessera.natten.GRID_ORDER_IN_KERNEL; auto: its rule); with on / off, "
                             "name the suite apart (--suite natten-grid-order-on)")
    args = parser.parse_args()
    if args.grid_order != "auto":
        import tessera.natten
        tessera.natten.GRID_ORDER_IN_KERNEL = args.grid_order == "on"
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/natten.py needs a CUDA GPU (tests/test_natten.py checks correctness on CPU)")
    device = torch.device("cuda")
    cases = natten_cases()
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    if args.impls:
        cases = [c if c.na is None else replace(c, impls=tuple(i for i in c.impls if i in args.impls))
                 for c in cases]
    path = results_path(Path(args.out), device, args.suite, datetime.date.today().isoformat())
    records, done = [], []
    warm_up_gpu(device)
    # Written after every case, so a run stopped by a time limit keeps what it measured.
    for case in cases:
        print(case.name)
        records += run_case(case, device, torch.bfloat16, graph=args.graph and case.na is not None)
        done.append(case)
        payload = write_results(path, device, records)
        payload["notes"] = speedup_notes(done, records)
        path.write_text(json.dumps(payload, indent=1) + "\n")
    print_table(payload)
    for note in payload["notes"]:
        print(note)
    print(f"results -> {path}")


if __name__ == "__main__":
    main()
