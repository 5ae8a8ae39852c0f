"""The FlashAttention error rule tessera's kernels are held to against float64 results, for the
tests and for the GPU benchmarks that check what they time.

Rule: ``err(kernel) <= factor * err(same-dtype reference) + ATOL[dtype]``, both errors
``rel_err`` against the float64 result; factor 2 for forward outputs (o, lse), 3 for gradients.
"""

from __future__ import annotations

import torch

# Floors of the rule per input dtype.
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64 over ``ref``'s finite entries (0 when both are zero);
    inf where ``out`` has NaN or its non-finite entries differ from ``ref``'s (an lse of -inf for
    a row that sees no key must stay -inf)."""
    out, ref = out.double(), ref.double()
    if torch.isnan(out).any():
        return float("inf")
    finite = torch.isfinite(ref)
    if not bool((torch.isfinite(out) == finite).all()) or not bool((out[~finite] == ref[~finite]).all()):
        return float("inf")
    out, ref = out[finite], ref[finite]
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff if denom == 0 else diff / denom


def within_rule(err: float, err_same: float, dtype: torch.dtype, factor: float = 2) -> bool:
    """Whether a kernel's ``err`` passes the rule against the same-dtype reference's ``err_same``."""
    return err <= factor * err_same + ATOL[dtype]
