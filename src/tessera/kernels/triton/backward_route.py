"""Which kernels compute dq and dk/dv: the Gluon tiled-neighborhood kernels
(``tessera.kernels.gluon.na_dq``, ``na_dkdv``) where they are measured faster than the Triton
ones, the Triton kernels everywhere else.

dk/dv measured on an H200 (``benchmarks/gpu_gluon_dkdv.py``, now ``gpu_gluon_backward.py``,
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
# On: the backward runs na_dq wherever ``gluon_dq`` holds. Off until ``bash
# benchmarks/gpu_run.sh gluon-backward`` has timed it against the Triton dq kernel.
GLUON_DQ_ENABLED = False
# na_dq's K and V ring slots (and register cap) where it runs.
DQ_VARIANT = dict(num_buffers=1, v_buffers=1)


def dkdv_buffers(dim: int) -> int:
    """q/dO ring slots of ``na_dkdv`` at head dim ``dim``: two at D = 128 (three take 128 KB of
    shared memory, one program per SM: 4.34 against 2.94 ms in 3-D), three at D = 64."""
    return 2 if dim > 64 else 3


def _in_scope(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, plan) -> bool:
    """A Hopper GPU, 64 x 64 tiles and the Gluon kernels' scope (``na_forward.supports``)."""
    if q.device.type != "cuda":
        return False
    if _major_capability(q.device.index) != 9 or plan.block_m != 64:
        return False
    from ..gluon import na_forward
    return na_forward.supports(q, k, v, plan) and na_forward.supports(do, k, v, plan)


def gluon_dkdv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, plan) -> bool:
    """Whether this grid-order backward (plain softmax, no fold: the caller checks) takes its dk
    and dv from ``na_dkdv``: the switch, a Hopper GPU, 64 x 64 tiles and ``na_dkdv``'s scope."""
    return GLUON_DKDV_ENABLED and _in_scope(q, k, v, do, plan)


def gluon_dq(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, plan) -> bool:
    """Whether this grid-order backward (plain softmax, no fold: the caller checks) takes its dq
    from ``na_dq`` (which reads delta: the caller computes it first): the switch, a Hopper GPU,
    64 x 64 tiles and ``na_dq``'s scope."""
    return GLUON_DQ_ENABLED and _in_scope(q, k, v, do, plan)
