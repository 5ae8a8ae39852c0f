"""Block sizes, warps and pipeline depth of the flash kernels, per head dim and dtype.

Lengths never enter a choice (one compiled kernel serves every length). ``OVERRIDES`` lets tests
and tuning scripts force a configuration per kernel (``"fwd"``, ``"dq"``, ``"dkdv"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class KernelConfig:
    """``block_m`` query rows and ``block_n`` keys per tile (``block_n`` a multiple of 32),
    ``num_warps`` warps per program, ``num_stages`` software-pipelining depth, and
    ``max_registers`` a cap on registers per thread (Triton's ``maxnreg``; None: the compiler's
    choice), which can buy one more program per SM at the cost of some spilling."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    max_registers: Optional[int] = None

    def launch_options(self) -> dict:
        """The launch keywords of this config: ``num_warps``, ``num_stages`` and, when capped,
        ``maxnreg``."""
        options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.max_registers is not None:
            options["maxnreg"] = self.max_registers
        return options


# Kernel name -> forced config; empty by default.
OVERRIDES: dict[str, KernelConfig] = {}

# Under the interpreter every program costs Python time: few, mid-sized tiles.
_INTERPRETED = {"fwd": KernelConfig(64, 32, 4, 1), "dq": KernelConfig(64, 32, 4, 1),
                "dkdv": KernelConfig(32, 64, 4, 1)}


@dataclass(frozen=True)
class MaskShape:
    """What a pattern's tile map looks like at 64 x 64 tiles, as far as tile sizes are concerned.

    partial_fraction: partial tiles over listed tiles; band_only: partial tiles are masked by one
    offset band in-kernel (``MASK_BAND``: causal, windows) rather than per-tile data (bitmasks,
    per-tile bands, N-D neighborhoods); neighborhood: partial tiles take the in-kernel N-D
    neighborhood mask (``MASK_NEIGHBORHOOD``); tiled: the pattern runs in a tiled token order
    (``Permuted``: kernel tiles are compact boxes of the grid, as ``tessera.natten`` runs it);
    tiled_grid_rule: a grid pattern that is no neighborhood in a tiled order (``tiled_grid_patterns``:
    shifted Swin, CSWin, criss-cross), whose key sets line up with 64-token layout tiles;
    one_tile: queries and keys each fit one 64-row tile (natten's dilation fold of MaxViT grid
    attention: one tile pair per program, whose latency rather than its work bounds the kernels)."""

    partial_fraction: float
    band_only: bool
    neighborhood: bool = False
    tiled: bool = False
    tiled_grid_rule: bool = False
    one_tile: bool = False

    @property
    def ragged(self) -> bool:
        """Many partial tiles, or partial tiles that read per-tile mask data: smaller tiles waste
        less on masked-out pairs and keep the heavier masked variant's shared memory low."""
        return self.partial_fraction > RAGGED_PARTIAL_FRACTION or (
            not self.band_only and self.partial_fraction > 0)


# A 64 x 64 plan with more partial tiles than this counts as ragged (windows: 0.12, causal: 0.01).
RAGGED_PARTIAL_FRACTION = 0.05


# Dense Hopper choices (bf16, D = 128, S = 16384, H200; benchmarks/kernel_dev.py --sweep): fwd
# (128, 128, 8, 3) beat (128, 64, 8, 2|3|4), (128, 128, 8, 2) and every 4-warp choice; dkdv
# (64, 64, 4, 3) beat (64, 128, 8, 2|3), (32, 64, 4, 4), (128, 128, 8, 2); dq (128, 128, 8, 2)
# beat (128, 64, 8, 2) by 4%, but with bitmask tiles needs 262 KB of shared memory.
#
# Masked choices for D <= 128 in 16 bits (H100, per-kernel CUDA time, benchmarks/gpu_config_sweep.py,
# results/tuning/2026-11-22-h100-config-sweep.json; window 1024 and causal at S = 16384, random
# 128-blocks at 10% and 30%, S2 strided and Power at S = 32768):
#   fwd  (128, 128, 8, 3) is best where partial tiles are few and band-masked (causal, random
#        blocks); (64, 64, 4, 2) on ragged maps (window 0.369 vs 0.396 ms, strided 1.96 vs 2.31,
#        Power 0.554 vs 0.897).
#   dq   (64, 64, 4, 2) is best or within 2% of best on every case (was (128, 64, 8, 2): window
#        0.392 vs 0.484 ms, Power 0.58 vs 0.98, strided 2.09 vs 2.59).
#   dkdv (64, 128, 8, 2) on causal-like maps (a few band-masked partial tiles: 4.04 ms; (64, 64,
#        4, 3) 5.86); (32, 64, 4, 3) on ragged band-masked maps (window 0.657 vs 0.712); (64, 64,
#        4, 3) on the rest, including maps without partial tiles (random 10% 0.855 vs 0.962,
#        strided 3.53 vs 4.19, Power 1.02 vs 1.63).
#   dkdv on N-D neighborhoods before the additive window penalty (sm_90 compile counts, na2d
#        128 x 128 kernel 17 in (8, 8) tiles): (64, 64, 4, 3) spilled in both tile loops and
#        needed 129 KB of shared memory; (32, 64, 4, 3) did not (2-D k17 fwd+bwd 4.02 -> 1.67 ms,
#        results/2026-11-22-h100-natten.json).
#   N-D neighborhoods since the additive window penalty (H200, grid order,
#        results/tuning/2026-11-30-h200-natten-config-sweep-64-row-3d.json, 3-D 5 x 13 x 13 in
#        four tile orders, and -128-token-layouts.json): fwd (64, 64, 4, 2) 2.04-2.07 ms against
#        (64, 64, 4, 3) 2.09-2.12, (64, 32, 4, 3) 2.29, 8 warps 4.7-4.9, 128-row tiles >= 2.35
#        (2-D: 0.270 for both 64 x 64 choices); dkdv (64, 64, 4, 3) 3.68-3.73 against (32, 64, 4,
#        3) 4.02-4.08 (2-D 0.507 vs 0.514). Before the penalty, (64, 64, 4, 3) dkdv spilled and
#        took 5.6 ms, and the 3-stage forward led. These were all measured in tiled orders; the
#        row-major 2-D case kept the earlier choices after its fwd+bwd went from 2.89 to 3.51 ms
#        with them (results/2026-11-30-h200-natten-5.json, not separated per kernel).
#   N-D neighborhoods at D <= 64 take the same choices but for the forward's stages. With the
#        dense D = 64 choices, 128-row forward and dq tiles and 128-key dk/dv tiles straddle two
#        64-token layout tiles (coordinates by division, 25% more listed pairs in 2-D and 3-D) and
#        fwd+bwd took longer than at D = 128 (2-D 1.41 against 1.27 ms, 3-D 8.61 against 7.93,
#        results/2026-11-30-h200-natten-5.json). sm_90 compiles of the 2-D and 3-D cases at
#        D = 64 (benchmarks/compile_check.py): fwd 255 -> 130 registers (49 -> 41 KB), dq 144-169
#        -> 156 at 4 warps, dk/dv 8 warps at 255 registers -> 4 warps at 255, 49 KB.
#   fwd (64, 64, 4, 1) on tiled orders, without the K/V double buffer: 49 KB of shared memory and
#        at most 164 registers, so three programs per SM instead of two (H200, D = 128,
#        results/tuning/2026-11-30-h200-natten-config-sweep-fwd-one-stage.json): 2-D k17 0.253
#        against 0.268 ms for (64, 64, 4, 2), 3-D 1.947 against 2.068, 3-D blocked (full tiles
#        only, 4 per row) 0.356 against 0.389 (and 0.401 for the dense (128, 128, 8, 3) it took).
#        At D = 64 more stages win (results/tuning/2026-11-30-h200-natten-config-sweep-fwd-d64.json,
#        -fwd-d64-stages.json): 2-D 0.157 (3 stages), 0.158 (2), 0.168 (1) ms; 3-D 1.257 (3),
#        1.254 (4), 1.306-1.310 (2), 1.331 (1); 32-key tiles 0.19-0.20 and 1.73.
#   dq and dk/dv of tiled full-tile plans (3-D blocked) at D <= 64 take D = 128's 64 x 64 tiles,
#        which the Gluon kernels run (H200, D = 32, results/tuning/
#        2026-12-02-h200-gluon-backward-10-head-dim-32.json: Gluon dq 0.106 ms against the Triton
#        kernel's 0.163 at (64, 64, 4, 2), dk/dv 0.202 against 0.241); the dense D <= 64 choices
#        (128-row dq, 128-key dk/dv tiles) kept them on Triton.
#   The full-tile forward (3-D blocked) capped at 128 registers: four programs per SM (49 KB
#        each), 104 B of stack offline, 0.289 against 0.345 ms. The same cap slows the
#        neighborhoods' partial tiles (2-D 0.256 against 0.249, 3-D 2.056 against 1.936; 136
#        registers: 0.276 and 2.085), and at D = 64 a cap of 96 gives 2-D 0.146 against 0.151
#        but 3-D 1.249 against 1.231, so neither takes one
#        (results/tuning/2026-11-30-h200-natten-config-sweep-fwd-maxnreg.json, O by bulk stores;
#        now `NATTEN_SWEEP_ARGS="--kernels fwd --configs 64,64,4,1 64,64,4,1,128"
#        bash benchmarks/gpu_run.sh natten-configs`).
#   Grid patterns in tiled orders (``tiled_grid_rule``: shifted Swin on the rolled grid, CSWin,
#        criss-cross) at D <= 64 take 64 x 64 tiles in all three kernels: 128-row tiles straddle
#        two 64-token layout tiles (CSWin's 8-wide stripes list only full 64 x 64 tiles in 8 x 8
#        layout tiles, partial 128-row ones) (H200, bf16, CUDA graphs, results/tuning/
#        2026-12-03-h200-tiled-configs.json; default (128, 64) fwd / (128, 64) dq / (64, 128) dk/dv
#        against 64 x 64): shifted Swin 64 x 64 w8 D = 32 fwd 0.166 -> 0.136 ms, fwd+bwd 0.583 ->
#        0.430; D = 64 0.276 -> 0.229, 0.949 -> 0.665; CSWin fwd 0.409 -> 0.238, fwd+bwd 1.059 ->
#        0.886; criss-cross 0.718 -> 0.515, 2.745 -> 1.897.
def _masked_config(kernel: str, shape: MaskShape, dim: int) -> KernelConfig:
    tiled_neighborhood = shape.neighborhood and shape.partial_fraction > 0 and shape.tiled
    if kernel == "fwd":
        if tiled_neighborhood:
            return KernelConfig(64, 64, 4, 1 if dim > 64 else 3)
        if shape.tiled_grid_rule and dim <= 64:
            return KernelConfig(64, 64, 4, 3)
        if shape.tiled and shape.partial_fraction == 0:
            return KernelConfig(64, 64, 4, 1, max_registers=128)
        if shape.neighborhood and shape.partial_fraction > 0:
            return KernelConfig(64, 64, 4, 3)
        return KernelConfig(64, 64, 4, 2) if shape.ragged else KernelConfig(128, 128, 8, 3)
    if kernel == "dq":
        return KernelConfig(64, 64, 4, 2)
    if shape.neighborhood and shape.partial_fraction > 0:
        return KernelConfig(64, 64, 4, 3) if tiled_neighborhood else KernelConfig(32, 64, 4, 3)
    if shape.band_only and shape.partial_fraction > 0:
        return KernelConfig(32, 64, 4, 3) if shape.ragged else KernelConfig(64, 128, 8, 2)
    return KernelConfig(64, 64, 4, 3)


#   One tile pair per program (``one_tile``; MaxViT grid attention's 7 x 7 dilation groups in
#        natten's fold, bf16, H200, CUDA graphs, results/tuning/2026-12-03-h200-fold-configs.json):
#        fewer warps and one stage keep more programs per SM. D = 32, 56 x 56 (B 64, H 2): fwd
#        (64, 64, 1, 1) 0.121 ms, (64, 64, 2, 1) 0.133, (64, 64, 4, 1) 0.148, (64, 64, 4, 3) 0.194,
#        8 warps 0.341; fwd+bwd at those warps (all three kernels) 0.710, 0.461, 0.587, 0.833,
#        1.202. D = 64, 28 x 28 (B 64, H 2): fwd 2 warps 0.048, 4 warps 0.058 (3 stages 0.073), 1
#        warp 0.144; fwd+bwd 0.224, 0.193 (0.286), 0.595; so 2 warps forward, 4 backward.
def _one_tile_config(kernel: str, dim: int) -> KernelConfig:
    forward = kernel == "fwd"
    if dim <= 32:
        return KernelConfig(64, 64, 1 if forward else 2, 1)
    return KernelConfig(64, 64, 2 if forward else 4, 1)


def _gpu_config(kernel: str, dim: int, dtype: torch.dtype, shape: Optional[MaskShape]) -> KernelConfig:
    wide = dtype == torch.float32
    masked = shape is not None
    if masked and not wide and shape.one_tile and dim <= 64:
        return _one_tile_config(kernel, dim)
    if masked and not wide and kernel in ("fwd", "dq", "dkdv") and (
            64 < dim <= 128 or (dim <= 64 and shape.tiled_grid_rule)
            or (dim <= 64 and shape.neighborhood and shape.partial_fraction > 0)
            or (dim <= 64 and kernel != "fwd" and shape.tiled and shape.partial_fraction == 0)):
        return _masked_config(kernel, shape, dim)
    if kernel == "fwd":
        if dim <= 64:
            return KernelConfig(128, 64, 4, 3)
        if dim <= 128:
            return KernelConfig(128, 64 if wide else 128, 8, 2 if wide else 3)
        return KernelConfig(64, 64 if not wide else 32, 4 if not wide else 8, 2)
    if kernel == "dq":
        if dim <= 64:
            return KernelConfig(128, 64, 8, 2)
        if dim <= 128:
            return KernelConfig(128, 64, 8, 2) if not wide else KernelConfig(64, 64, 8, 2)
        return KernelConfig(64, 32, 8, 2)
    if kernel == "dkdv":
        if dim <= 64:
            return KernelConfig(64, 128, 8, 2)
        if dim <= 128:
            if wide:
                return KernelConfig(32, 64, 8, 2)
            return KernelConfig(64, 128, 8, 2) if masked else KernelConfig(64, 64, 4, 3)
        return KernelConfig(32, 64, 8, 2)
    raise ValueError(f"kernel must be 'fwd', 'dq' or 'dkdv', got {kernel!r}")


def kernel_config(kernel: str, dim: int, dtype: torch.dtype, interpret: bool,
                  shape: Optional[MaskShape] = None) -> KernelConfig:
    """The configuration of ``kernel`` for head dim ``dim`` (the larger of D and D_v), ``dtype`` and
    the pattern's ``MaskShape`` (None: dense)."""
    if kernel in OVERRIDES:
        return OVERRIDES[kernel]
    if interpret:
        return _INTERPRETED[kernel]
    if kernel not in _INTERPRETED:
        raise ValueError(f"kernel must be 'fwd', 'dq' or 'dkdv', got {kernel!r}")
    return _gpu_config(kernel, dim, dtype, shape)
