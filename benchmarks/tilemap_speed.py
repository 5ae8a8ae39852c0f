"""Tile-map construction speed on CPU: pattern -> exact TileMap at long sequence lengths.

    OMP_NUM_THREADS=1 python benchmarks/tilemap_speed.py [--out benchmarks/results] [--repeats 9]

Times ``pattern.tile_map(S, S, 128, 128, num_heads)`` (median of ``--repeats`` runs after one
warm-up, one CPU thread) and writes ``<out>/<yyyy-mm-dd>-cpu-tilemap.json`` in the shared results
format. Target: ``Window(1024, 0)`` at S = 131072 under 50 ms.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch

from tessera.bench.report import results_path, write_results
from tessera.patterns import parse

# (spec, sequence length, heads)
CASES = [
    ("window:1024", 131072, 1),
    ("causal", 131072, 1),
    ("window:1024+sinks:4", 131072, 1),
    ("causal&window:4096", 131072, 1),
    ("dilated:64,4", 131072, 1),
    ("power:local=256", 131072, 1),
    ("window:2048+power:local=256", 131072, 1),
    ("blocked:2048", 131072, 1),
    ("strided:block=128,local=8,stride=8", 131072, 8),
    ("window:1024", 1048576, 1),
]
BLOCK = 128


def time_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for the results JSON")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per case (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = []
    for spec, seq, heads in CASES:
        pattern = parse(spec)
        ms = time_ms(lambda: pattern.tile_map(seq, seq, BLOCK, BLOCK, num_heads=heads), args.repeats)
        tiles = pattern.tile_map(seq, seq, BLOCK, BLOCK, num_heads=heads)
        case = f"{spec} S={seq} H={heads} tile={BLOCK}x{BLOCK}"
        print(f"{case:60s} {ms:9.2f} ms   listed {tiles.tile_density():.4%} of tiles")
        records.append({"suite": "tilemap", "case": case, "impl": "tessera", "direction": None,
                        "ms": round(ms, 4), "useful_tflops": None, "tokens_per_s": None, "tbps": None})
    device = torch.device("cpu")
    path = results_path(Path(args.out), device, "tilemap", datetime.date.today().isoformat())
    write_results(path, device, records)
    print(f"torch {torch.__version__}; results -> {path}")


if __name__ == "__main__":
    main()
