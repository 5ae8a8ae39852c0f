#!/usr/bin/env bash
# Device-machine driver for the Triton flash kernels: GPU tests, a correctness check, timings.
#   [TEST_K='pytest -k expression'] bash benchmarks/gpu_kernel_dev.sh [tests] [check] [sweep] [compare] [noflex]
# Writes logs and kernel_dev.json under $OUT (default /tmp/kernel_dev).
set -o pipefail
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src:$PWD/tests/kernels${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/kernel_dev}
mkdir -p "$OUT"
steps=" $* "
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if [[ $steps == *" tests "* ]]; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest tests/kernels/test_flash_gpu.py -x -q -p no:cacheprovider \
    ${TEST_K:+-k "$TEST_K"} 2>&1 | tee "$OUT/tests.log" | tail -40
fi
args=()
[[ $steps == *" check "* ]] && args+=(--check)
[[ $steps == *" sweep "* ]] && args+=(--sweep)
[[ $steps == *" compare "* ]] && args+=(--compare)
[[ $steps == *" noflex "* ]] && args+=(--no-flex)
if (( ${#args[@]} )); then
  python3 benchmarks/kernel_dev.py "${args[@]}" --out "$OUT/kernel_dev.json" 2>&1 | tee "$OUT/bench.log" \
    | grep -v "^sweep" | tail -60
  grep "^sweep" "$OUT/bench.log" | sort -k5 -n | head -40 || true
fi
