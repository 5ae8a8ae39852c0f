"""N-D neighborhood benchmark (the N-D issue's suite) -> one results JSON.

    python benchmarks/natten.py --out benchmarks/results [--only SUBSTRING ...]

GPU only: tessera (tessera.natten, tiled token order chosen automatically, permutation included
in the time; one case also row-major) against FlexAttention with the same mask in row-major order
("flex") and in tessera's tiled order ("flex-tiled"), and dense cuDNN baselines. bf16, H = 16.
Prints the comparison table and each case's predicted speedup (tile map only) last.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch

from tessera.bench.attention import natten_cases, run_case, tiled_pattern
from tessera.bench.report import print_table, results_path, write_results
from tessera.patterns import predicted_speedup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for the results JSON")
    parser.add_argument("--only", nargs="*", default=None, help="run only cases whose name contains one of these")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/natten.py needs a CUDA GPU (tests/test_natten.py checks correctness on CPU)")
    device = torch.device("cuda")
    cases = natten_cases()
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    path = results_path(Path(args.out), device, "natten", datetime.date.today().isoformat())
    records, predictions = [], []
    # Written after every case, so a run stopped by a time limit keeps what it measured.
    for case in cases:
        print(case.name)
        records += run_case(case, device, torch.bfloat16)
        payload = write_results(path, device, records)
        if case.na is not None and case.na.get("layout") == "auto":
            tiled = tiled_pattern(case, torch.device("cpu"))
            predictions.append((case.name, predicted_speedup(tiled, case.seq, case.seq)))
    print_table(payload)
    for name, speedup in predictions:
        print(f"predicted speedup over dense (tile map only): {name}: {speedup:.2f}x")
    print(f"results -> {path}")


if __name__ == "__main__":
    main()
