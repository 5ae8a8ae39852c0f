"""Which float32 "tf32x3" launches fail on the GPU? (The low-rank test case hit an illegal memory
access with ``TESSERA_FP32_PRECISION=tf32x3``; see NOTES.md, tenth session.) GPU only.

Each case runs in its own process (an illegal memory access ends the CUDA context): the low-rank
test's shapes (B = 2, 700 x 900, 4 query and 2 kv heads, D = 128, ``Power(256)``), with and
without the rank-3 bias, forward only or forward and backward, at a forced forward config or the
default one, checked against the float64 reference (``tests/kernels/flash_cases.py``).

    python benchmarks/gpu_fp32_bisect.py --out DIR

Writes ``fp32_bisect.json`` after every case (``rows``: case, returncode, the last lines of output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASE = r"""
import math, sys, torch
sys.path.insert(0, "tests/kernels")
from flash_cases import check_against_reference, make_inputs
from tessera.bias import LowRank
from tessera.kernels.triton import backend, tuning
from tessera.kernels.triton.tuning import KernelConfig
from tessera.patterns import Power
backend.FP32_PRECISION = "tf32x3"
fwd, low_rank, backward = {fwd!r}, {low_rank!r}, {backward!r}
if fwd:
    tuning.OVERRIDES["fwd"] = KernelConfig(*fwd)
heads = 4
q, k, v = make_inputs(2, 700, 900, heads, 2, 128, torch.float32, "cuda")
extra = {{}}
if low_rank:
    u = torch.randn(2, heads, 700, 3, device="cuda") / math.sqrt(3)
    w = torch.randn(2, heads, 900, 3, device="cuda")
    extra["bias"] = LowRank(u.requires_grad_(), w.requires_grad_())
print(check_against_reference(q, k, v, Power(256), backward=backward, **extra))
torch.cuda.synchronize()
"""

CASES = [
    # (forced forward config or None, low-rank bias, backward)
    (None, True, False), (None, True, True), (None, False, True),
    ((128, 32, 8, 2), True, False), ((128, 32, 8, 2), False, False),
    ((64, 64, 4, 2), True, False), ((64, 32, 4, 2), True, False), ((64, 32, 4, 2), True, True),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    rows = []
    for fwd, low_rank, backward in CASES:
        code = CASE.format(fwd=fwd, low_rank=low_rank, backward=backward)
        try:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  timeout=args.timeout)
            rc, text = done.returncode, (done.stdout + done.stderr)
        except subprocess.TimeoutExpired:
            rc, text = None, "timeout"
        row = {"fwd": fwd, "low_rank": low_rank, "backward": backward, "returncode": rc,
               "tail": text.strip().splitlines()[-3:]}
        print(json.dumps(row), flush=True)
        rows.append(row)
        with open(os.path.join(args.out, "fp32_bisect.json"), "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
