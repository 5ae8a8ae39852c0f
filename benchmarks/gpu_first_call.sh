#!/usr/bin/env bash
# First device call of a session: kernel GPU tests, Power tile-band check, backward profile and
# the N-D neighborhood suite, each under its own time limit. Everything lands under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/tessera-first}"
mkdir -p "$OUT"
TEST_TIMEOUT=${TEST_TIMEOUT:-150} OUT="$OUT" timeout 330 bash benchmarks/gpu_kernel_next.sh tests power \
  > "$OUT/kernel-next.log" 2>&1
tail -5 "$OUT/kernel-next.log"
timeout 100 python3 benchmarks/gpu_bwd_profile.py --out "$OUT" > "$OUT/bwd-profile.log" 2>&1
tail -3 "$OUT/bwd-profile.log"
timeout ${NATTEN_TIMEOUT:-150} python3 benchmarks/natten.py --out "$OUT" > "$OUT/natten.log" 2>&1
tail -30 "$OUT/natten.log"
