#!/usr/bin/env bash
# One call: the delta-rule forward against fla at T = 16384 (timed candidate choice), the GPU tests of
# the delta forward candidates added last, then gla and simple GLA forward+backward against fla.
# Carry .whl. Results under $OUT/delta and $OUT/gated (two linear JSON files), logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p "$OUT/delta" "$OUT/gated"
LINEAR_BENCH_ARGS="--out $OUT/delta --T 16384 --ops delta_rule --directions fwd --fla-unguarded" \
  TESSERA_LINEAR_TIMEOUT=140 bash benchmarks/gpu_run.sh linear
ids=()
for cfg in "0, 32, 4, 4" "0, 32, 2, 4" "0, 64, 2, 3" "0, 64, 4, 2"; do
  IFS=", " read -r k v w s <<< "$cfg"
  ids+=("tests/linear/test_gpu.py::test_every_launch_config_bf16[delta.state-LaunchConfig(block_k=$k, block_v=$v, num_warps=$w, num_stages=$s)]")
done
ids+=("tests/linear/test_gpu.py::test_every_launch_config_bf16[delta.output-LaunchConfig(block_k=64, block_v=128, num_warps=8, num_stages=3)]")
PYTHONPATH="$PWD/src" timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider "${ids[@]}" \
  > "$OUT/gpu-tests-delta-candidates.log" 2>&1
tail -n 1 "$OUT/gpu-tests-delta-candidates.log"
LINEAR_BENCH_ARGS="--out $OUT/gated --T 16384 --ops gla simple_gla --directions fwd+bwd --fla-unguarded" \
  TESSERA_LINEAR_TIMEOUT=300 bash benchmarks/gpu_run.sh linear
