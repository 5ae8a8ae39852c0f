#!/usr/bin/env bash
# GPU tests (-m gpu) in parallel groups: most of their time is Triton compiling kernel variants on
# the CPU, so groups in separate processes share the GPU and finish several times sooner.
#   bash benchmarks/gpu_tests.sh            (logs under $OUT; exit status 1 if any group failed)
# Env: GPU_TEST_TIMEOUT (s per group, default 300); GPU_TEST_GROUPS (default
# "patterns neighborhood variants other layers gluon"); GPU_TEST_LINEAR=1 adds the group "linear".
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/tessera-gpu-tests}"
mkdir -p "$OUT"
flash=tests/kernels/test_flash_gpu.py

run_group() {  # run_group NAME: pytest on that group's tests, log in $OUT/gpu-tests-NAME.log
  local name=$1
  local args
  case "$name" in
    patterns) args=("$flash" -k patterns_forward_backward) ;;
    neighborhood) args=("$flash" -k neighborhood) ;;
    variants) args=("$flash" -k "not patterns_forward_backward and not neighborhood") ;;
    other) args=(tests/kernels/test_row_dot.py tests/patterns/test_flex.py tests/test_api.py tests/test_natten.py) ;;
    linear) args=(tests/linear) ;;
    layers) args=(tests/nn tests/linear/test_noncausal.py) ;;
    gluon) args=(tests/kernels/test_gluon_gpu.py) ;;
    *) echo "unknown group $name" > "$OUT/gpu-tests-$name.log"; return 2 ;;
  esac
  timeout "${GPU_TEST_TIMEOUT:-300}" python3 -m pytest -m gpu -q -rA -p no:cacheprovider "${args[@]}" \
    > "$OUT/gpu-tests-$name.log" 2>&1
}

read -r -a names <<< "${GPU_TEST_GROUPS:-patterns neighborhood variants other layers gluon}"
if [[ "${GPU_TEST_LINEAR:-0}" == 1 ]]; then names+=(linear); fi
for name in "${names[@]}"; do run_group "$name" & done
status=0
for _ in "${names[@]}"; do wait -n || status=1; done
for name in "${names[@]}"; do echo "[$name] $(tail -1 "$OUT/gpu-tests-$name.log")"; done
exit $status
