"""BASED token mixer (Arora et al., 2024, "Simple linear attention language models balance the
recall-throughput tradeoff"): linear attention with the second-order Taylor feature map recalls from the
whole prefix in a fixed-size state, and exact softmax attention over a short sliding window keeps precise
local token interactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..api import attention
from ..linear.ops import linear_attention
from ..linear.recurrent import linear_attention_step
from ..patterns import Window


@dataclass
class BasedCache:
    """What ``BasedAttention`` carries from one call to the next (prefill, then decode steps).

    ``state``: the linear branch's normalized state ``(S [B, H, F, head_dim], z [B, H, F])``, float32
    (float64 for float64 weights); ``keys``, ``values``: the window branch's last ``window_size - 1`` keys and
    values ``[B, <= window_size - 1, H, head_dim]`` (None without a window branch); ``length``: tokens seen.
    """

    state: tuple[torch.Tensor, torch.Tensor]
    keys: Optional[torch.Tensor]
    values: Optional[torch.Tensor]
    length: int


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class BasedAttention(nn.Module):
    """BASED token mixer: ``x [B, T, hidden_size] -> [B, T, hidden_size]``, causal.

    Linear branch (``num_heads`` heads): ``q, k = x W`` with ``feature_dim`` channels per head (BASED
    uses 16, so the Taylor map ``phi`` has ``1 + 16 + 256 = 273`` features), ``v = x W`` with ``head_dim``;
    ``o_t = phi(q_t) S_t / (phi(q_t) . z_t)`` with ``S_t = sum_{s <= t} phi(k_s)^T v_s`` and
    ``z_t = sum_{s <= t} phi(k_s)`` (``tessera.linear.linear_attention(..., "taylor", normalize=True)``;
    ``phi(q) . phi(k) = 1 + s + s^2 / 2``, ``s = q . k / sqrt(feature_dim)``, is positive, so the
    denominators are too).
    Window branch (``num_heads`` heads of ``head_dim``): softmax attention of token ``t`` over tokens
    ``t - window_size + 1 .. t`` (``tessera.attention`` with ``Window(window_size - 1)``: the Triton kernel
    on CUDA, the reference elsewhere). ``window_size=0`` drops this branch.
    The output is ``W_o`` applied to both branches' outputs, concatenated per head (``[linear head h,
    window head h]`` for each ``h``). No positional encoding is applied inside: the window branch sees
    positions only through the window. With the default ``feature_dim`` the Taylor map has 273 features,
    more than one Triton linear launch takes (256): on CUDA the linear branch runs in feature groups.

    ``backend``: the linear branch's (``tessera.linear``: "auto", "triton", "torch"); the window branch
    takes ``tessera.attention``'s automatic choice.

    ``forward(x, cache=None, use_cache=False)``: with ``cache`` (from an earlier call) the tokens continue
    that sequence; with ``use_cache`` it returns ``(y, cache)`` for the next call. Prefill once, then call
    with one token at a time to decode: one-token calls run the linear branch's recurrent step
    (``tessera.linear.linear_attention_step``), the state is fixed-size and the window keeps
    ``window_size - 1`` tokens, so each step costs the same however long the sequence.
    """

    def __init__(self, hidden_size: int, num_heads: int, feature_dim: int = 16, head_dim: Optional[int] = None,
                 window_size: int = 64, bias: bool = False, backend: str = "auto"):
        super().__init__()
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_heads = _positive_int("num_heads", num_heads)
        self.feature_dim = _positive_int("feature_dim", feature_dim)
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"hidden_size must be divisible by num_heads when head_dim is None, got "
                                 f"{hidden_size} and {num_heads}")
            head_dim = hidden_size // num_heads
        self.head_dim = _positive_int("head_dim", head_dim)
        self.window_size = _positive_int("window_size", window_size, minimum=0)
        if backend not in ("auto", "triton", "torch"):
            raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
        self.backend = backend
        H, Fd, D = num_heads, feature_dim, self.head_dim
        self.linear_qkv = nn.Linear(hidden_size, H * (2 * Fd + D), bias=bias)
        self.window_qkv = nn.Linear(hidden_size, 3 * H * D, bias=bias) if window_size else None
        self.out_proj = nn.Linear((2 if window_size else 1) * H * D, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, cache: Optional[BasedCache] = None, use_cache: bool = False):
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be a [B, T, {self.hidden_size}] tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if cache is not None:
            self._check_cache(cache, x)
        B, T, _ = x.shape
        H, Fd, D = self.num_heads, self.feature_dim, self.head_dim
        q, k, v = self.linear_qkv(x).view(B, T, H, 2 * Fd + D).split([Fd, Fd, D], dim=-1)
        state = None if cache is None else cache.state
        if T == 1:  # decode: the recurrent step, a few small products instead of the chunked kernels
            o_lin, state = linear_attention_step(q[:, 0], k[:, 0], v[:, 0], "taylor", normalize=True, state=state)
            o_lin = o_lin.unsqueeze(1)
        else:
            o_lin, state = linear_attention(q, k, v, "taylor", normalize=True, initial_state=state,
                                            output_final_state=use_cache, backend=self.backend)
        heads = [o_lin]
        keys = values = None
        if self.window_qkv is not None:
            q, k, v = self.window_qkv(x).view(B, T, 3, H, D).unbind(2)
            if cache is not None and cache.keys.shape[1]:
                k, v = torch.cat([cache.keys, k], dim=1), torch.cat([cache.values, v], dim=1)
            heads.append(attention(q, k, v, pattern=Window(self.window_size - 1)))
            kept = min(k.shape[1], self.window_size - 1)
            # Copies, so that the cache does not keep a long prefill's projections alive.
            keys, values = k[:, k.shape[1] - kept:].clone(), v[:, v.shape[1] - kept:].clone()
        y = self.out_proj(torch.cat(heads, dim=-1).reshape(B, T, -1))
        if not use_cache:
            return y
        length = T + (0 if cache is None else cache.length)
        return y, BasedCache(state=state, keys=keys, values=values, length=length)

    def _check_cache(self, cache: BasedCache, x: torch.Tensor) -> None:
        if not isinstance(cache, BasedCache):
            raise TypeError(f"cache must be a BasedCache (from use_cache=True), got {type(cache).__name__}")
        S = cache.state[0]
        if S.shape[0] != x.shape[0]:
            raise ValueError(f"cache holds batch size {S.shape[0]}, x has {x.shape[0]}")
        if (cache.keys is None) != (self.window_qkv is None):
            raise ValueError("cache does not come from this layer (window branch mismatch)")

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, feature_dim={self.feature_dim}, "
                f"head_dim={self.head_dim}, window_size={self.window_size}")
