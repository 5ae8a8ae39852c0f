"""What the custom ops that ``torch.compile`` traces to (``natten_ops``, ``attention_ops``) share."""

from __future__ import annotations

import torch

# The dispatcher's thread-local key sets outside any op. A custom op's body runs with autograd's
# keys excluded; a backward that recomputes its forward under autograd (calls that ran on no
# backward kernels of their own) restores these to record that forward's graph.
_TOP_LEVEL_KEYS = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())


def autograd_dispatch():
    """A context in which autograd records again, inside a custom op's body."""
    return torch._C._ForceDispatchKeyGuard(*_TOP_LEVEL_KEYS)


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the lse a call on ``dtype`` inputs returns: float64 for float64 (which only
    the reference backend takes), else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
