#!/bin/bash
# Linear-attention kernels vs fla, per-kernel breakdown and launch-configuration sweep, one device call:
#   run(command="bash benchmarks/gpu_linear_sweep.sh", carry=[".whl"])
# Installs the carried fla wheels (optional; rows record fla as unavailable without them), then runs
# benchmarks/gpu_linear_sweep.py, which writes $OUT/gpu_linear_sweep.json after every row.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/linear-sweep-out}
mkdir -p "$OUT"
if ls .whl/fla_core-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/fla_core-*.whl .whl/flash_linear_attention-*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
timeout ${SWEEP_TIMEOUT:-290} python3 benchmarks/gpu_linear_sweep.py --out "$OUT" ${SWEEP_ARGS:-} 2>&1 | tee "$OUT/sweep.log"
