"""Block sizes, warps and pipeline depth of the flash kernels, per head dim and dtype.

Lengths never enter a choice (one compiled kernel serves every length). ``OVERRIDES`` lets tests
and tuning scripts force a configuration per kernel (``"fwd"``, ``"dq"``, ``"dkdv"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KernelConfig:
    """``block_m`` query rows and ``block_n`` keys per tile (``block_n`` a multiple of 32),
    ``num_warps`` warps per program, ``num_stages`` software-pipelining depth."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Kernel name -> forced config; empty by default.
OVERRIDES: dict[str, KernelConfig] = {}

# Under the interpreter every program costs Python time: few, mid-sized tiles.
_INTERPRETED = {"fwd": KernelConfig(64, 32, 4, 1), "dq": KernelConfig(64, 32, 4, 1),
                "dkdv": KernelConfig(32, 64, 4, 1)}


# Hopper choices (bf16, D = 128, S = 16384, H200; benchmarks/kernel_dev.py --sweep, results in
# benchmarks/results/kernel_dev-h200-*.json): fwd (128, 128, 8, 3) beat (128, 64, 8, 2|3|4),
# (128, 128, 8, 2) and every 4-warp choice; dkdv (64, 64, 4, 3) beat (64, 128, 8, 2|3),
# (32, 64, 4, 4) [except on the sparse window, by 10%], (128, 128, 8, 2); dq (128, 128, 8, 2) beat
# (128, 64, 8, 2) by 4% on dense, but with bitmask tiles needs 262 KB of shared memory (over
# the 227 KB limit), so dq keeps (128, 64, 8, 2).
def _gpu_config(kernel: str, dim: int, dtype: torch.dtype, masked: bool) -> KernelConfig:
    wide = dtype == torch.float32
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
            # Dense favours 64-key tiles (19.4 vs 20.9 ms fwd+bwd); masked patterns 128-key tiles
            # (causal 9.7 vs 11.5 ms, window 1024: 1.95 vs 2.11 ms).
            return KernelConfig(64, 128, 8, 2) if masked else KernelConfig(64, 64, 4, 3)
        return KernelConfig(32, 64, 8, 2)
    raise ValueError(f"kernel must be 'fwd', 'dq' or 'dkdv', got {kernel!r}")


def kernel_config(kernel: str, dim: int, dtype: torch.dtype, interpret: bool,
                  masked: bool = False) -> KernelConfig:
    """The configuration of ``kernel`` for head dim ``dim`` (the larger of D and D_v), ``dtype`` and
    whether the call has a (non-dense) pattern."""
    if kernel in OVERRIDES:
        return OVERRIDES[kernel]
    if interpret:
        return _INTERPRETED[kernel]
    return _gpu_config(kernel, dim, dtype, masked)
