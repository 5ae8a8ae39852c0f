"""Warp-stall table of one kernel from ``bash benchmarks/gpu_run.sh ncu``'s SASS CSV
(``ncu-CASE-sass.csv.gz``: Nsight Compute's source page, SASS with stall samples).

    python benchmarks/ncu_stalls.py ncu-3d-fwd-sass.csv.gz [--top 25] [--kernel _na_fwd]

Prints, per kernel section of the file: the share of all stall samples per reason
(``stall_*`` columns), then the instructions with the most samples and their top reasons.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
from collections import Counter


def sections(path: str):
    """``(kernel name, rows)`` per kernel section of the CSV (each section starts with a
    ``"Kernel Name"`` line and a header line)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        text = f.read()
    blocks = text.split('"Kernel Name",')
    for block in blocks[1:]:
        name, _, rest = block.partition("\n")
        rows = list(csv.DictReader(io.StringIO(rest)))
        yield name.strip().strip(",").strip('"'), rows


def _int(value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--kernel", default=None, help="only sections whose kernel name contains this")
    args = parser.parse_args()
    for name, rows in sections(args.path):
        if args.kernel and args.kernel not in name:
            continue
        reasons = [c for c in rows[0] if c.startswith("stall_") and "Not Issued" not in c]
        totals = Counter()
        for row in rows:
            for reason in reasons:
                totals[reason] += _int(row[reason])
        samples = sum(totals.values()) or 1
        print(f"== {name}: {samples} stall samples, {len(rows)} instructions")
        for reason, n in totals.most_common():
            if n:
                print(f"   {reason:24s} {100 * n / samples:5.1f}%")
        ranked = sorted(rows, key=lambda r: -_int(r["Warp Stall Sampling (All Samples)"]))
        for row in ranked[:args.top]:
            n = _int(row["Warp Stall Sampling (All Samples)"])
            top = sorted(((_int(row[r]), r[6:]) for r in reasons), reverse=True)[:3]
            why = ", ".join(f"{r} {v}" for v, r in top if v)
            print(f"   {100 * n / samples:5.1f}%  {row['Source'].strip()[:60]:60s} {why}")


if __name__ == "__main__":
    main()
