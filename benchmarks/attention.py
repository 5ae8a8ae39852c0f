"""Side-by-side attention benchmark (the kernel issue's suite) -> one results JSON.

    python benchmarks/attention.py --out benchmarks/results [--only SUBSTRING ...]

On a GPU this runs the H100 suite (bf16, D = 128, H = 16): tessera (Triton backend, and its auto
dispatch on dense rows) against SDPA cuDNN, SDPA flash and compiled FlexAttention with the same
mask; on CPU the small suite. Prints the comparison table last.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch

from tessera.bench.attention import cpu_cases, gpu_cases, run_case
from tessera.bench.report import print_table, results_path, write_results
from tessera.bench.timing import warm_up_gpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for the results JSON")
    parser.add_argument("--only", nargs="*", default=None, help="run only cases whose name contains one of these")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = gpu_cases() if device.type == "cuda" else cpu_cases()
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    path = results_path(Path(args.out), device, "attention", datetime.date.today().isoformat())
    records = []
    warm_up_gpu(device)
    # Written after every case, so a run stopped by a time limit keeps what it measured.
    for case in cases:
        print(case.name)
        records += run_case(case, device, dtype)
        payload = write_results(path, device, records)
    print_table(payload)
    print(f"results -> {path}")


if __name__ == "__main__":
    main()
