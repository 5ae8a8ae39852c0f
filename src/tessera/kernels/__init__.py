"""Attention backends. Importing this package registers every backend available here:
``reference`` (pure torch, any device and dtype), ``sdpa`` (torch's scaled_dot_product_attention)
and, when triton imports, ``triton``."""

from . import reference, sdpa
from .reference import reference_attention
from .registry import AttentionCall, available_backends, get_backend, register_backend

try:
    from .triton import backend as _triton_backend  # noqa: F401  (registers "triton")
except ImportError:
    _triton_backend = None

__all__ = ["AttentionCall", "available_backends", "get_backend", "register_backend",
           "reference_attention"]
