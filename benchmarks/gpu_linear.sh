#!/bin/bash
# Linear-attention GPU check and benchmark, one device call:
#   run(command="bash benchmarks/gpu_linear.sh", carry=[".whl"])
# Installs the carried fla wheels (optional), runs the GPU tests, then benchmarks/linear.py.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/linear-out}
mkdir -p "$OUT"
if ls .whl/fla_core-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/fla_core-*.whl .whl/flash_linear_attention-*.whl && export PYTHONPATH=/tmp/site:$PWD/src
fi
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest tests/linear/test_gpu.py -m gpu -q -s -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log"
# Results are written after every case, so a run cut short by the limit keeps what it measured.
timeout ${LINEAR_BENCH_TIMEOUT:-400} python3 benchmarks/linear.py --out "$OUT" ${LINEAR_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
