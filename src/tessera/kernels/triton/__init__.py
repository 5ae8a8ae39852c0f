"""Triton flash-attention kernels (block-sparse forward and backward) and the ``"triton"`` backend.

Importing this package registers the backend when Triton is installed; ``AVAILABLE`` says whether
it did.
"""

try:
    import triton  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    AVAILABLE = False
else:
    AVAILABLE = True
    from . import backend  # noqa: F401  (registers "triton")
