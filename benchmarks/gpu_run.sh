#!/usr/bin/env bash
# One call on the GPU machine: the GPU tests, then the side-by-side benchmarks. Logs and results
# JSON land under $OUT (the device tool brings them back); copy the JSON into benchmarks/results/.
#   bash benchmarks/gpu_run.sh [tests] [tests-quick] [tests-args] [tests-layers] [streams-ab] [schedule-ab] [attention] [natten]
#                              [natten-reorder] [natten-profile] [natten-configs] [host-overhead] [host-breakdown] [linear] [tests-linear] [linear-final] [linear-accept]
#                              [linear-profile] [state-sweep] [state-ab] [linear-host] [linear-delta] [candidates] [kernel-next]
#                              [launch-cost] [blocked-dense] [fp32-ab] [fp32-bisect] [step-jitter] [autograd-floor]
#                              [backward-profile] [gluon-forward] [gluon-backward] [route-host] [natten-host] [padded-grid] [padded-sweep] [padded-dilated] [natten-additional-kv] [vision] [vision-profile] [vision-wide-ab] [vision-in-kernel-ab] [vision-row-map-ab] [vision-min-gain-ab] [vision-fold-ab] [fold-configs] [token-copies] [tiled-configs] [natten-compile] [forward-ablation] [forward-shared] [ncu]
#   (linear, linear-final, linear-accept, linear-profile, linear-delta: carry .whl for fla)
#   (default: tests attention natten linear; NATTEN_ARGS / VISION_ARGS / NATTEN_HOST_ARGS: extra arguments of
#    benchmarks/natten.py / vision.py / gpu_natten_host.py)
# Triton's cache (compiled kernels, and fla's autotuning timings through Triton's `cache_results`) is
# kept per GPU model: at exit its cubins and JSON files are packed into $OUT/<model>.tar.xz.<n> (15 MB
# parts; only what this call wrote when the whole cache needs more than three parts). Copy those parts into
# .triton-cache/ here and carry .triton-cache: the next call unpacks them and compiles (and times fla's
# configs) only what is new, where a fresh machine would spend most of a call compiling.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/tessera-gpu-out}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
steps="${*:-tests attention natten linear}"
# Earlier linear results whose timed launch choices the linear steps start from (oldest first; files
# timed on another GPU model are skipped, keys not in them and kernels named in LINEAR_RETUNE are timed).
linear_tuned="${LINEAR_TUNED:-$(ls benchmarks/results/2026-11-30-h200-linear-[3-9].json benchmarks/results/2026-11-30-h200-linear-1[24].json)}"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
gpu_model=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr -c 'A-Za-z0-9\n' '_')
export TRITON_CACHE_DIR="$PWD/.triton-cache/$gpu_model"
pack="$gpu_model.tar.xz"
if compgen -G ".triton-cache/$pack.*" >/dev/null; then
  cat ".triton-cache/$pack".* | xz -d | tar -C .triton-cache -xf - && rm -f ".triton-cache/$pack".*
  echo "triton cache: $(find "$TRITON_CACHE_DIR" -type f | wc -l) files unpacked"
fi
mkdir -p "$TRITON_CACHE_DIR"
call_start=$(mktemp)
keep_triton_cache() {
  # A cached kernel loads from its cubin and its two JSON files (metadata, group); the IR files,
  # five sixths of the bytes, stay behind. Over three parts, only this call's kernels are kept.
  local since=()
  while :; do
    rm -f "$OUT/$pack".*
    (cd .triton-cache && find "$gpu_model" -type f \( -name '*.cubin' -o -name '*.json' \) "${since[@]}" -print0 \
      | tar --null -T - -cf -) | xz -T0 -3 | split -b 15M -d -a 1 - "$OUT/$pack."
    if ! compgen -G "$OUT/$pack.3" >/dev/null || [[ ${#since[@]} -gt 0 ]]; then break; fi
    since=(-newer "$call_start")
  done
  ls -l "$OUT/$pack".*
}
trap keep_triton_cache EXIT
vision_ab() {
  # benchmarks/vision.py (VISION_AB_ARGS, else VISION_ARGS) with the switch $1 at each of the values
  # after $2 (default: 1, then 0); results under $OUT/$2-<value>.
  local var=$1 name=$2 value
  shift 2
  local values=("$@")
  [[ ${#values[@]} -gt 0 ]] || values=(1 0)
  for value in "${values[@]}"; do
    mkdir -p "$OUT/$name-$value"
    env "$var=$value" timeout "${TESSERA_VISION_TIMEOUT:-400}" python3 benchmarks/vision.py \
      --out "$OUT/$name-$value" ${VISION_AB_ARGS:-${VISION_ARGS:-}} > "$OUT/$name-$value/vision.log" 2>&1 \
      || status=1
    grep -v "^[│┃┏┗┡└├┌]" "$OUT/$name-$value/vision.log" | tail -n 12
  done
}
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
for step in $steps; do
  case "$step" in
    tests) GPU_TEST_LINEAR=${GPU_TEST_LINEAR:-1} bash benchmarks/gpu_tests.sh 2>&1 | tee "$OUT/gpu-tests.log" || status=1 ;;
    tests-quick) GPU_TEST_GROUPS="patterns neighborhood" bash benchmarks/gpu_tests.sh 2>&1 \
                   | tee "$OUT/gpu-tests.log" || status=1 ;;
    tests-args)
      # The GPU tests that PYTEST_ARGS selects (files, -k expressions).
      timeout "${GPU_TEST_TIMEOUT:-300}" python3 -m pytest -m gpu -q -rA -p no:cacheprovider ${PYTEST_ARGS:-tests} \
        > "$OUT/gpu-tests-args.log" 2>&1 || status=1
      tail -n 3 "$OUT/gpu-tests-args.log" ;;
    tests-layers)
      # Its kernels (the window attention's, the linear ones at BASED's head dims) stay out of the packed cache.
      TRITON_CACHE_DIR=/tmp/tc-layers GPU_TEST_GROUPS="layers" bash benchmarks/gpu_tests.sh || status=1 ;;
    streams-ab)
      # Later steps run with the faster setting (TESSERA_BWD_STREAMS), printed here.
      timeout "${TESSERA_STREAMS_TIMEOUT:-90}" python3 benchmarks/gpu_streams_ab.py --out "$OUT" \
        2>&1 | tee "$OUT/streams-ab.log" || status=1
      export TESSERA_BWD_STREAMS=$(python3 benchmarks/gpu_streams_ab.py --verdict "$OUT/streams_ab.json")
      echo "TESSERA_BWD_STREAMS=$TESSERA_BWD_STREAMS" ;;
    schedule-ab) timeout "${TESSERA_SCHEDULE_TIMEOUT:-240}" python3 benchmarks/gpu_schedule_ab.py --out "$OUT" \
                   2>&1 | tee "$OUT/schedule-ab.log" || status=1 ;;
    attention) timeout "${TESSERA_ATTENTION_TIMEOUT:-420}" python3 benchmarks/attention.py --out "$OUT" \
                 2>&1 | tee "$OUT/attention.log" || status=1 ;;
    natten) timeout "${TESSERA_NATTEN_TIMEOUT:-420}" python3 benchmarks/natten.py --out "$OUT" ${NATTEN_ARGS:-} \
              2>&1 | tee "$OUT/natten.log" || status=1 ;;
    natten-profile) timeout "${TESSERA_NATTEN_TIMEOUT:-240}" python3 benchmarks/gpu_natten_mask.py --out "$OUT" --profile ${NATTEN_PROFILE_ARGS:-} \
                      2>&1 | tee "$OUT/natten-profile.log" || status=1 ;;
    fp32-ab) timeout "${TESSERA_FP32_TIMEOUT:-200}" python3 benchmarks/gpu_fp32_ab.py --out "$OUT" \
               2>&1 | tee "$OUT/fp32-ab.log" || status=1 ;;
    step-jitter) timeout "${TESSERA_JITTER_TIMEOUT:-150}" python3 benchmarks/gpu_step_jitter.py --out "$OUT" ${STEP_JITTER_ARGS:-} \
                   2>&1 | tee "$OUT/step-jitter.log" || status=1 ;;
    fp32-bisect) timeout "${TESSERA_FP32_TIMEOUT:-300}" python3 benchmarks/gpu_fp32_bisect.py --out "$OUT" \
                   2>&1 | tee "$OUT/fp32-bisect.log" || status=1 ;;
    gluon-forward)
      # The Gluon tiled-neighborhood forwards: their float64 GPU tests, then their kernel times against
      # the Triton forward on the suite's 2-D and 3-D shapes (benchmarks/gpu_gluon_forward.py).
      # (GLUON_TESTS: a pytest -k expression; GLUON_BENCH_ARGS: e.g. "--cases blocked").
      timeout 300 python3 -m pytest -m gpu -q -rA -p no:cacheprovider tests/kernels/test_gluon_gpu.py \
        ${GLUON_TESTS:+-k "$GLUON_TESTS"} 2>&1 | tee "$OUT/gpu-tests-gluon-forward.log" || status=1
      timeout 200 python3 benchmarks/gpu_gluon_forward.py --out "$OUT" ${GLUON_BENCH_ARGS:-} 2>&1 | tee "$OUT/gluon-forward.log" || status=1 ;;
    gluon-backward)
      # The Gluon dq and dk/dv kernels: their float64 GPU tests (and the backward route's), then
      # their kernel times against the Triton dq and dk/dv on the suite's shapes
      # (benchmarks/gpu_gluon_backward.py; GLUON_BACKWARD_ARGS: e.g. "--kernels dq --dims 128";
      # GLUON_BACKWARD_TESTS: a pytest -k expression in place of the default).
      timeout 300 python3 -m pytest -m gpu -q -rA -p no:cacheprovider tests/kernels/test_gluon_gpu.py \
        -k "${GLUON_BACKWARD_TESTS:-dq or dkdv or backward_route}" 2>&1 | tee "$OUT/gpu-tests-gluon-backward.log" || status=1
      timeout 240 python3 benchmarks/gpu_gluon_backward.py --out "$OUT" ${GLUON_BACKWARD_ARGS:-} 2>&1 \
        | tee "$OUT/gluon-backward.log" || status=1 ;;
    forward-ablation) timeout "${TESSERA_ABLATION_TIMEOUT:-240}" python3 benchmarks/gpu_forward_ablation.py --out "$OUT" \
                        ${ABLATION_ARGS:-} 2>&1 | tee "$OUT/forward-ablation.log" || status=1 ;;
    forward-shared) timeout "${TESSERA_SHARED_TIMEOUT:-400}" python3 benchmarks/gpu_forward_shared.py --out "$OUT" \
                      ${SHARED_ARGS:-} 2>&1 | tee "$OUT/forward-shared.log" || status=1 ;;
    natten-configs)
      # Forward, dq and dk/dv kernel configurations on the N-D neighborhoods in grid order
      # (NATTEN_SWEEP_CASES: gpu_config_sweep.py case names; NATTEN_SWEEP_ARGS: e.g. --small).
      timeout "${TESSERA_NATTEN_TIMEOUT:-300}" python3 benchmarks/gpu_config_sweep.py --out "$OUT" \
        --cases ${NATTEN_SWEEP_CASES:-na2d-k17 na3d-k5x13x13 na3d-blocked} ${NATTEN_SWEEP_ARGS:-} 2>&1 | tee "$OUT/natten-configs.log" || status=1 ;;
    natten-reorder)
      timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider tests/kernels/test_flash_gpu.py -k grid_order \
        2>&1 | tee "$OUT/gpu-tests-grid-order.log" || status=1
      timeout "${TESSERA_NATTEN_TIMEOUT:-420}" python3 benchmarks/natten.py --out "$OUT" --grid-order off \
        --suite natten-reorder --impls tessera --only 1-D 2-D 3-D 2>&1 | tee "$OUT/natten-reorder.log" || status=1 ;;
    host-overhead) timeout 200 python3 benchmarks/gpu_host_overhead.py --out "$OUT" \
                     2>&1 | tee "$OUT/host-overhead.log" || status=1 ;;
    ncu)
      # Nsight Compute on the suite's kernels (benchmarks/gpu_ncu_cases.py; NCU_CASES: its case names,
      # NCU_CASE_ARGS: more of its arguments, NCU_TAG: a suffix of the output names):
      # the "detailed" section set as text, and the SASS with its stall samples as gzipped CSV.
      ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
      for ncu_case in ${NCU_CASES:-blocked-fwd 3d-fwd 3d-bwd}; do
        per_call=1; [[ $ncu_case == *-bwd ]] && per_call=3
        timeout 240 "$ncu_bin" --clock-control none --set detailed -k "regex:${NCU_KERNELS:-_na_|_attn_}" \
          --launch-skip "$per_call" --launch-count "$per_call" -f -o "/tmp/ncu-$ncu_case" \
          python3 benchmarks/gpu_ncu_cases.py --case "$ncu_case" --calls 3 ${NCU_CASE_ARGS:-} \
          > "$OUT/ncu-$ncu_case${NCU_TAG:-}.log" 2>&1 || status=1
        tail -n 3 "$OUT/ncu-$ncu_case${NCU_TAG:-}.log"
        "$ncu_bin" -i "/tmp/ncu-$ncu_case.ncu-rep" --page details > "$OUT/ncu-$ncu_case${NCU_TAG:-}.txt" 2>&1 || status=1
        "$ncu_bin" -i "/tmp/ncu-$ncu_case.ncu-rep" --page source --csv --print-source sass 2>&1 \
          | gzip > "$OUT/ncu-$ncu_case${NCU_TAG:-}-sass.csv.gz" || status=1
      done ;;
    route-host) timeout 150 python3 benchmarks/gpu_route_host.py --out "$OUT" 2>&1 | tee "$OUT/route-host.log" || status=1 ;;
    natten-compile)
      # tessera.natten and tessera.attention under torch.compile: the GPU tests (bit-for-bit against
      # eager, CUDA graph replays included), then eager vs compiled vs Flex step times
      # (benchmarks/natten_compile.py; NATTEN_COMPILE_ARGS: e.g. "--only k17").
      timeout 300 python3 -m pytest -m gpu -q -rA -p no:cacheprovider tests/test_natten_compile.py \
        tests/test_attention_compile.py \
        2>&1 | tee "$OUT/gpu-tests-natten-compile.log" || status=1
      timeout 400 python3 benchmarks/natten_compile.py --out "$OUT" ${NATTEN_COMPILE_ARGS:-} 2>&1 \
        | tee "$OUT/natten-compile.log" || status=1 ;;
    natten-host) timeout "${TESSERA_NATTEN_HOST_TIMEOUT:-150}" python3 benchmarks/gpu_natten_host.py --out "$OUT" ${NATTEN_HOST_ARGS:-} 2>&1 | tee "$OUT/natten-host.log" || status=1 ;;
    padded-grid) timeout 200 python3 benchmarks/gpu_padded_grid.py --out "$OUT" 2>&1 | tee "$OUT/padded-grid.log" || status=1 ;;
    padded-sweep) timeout 360 python3 benchmarks/gpu_padded_grid.py --out "$OUT" --sweep 2>&1 \
                    | tee "$OUT/padded-sweep.log" || status=1 ;;
    natten-additional-kv) timeout 400 python3 benchmarks/natten_additional_kv.py --out "$OUT" 2>&1 \
                            | tee "$OUT/natten-additional-kv.log" || status=1 ;;
    vision) timeout "${TESSERA_VISION_TIMEOUT:-400}" python3 benchmarks/vision.py --out "$OUT" ${VISION_ARGS:-} 2>&1 \
              | tee "$OUT/vision.log" || status=1 ;;
    vision-profile) timeout 200 python3 benchmarks/vision.py --profile ${VISION_PROFILE_ARGS:-} 2>&1 \
                      | tee "$OUT/vision-profile.log" || status=1 ;;
    tiled-configs) timeout 240 python3 benchmarks/gpu_tiled_configs.py --out "$OUT" 2>&1 | tee "$OUT/tiled-configs.log" || status=1 ;;
    fold-configs) timeout 240 python3 benchmarks/gpu_fold_configs.py --out "$OUT" 2>&1 | tee "$OUT/fold-configs.log" || status=1 ;;
    token-copies) timeout 150 python3 benchmarks/gpu_token_copies.py --out "$OUT" 2>&1 | tee "$OUT/token-copies.log" || status=1 ;;
    vision-wide-ab)
      # The vision cases VISION_ARGS selects, token rows copied whole and element by element.
      vision_ab TESSERA_WIDE_ROWS wide-rows ;;
    vision-in-kernel-ab)
      # The vision cases VISION_ARGS selects, tiled orders addressed by the kernels and gathered.
      vision_ab TESSERA_TILED_IN_KERNEL tiled-in-kernel ;;
    vision-row-map-ab)
      # The vision cases VISION_ARGS selects, tiled orders addressed from their fields where they
      # can be ("auto") and through row maps everywhere ("1").
      vision_ab TESSERA_TILED_ROW_MAP tiled-row-map auto 1 ;;
    vision-fold-ab)
      # The vision cases VISION_AB_ARGS selects, MaxViT grid attention through natten's dilation
      # fold ("1") and swapped into blocks ("0").
      vision_ab TESSERA_NATTEN_FOLD natten-fold ;;
    vision-min-gain-ab)
      # The vision cases VISION_AB_ARGS selects, the tiled route's MIN_GAIN at 2.0 and at 1.2.
      vision_ab TESSERA_TILED_MIN_GAIN tiled-min-gain 2.0 1.2 ;;
    padded-dilated) timeout 360 python3 benchmarks/gpu_padded_grid.py --out "$OUT" --dilated 2>&1 \
                      | tee "$OUT/padded-dilated.log" || status=1 ;;
    host-breakdown) timeout 100 python3 benchmarks/gpu_host_overhead.py --out "$OUT" --breakdown-only \
                      2>&1 | tee "$OUT/host-breakdown.log" || status=1 ;;
    blocked-dense) timeout 200 python3 benchmarks/gpu_blocked_dense.py --out "$OUT" \
                     2>&1 | tee "$OUT/blocked-dense.log" || status=1 ;;
    backward-profile) timeout 120 python3 benchmarks/gpu_backward_profile.py --out "$OUT" \
                        2>&1 | tee "$OUT/backward-profile.log" || status=1 ;;
    autograd-floor) timeout 120 python3 benchmarks/gpu_autograd_floor.py --out "$OUT" \
                      2>&1 | tee "$OUT/autograd-floor.log" || status=1 ;;
    launch-cost) timeout 120 python3 benchmarks/gpu_launch_cost.py --out "$OUT" ${LAUNCH_COST_ARGS:-} \
                   2>&1 | tee "$OUT/launch-cost.log" || status=1 ;;
    tests-linear)
      # The linear GPU tests in two processes (compiling dominates).
      timeout 280 python3 -m pytest -m gpu -q -rA -p no:cacheprovider tests/linear -k delta \
        > "$OUT/gpu-tests-linear-delta.log" 2>&1 & delta_tests=$!
      timeout 280 python3 -m pytest -m gpu -q -rA -p no:cacheprovider tests/linear -k "not delta" \
        > "$OUT/gpu-tests-linear-other.log" 2>&1 & other_tests=$!
      wait $delta_tests || status=1
      wait $other_tests || status=1
      tail -n 2 "$OUT"/gpu-tests-linear-*.log ;;
    linear-final)
      # The linear GPU tests, then the acceptance ops at T = 16384.
      bash "$0" tests-linear || status=1
      timeout "${TESSERA_LINEAR_TIMEOUT:-300}" python3 benchmarks/linear.py --out "$OUT" --T 16384 \
        --ops delta_rule simple_gla gla --fla-unguarded 2>&1 | tee "$OUT/linear.log" || status=1 ;;
    linear-accept)
      # The issue's acceptance ops, both directions, in one run at T = 16384, starting from the timed
      # launch choices of earlier runs (linear_tuned, above).
      timeout "${TESSERA_LINEAR_TIMEOUT:-540}" python3 benchmarks/linear.py --out "$OUT" --T 16384 \
        --ops ${LINEAR_OPS:-simple_gla gla delta_rule} --fla-unguarded \
        --tuned-from $linear_tuned \
        2>&1 | tee "$OUT/linear.log" || status=1 ;;
    linear-profile)
      # simple GLA's forward and backward per kernel against fla's at the longest T (default 65536).
      timeout "${TESSERA_LINEAR_TIMEOUT:-300}" python3 benchmarks/gpu_linear_sweep.py --out "$OUT" \
        --parts simple-gla-breakdown --ops simple_gla --T ${LINEAR_PROFILE_T:-65536} --no-sweep --budget 270 \
        --tuned-from $linear_tuned \
        2>&1 | tee "$OUT/linear-profile.log" || status=1 ;;
    state-sweep)
      # Simple GLA's forward per kernel against fla's (with fla's picked configs), then its state pass over
      # fla's whole chunk_fwd_h space, at T = 16384.
      timeout "${TESSERA_LINEAR_TIMEOUT:-300}" python3 benchmarks/gpu_linear_sweep.py --out "$OUT" \
        --parts simple-gla-breakdown sweep --ops simple_gla --T 16384 --sweep-kernels simple_gla.state \
        --sweep-space fla --budget 270 --tuned-from $linear_tuned 2>&1 | tee "$OUT/state-sweep.log" || status=1 ;;
    state-ab)
      # Simple GLA's state pass against fla's chunk_fwd_h on the same tensors (kernel time, alternating rounds).
      timeout "${TESSERA_LINEAR_TIMEOUT:-200}" python3 benchmarks/gpu_state_pass_ab.py --out "$OUT" \
        --configs 64,64,4,4 64,32,4,4 64,64,8,4 --tuned-from $linear_tuned 2>&1 | tee "$OUT/state-ab.log" || status=1 ;;
    linear-host)
      # Kernel time against host time per call, tessera and fla, at T = 16384.
      timeout "${TESSERA_LINEAR_TIMEOUT:-300}" python3 benchmarks/gpu_linear_host.py --out "$OUT" \
        --ops ${LINEAR_OPS:-simple_gla delta_rule gla} --tuned-from $linear_tuned ${LINEAR_HOST_ARGS:-} 2>&1 | tee "$OUT/linear-host.log" || status=1 ;;
    candidates)
      # Every linear launch candidate on odd head dims: compiles, runs without a fault, matches float64.
      # Its kernels stay out of the packed cache (they would crowd out the benchmark shapes).
      TRITON_CACHE_DIR=/tmp/tc-candidates timeout "${TESSERA_CANDIDATES_TIMEOUT:-560}" \
        python3 benchmarks/gpu_candidate_check.py --out "$OUT" --budget ${CANDIDATE_BUDGET:-480} ${CANDIDATE_ARGS:-} 2>&1 | tee "$OUT/candidates.log" \
        || status=1 ;;
    linear-delta) timeout "${TESSERA_LINEAR_TIMEOUT:-240}" python3 benchmarks/gpu_linear_sweep.py --out "$OUT" \
                    --parts delta-breakdown --ops delta_rule --T 16384 --no-sweep --budget 190 \
                    2>&1 | tee "$OUT/linear-delta.log" || status=1 ;;
    kernel-next) bash benchmarks/gpu_kernel_next.sh 2>&1 | tee "$OUT/kernel-next.log" || status=1 ;;
    linear) timeout "${TESSERA_LINEAR_TIMEOUT:-300}" python3 benchmarks/linear.py --out "$OUT" ${LINEAR_BENCH_ARGS:-} \
              2>&1 | tee "$OUT/linear.log" || status=1 ;;
    *) echo "unknown step $step (tests, tests-quick, tests-args, tests-layers, streams-ab, schedule-ab, attention, natten, natten-reorder, natten-profile, natten-configs, host-overhead, host-breakdown, linear, tests-linear, linear-final, linear-accept, linear-profile, state-sweep, state-ab, linear-host, linear-delta, candidates, kernel-next, launch-cost, blocked-dense, fp32-ab, fp32-bisect, step-jitter, gluon-forward, gluon-backward, route-host, natten-host, ncu)"; status=2 ;;
  esac
done
exit $status
