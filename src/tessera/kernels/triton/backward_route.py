"""Which kernel computes dk and dv: the Gluon tiled-neighborhood kernel
(``tessera.kernels.gluon.na_dkdv``) where it is measured faster than the Triton dk/dv kernel, the
Triton kernel everywhere else.

Measured on an H200 (``bash benchmarks/gpu_run.sh gluon-dkdv``,
``results/tuning/2026-12-01-h200-gluon-dkdv-1.json``, kernel ms, Triton -> Gluon): D = 128 2-D
k17 0.465 -> 0.363, 3-D 5x13x13 3.47 -> 2.94, blocked 4x8x8 0.554 -> 0.465; D = 64 0.305 ->
0.280, 2.43 -> 2.25 (three slots; two: 2.31), 0.385 -> 0.345. The Gluon kernel wins on every
shape in its scope (grid-order plans whose 64-token tiles are grid boxes, 16-bit, D in {64,
128}, plain softmax), on Hopper, so the route takes all of it.
"""

from __future__ import annotations

import torch

from .flash_fwd import _major_capability

# On: the backward runs na_dkdv wherever ``gluon_dkdv`` holds (off for A/B timing through
# ``tessera.bench.switches``).
GLUON_DKDV_ENABLED = True


def dkdv_buffers(dim: int) -> int:
    """q/dO ring slots of ``na_dkdv`` at head dim ``dim``: two at D = 128 (three take 128 KB of
    shared memory, one program per SM: 4.34 against 2.94 ms in 3-D), three at D = 64."""
    return 2 if dim > 64 else 3


def gluon_dkdv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, plan) -> bool:
    """Whether this grid-order backward (plain softmax, no fold: the caller checks) takes its dk
    and dv from ``na_dkdv``: the switch, a Hopper GPU, 64 x 64 tiles and ``na_dkdv``'s scope."""
    if not GLUON_DKDV_ENABLED or q.device.type != "cuda":
        return False
    if _major_capability(q.device.index) != 9 or plan.block_m != 64:
        return False
    from ..gluon import na_forward
    return na_forward.supports(q, k, v, plan) and na_forward.supports(do, k, v, plan)
