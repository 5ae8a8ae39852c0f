"""Linear-attention forwards as one launch (``overlap.OVERLAP_FORWARD``: simple GLA and the delta rule)
against the usual launches, in one process, alternating rounds; bf16, B = 2, H = 16, D = 128
(benchmarks/linear.py's inputs and timing).

    python benchmarks/gpu_overlap_ab.py --out DIR [--ops simple_gla delta_rule] [--T 16384 65536]
        [--rounds 2] [--tuned-from JSON ...]

Writes DIR/overlap_ab.json: per op, T, direction and round, tessera's ms with the overlap off and on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os

import torch
import triton

import linear
from tessera.bench.environment import device_name
from tessera.bench.timing import warm_up_gpu
from tessera.linear.triton import overlap, tuning


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--ops", nargs="+", default=["simple_gla", "delta_rule"])
    parser.add_argument("--T", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tuned-from", nargs="+", default=[], metavar="JSON")
    args = parser.parse_args()
    for path in args.tuned_from:
        linear.preload_choices(path)
    device = torch.device("cuda")
    warm_up_gpu(device)
    result = {"device": device_name(device), "torch": torch.__version__, "triton": triton.__version__,
              "date": datetime.date.today().isoformat(), "rows": []}
    for op in args.ops:
        fn = linear.tessera_fn(op)
        for T in args.T:
            q, k, v, extra = linear.make_inputs(op, T)
            for direction in ("fwd", "fwd+bwd"):
                for rnd in range(args.rounds):
                    row = {"op": op, "T": T, "direction": direction, "round": rnd}
                    for one_launch in (False, True):
                        overlap.OVERLAP_FORWARD = one_launch
                        row["one_launch" if one_launch else "separate"] = linear.time_fn(fn, q, k, v, extra,
                                                                                          direction)
                    overlap.OVERLAP_FORWARD = False
                    print(json.dumps(row), flush=True)
                    result["rows"].append(row)
                    result["tuned"] = tuning.chosen()
                    with open(os.path.join(args.out, "overlap_ab.json"), "w") as f:
                        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
