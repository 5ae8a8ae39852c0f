"""Which kernel computes dk and dv: the Gluon tiled-neighborhood kernel
(``tessera.kernels.gluon.na_dkdv``) where it is measured faster than the Triton dk/dv kernel, the
Triton kernel everywhere else.

``GLUON_DKDV_ENABLED`` is off until ``bash benchmarks/gpu_run.sh gluon-dkdv`` has measured the
Gluon kernel against the Triton one on the N-D suite's shapes; the scope is that of
``na_dkdv`` (grid-order plans whose 64-token tiles are grid boxes, 16-bit, D in {64, 128},
plain softmax), on Hopper.
"""

from __future__ import annotations

import torch

from .flash_fwd import _major_capability

# On: the backward runs na_dkdv wherever ``gluon_dkdv`` holds (also for A/B timing through
# ``tessera.bench.switches``).
GLUON_DKDV_ENABLED = False


def gluon_dkdv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor, plan) -> bool:
    """Whether this grid-order backward (plain softmax, no fold: the caller checks) takes its dk
    and dv from ``na_dkdv``: the switch, a Hopper GPU, 64 x 64 tiles and ``na_dkdv``'s scope."""
    if not GLUON_DKDV_ENABLED or q.device.type != "cuda":
        return False
    if _major_capability(q.device.index) != 9 or plan.block_m != 64:
        return False
    from ..gluon import na_forward
    return na_forward.supports(q, k, v, plan) and na_forward.supports(do, k, v, plan)
