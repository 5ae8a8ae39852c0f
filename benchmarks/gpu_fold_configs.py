"""GPU ms of MaxViT grid attention through natten's dilation fold (one 64 x 64 tile pair per
dilation group, the groups addressed in place) under kernel tile choices, against the same
attention swapped into blocks (the fold off), plus the kernels a folded forward+backward runs
and their GPU times (torch.profiler).

    python benchmarks/gpu_fold_configs.py --out DIR   -> DIR/fold_configs.json

ms from replayed CUDA graphs (no host time), bf16, forward and forward+backward.
"""

from __future__ import annotations

import torch

import tessera.natten as natten
from tessera.bench.sweeps import attention_steps, override_times, sweep_main
from tessera.kernels.triton.tuning import KernelConfig
from tessera.patterns.vision import MaxViTGrid

# name -> (pattern, batch, heads, head dim)
CASES = {
    "MaxViT grid 56x56 g7 B64 H2 D32": (MaxViTGrid((56, 56), 7), 64, 2, 32),
    "MaxViT grid 28x28 g7 B64 H4 D32": (MaxViTGrid((28, 28), 7), 64, 4, 32),
    "MaxViT grid 28x28 g7 B64 H2 D64": (MaxViTGrid((28, 28), 7), 64, 2, 64),
}


def _all(warps: int, stages: int) -> dict:
    return {name: KernelConfig(64, 64, warps, stages) for name in ("fwd", "dq", "dkdv")}


# name -> (fold on, tuning overrides)
CHOICES = {
    "swap": (False, {}),
    "fold default": (True, {}),
    "fold masked choices": (True, {"fwd": KernelConfig(64, 64, 4, 3), "dq": KernelConfig(64, 64, 4, 2),
                                   "dkdv": KernelConfig(64, 64, 4, 3)}),
    "fold w4 s1": (True, _all(4, 1)),
    "fold w2 s1": (True, _all(2, 1)),
    "fold w2 s2": (True, _all(2, 2)),
    "fold w1 s1": (True, _all(1, 1)),
    "fold w8 s1": (True, _all(8, 1)),
}


def _kernel_times(step) -> dict:
    """GPU ms per kernel name over one call of ``step`` (after a warm-up call)."""
    step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return {e.key[:80]: round(e.device_time_total / 1e3, 4) for e in prof.key_averages() if e.device_time_total > 0}


def case_times(pattern, batch, heads, dim, device) -> dict:
    steps = attention_steps(pattern, batch, heads, dim, device)
    row = {}
    for name, (fold, overrides) in CHOICES.items():
        natten.DILATION_FOLD_IN_KERNEL = fold
        try:
            row[name] = override_times(steps, overrides)
            if name in ("swap", "fold default"):
                row[name]["kernels"] = _kernel_times(steps[1])
        except Exception as error:      # a config that does not fit: say so, keep the rest
            row[name] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
        finally:
            natten.DILATION_FOLD_IN_KERNEL = True
    return row


def main() -> None:
    sweep_main(__doc__, "fold_configs.json", CASES, case_times,
               choices={name: {"fold": fold, **{k: repr(c) for k, c in overrides.items()}}
                        for name, (fold, overrides) in CHOICES.items()})


if __name__ == "__main__":
    main()
