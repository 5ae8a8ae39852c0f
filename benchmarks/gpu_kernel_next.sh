#!/usr/bin/env bash
# Device-machine checks for the flash kernels' low-rank bias, relative-position bias and per-tile
# band masks, and the measurements that explain the Power-pattern forward time.
#   bash benchmarks/gpu_kernel_next.sh [tests] [power] [bias]        (default: all three)
# Writes logs and next.json under $OUT (default /tmp/kernel_next).
#
# What each step should show:
#   tests  GPU tests of the kernels (tests/kernels/test_flash_gpu.py): LowRank bf16/fp16/fp32 with
#          broadcast factors, RelativePosition, Power(256) through per-tile bands, all previous cases.
#   power  Power(local=256, causal) at S = 32768, H = 16, D = 128, bf16 (the benchmark case that ran
#          3.4 ms forward against 0.955 ms for compiled Flex with the same tile map):
#          1. "mask=tile_band" (the plan now chosen: one offset band per partial tile, read as two
#             int32 per tile) against "mask=bits" (the previous packed bitmask: a [128, 128] gather
#             of mask words per partial tile). Hypothesis: the bitmask gather and its unpacking cost
#             most of the 3.4 ms; tile_band should land near or under Flex (<= ~1 ms).
#          2. registers / spills / shared memory of each compiled forward variant. Hypothesis: the
#             bitmask variant at (128, 128, 8 warps) spills (acc, logits, p and 64 mask words plus
#             their 64-bit addresses per thread); the tile_band variant does not.
#          3. microseconds per listed tile, Power vs causal at the same length. Power visits 8
#             tiles per query tile (1 full, 7 partial), causal ~128: with the same per-tile cost
#             Power would take ~1/16 of causal. Whatever remains above that after (1) is per-program
#             overhead (Q load, pipeline fill of two short loops, epilogue): then try the configs
#             of step 4 and, in code, one merged loop over partial and full tiles.
#          4. forward configs on the tile_band plan: (128,128,8,3|2) (128,64,8,3|2) (64,128,4,3)
#             (64,64,4,3|2). The default (128,128,8,3) needs ~224 KB of shared memory (Q + 3 stages
#             of K and V): one program per SM, so a program's Q load, pipeline fill and epilogue are
#             never overlapped by another's main loop. With 8 tiles per program that overhead is a
#             large share; configs that fit two programs per SM ((128,64,8,2): ~96 KB,
#             (64,64,4,2)) should gain on Power and lose on dense.
#          5. fwd+bwd for tile_band vs bits (dq and dk/dv read the same masks).
#          If bits stays far behind tile_band, patterns that still need bitmasks (Dilated,
#          Strided with blocks unlike the tiles, FromMask) pay the same: the next change is to
#          load a tile's [BLOCK_M, BLOCK_N / 32] words once and unpack them with shifts instead of
#          a [BLOCK_M, BLOCK_N] gather of words (scoring.score_tile, MASK_MODE 2).
#   bias   cost of the bias switches at S = 16384, H = 16, D = 128, bf16, causal: none, LowRank
#          R = 16 and 64, a [1, H, S, S] TensorBias (the materialized alternative: 8 GiB in bf16
#          plus a 17 GiB fp32 gradient) and RelativePosition on a 128 x 128 grid (learnable
#          table: its gradient runs a gather-and-sum per tile in the dq kernel and needs a
#          B * H * n_q_tiles * 255^2 fp32 buffer, ~0.5 GB here); fwd and fwd+bwd. LowRank R = 16
#          should cost well under a TensorBias (an extra [128 x R] x [R x 128] dot per tile
#          instead of a [128 x 128] load). If the RelativePosition fwd+bwd is far above the
#          TensorBias one, the table-gradient gather (integer div/mod per element) is the cost.
set -o pipefail
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src:$PWD/tests/kernels${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/kernel_next}
mkdir -p "$OUT"
steps=" ${*:-tests power bias} "
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

if [[ $steps == *" tests "* ]]; then
  timeout ${TEST_TIMEOUT:-300} python3 -m pytest tests/kernels/test_flash_gpu.py -x -q -p no:cacheprovider \
    ${TEST_K:+-k "$TEST_K"} 2>&1 | tee "$OUT/tests.log" | tail -40
fi

STEPS="$steps" OUT="$OUT" python3 - <<'EOF' 2>&1 | tee "$OUT/bench.log"
import json, math, os, time

import torch
from triton.testing import do_bench

from tessera.bias import LowRank, RelativePosition, TensorBias
from tessera.kernels.registry import AttentionCall
from tessera.kernels.triton import flash_fwd, masks, tuning
from tessera.kernels.triton.backend import run
from tessera.kernels.triton.tuning import KernelConfig
from tessera.patterns import Causal, Power

steps, out = os.environ["STEPS"], os.environ["OUT"]
result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
          "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}


def save(row):
    print(json.dumps(row), flush=True)
    result["rows"].append(row)
    json.dump(result, open(os.path.join(out, "next.json"), "w"), indent=1)


def ms_of(fn, grads=None):
    fn()
    torch.cuda.synchronize()
    return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode="median"))


def fns(q, k, v, do, pattern, bias=None):
    def call():
        return AttentionCall(q, k, v, pattern, False, q.shape[-1] ** -0.5, "softmax", None, bias,
                             None, None, True)

    def fwd():
        with torch.no_grad():
            return run(call())

    def fwd_bwd():
        o, _ = run(call())
        o.backward(do)
    return fwd, fwd_bwd


def compiled_stats(kernel):
    """Registers, spills and shared memory of every compiled variant of a Triton kernel, in
    compile order (the last one is the variant just run)."""
    stats = []
    for cache in getattr(kernel, "device_caches", {}).values():
        for compiled in cache[0].values():
            try:
                compiled._init_handles()
            except Exception:  # noqa: BLE001
                pass
            stats.append({"n_regs": getattr(compiled, "n_regs", None),
                          "n_spills": getattr(compiled, "n_spills", None),
                          "shared": getattr(getattr(compiled, "metadata", None), "shared", None)})
    return stats


def with_bits(enabled):
    """Force the bitmask plan (the previous behaviour) for patterns with per-tile bands."""
    masks.clear_plan_cache()
    if enabled:
        masks._tile_bands_saved = getattr(masks, "_tile_bands_saved", masks._tile_bands)
        masks._tile_bands = lambda *a, **k: None
    elif hasattr(masks, "_tile_bands_saved"):
        masks._tile_bands = masks._tile_bands_saved


if " power " in steps:
    S, H, D = 32768, 16, 128
    q, k, v, do = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    power, causal = Power(local=256, causal=True), Causal()
    for mask in ("tile_band", "bits"):
        with_bits(mask == "bits")
        fwd, fwd_bwd = fns(q, k, v, do, power)
        plan = masks.get_plan(power, S, S, 128, 128, H, q.device)
        tiles = plan.listed_pairs() * H
        ms = ms_of(fwd)
        save({"step": "power", "mask": mask, "mode": "fwd", "ms": ms, "mask_mode": plan.mask_mode,
              "us_per_tile": 1e3 * ms / tiles, "tiles": tiles})
        save({"step": "power", "mask": mask, "mode": "fwd_bwd", "ms": ms_of(fwd_bwd, [q, k, v])})
        save({"step": "power", "mask": mask, "compiled_fwd": compiled_stats(flash_fwd._attn_fwd)})
    with_bits(False)
    fwd, _ = fns(q, k, v, do, causal)
    plan = masks.get_plan(causal, S, S, 128, 128, H, q.device)
    ms = ms_of(fwd)
    save({"step": "power", "mask": "causal reference", "mode": "fwd", "ms": ms,
          "us_per_tile": 1e3 * ms / (plan.listed_pairs() * H)})
    for cfg in ((128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 2),
                (64, 128, 4, 3), (64, 64, 4, 3), (64, 64, 4, 2)):
        tuning.OVERRIDES["fwd"] = KernelConfig(*cfg)
        fwd, _ = fns(q, k, v, do, power)
        try:
            save({"step": "power", "mask": "tile_band", "config": cfg, "mode": "fwd", "ms": ms_of(fwd)})
        except Exception as exc:  # noqa: BLE001
            save({"step": "power", "config": cfg, "error": repr(exc)[:200]})
    tuning.OVERRIDES.clear()
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        qh, kh, vh = (t.detach().transpose(1, 2).contiguous() for t in (q, k, v))

        def power_mod(b, h, qi, ki):
            d = qi - ki
            return ((d >= 0) & (d < 256)) | ((d > 0) & ((d & (d - 1)) == 0))
        block_mask = create_block_mask(power_mod, None, None, S, S, device="cuda")
        flex = torch.compile(flex_attention)
        save({"step": "power", "mask": "flex", "mode": "fwd",
              "ms": ms_of(lambda: flex(qh, kh, vh, block_mask=block_mask))})
    except Exception as exc:  # noqa: BLE001
        save({"step": "power", "mask": "flex", "error": repr(exc)[:200]})
    del q, k, v, do
    torch.cuda.empty_cache()

if " bias " in steps:
    S, H, D, R_GRID = 16384, 16, 128, 128
    q, k, v, do = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_()
    biases = {"none": lambda: None}
    for rank in (16, 64):
        biases[f"low_rank R={rank}"] = lambda rank=rank: LowRank(
            (torch.randn(1, H, S, rank, device="cuda", dtype=torch.bfloat16) / rank).requires_grad_(),
            torch.randn(1, H, S, rank, device="cuda", dtype=torch.bfloat16).requires_grad_())
    biases["tensor [1,H,S,S] bf16"] = lambda: TensorBias(
        torch.randn(1, H, S, S, device="cuda", dtype=torch.bfloat16).requires_grad_())
    biases["relative_position 128x128"] = lambda: RelativePosition(
        torch.randn(H, 2 * R_GRID - 1, 2 * R_GRID - 1, device="cuda").requires_grad_(),
        (R_GRID, S // R_GRID))
    for name, make in biases.items():
        try:
            bias = make()
            fwd, fwd_bwd = fns(q, k, v, do, Causal(), bias)
            save({"step": "bias", "bias": name, "mode": "fwd", "ms": ms_of(fwd)})
            save({"step": "bias", "bias": name, "mode": "fwd_bwd", "ms": ms_of(fwd_bwd, [q, k, v])})
        except Exception as exc:  # noqa: BLE001
            save({"step": "bias", "bias": name, "error": repr(exc)[:300]})
        bias = None
        torch.cuda.empty_cache()
EOF
