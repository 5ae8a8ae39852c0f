"""Additive score biases: one small class per kind, all behind ``Bias``.

A bias is added to the (scaled, soft-capped) logits before masking:
``s[b, h, i, j] = scale * q_i . k_j`` (then softcap), ``s += bias[b, h, i, j]``.

Every bias produces its rows on demand, ``block(q_start, q_stop, q_len, k_len)`` ->
``[B|1, H|1, q_stop - q_start, k_stop - k_start]``, so that a query-chunked backend never holds a
full ``S_q x S_k`` bias unless the user passed one. Gradients flow to every learnable tensor a bias
holds (``TensorBias.tensor``, ``ALiBi.slopes``, ``LowRank.u``/``w``, ``RelativePosition.table``).

Kinds:
    TensorBias(tensor)           a user tensor broadcastable to ``[B, H_q, S_q, S_k]``.
    ALiBi(slopes)                ``-slopes[h] * |i + S_k - S_q - j|`` (bottom-right aligned).
    LowRank(u, w)                ``u @ w^T`` with u ``[B|1, H|1, S_q, R]``, w ``[B|1, H|1, S_k, R]``.
    RelativePosition(table, grid) Swin-style relative position bias over an N-D token grid.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_float_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must have a floating dtype (float16/bfloat16/float32/float64), "
                        f"got {value.dtype}")
    return value


def _fits(size: int, target: int) -> bool:
    return size == 1 or size == target


class Bias:
    """Base class of additive score biases.

    Subclasses implement ``block`` and ``check``; ``for_sequence`` restricts a bias to one sequence
    of a varlen batch (the default keeps it unchanged, right for biases defined by positions).
    """

    def tensors(self) -> list[torch.Tensor]:
        """The tensors this bias holds (the learnable ones among them receive gradients)."""
        return []

    def check(self, batch: int, heads: int, q_len: int, k_len: int, device: torch.device) -> None:
        """Raise ValueError/TypeError when the bias cannot serve a ``[batch, heads, q_len, k_len]``
        problem on ``device``. Called once by ``tessera.attention`` (for varlen: on the whole
        packed batch, ``batch == 1``, lengths = totals)."""
        for t in self.tensors():
            if t.device != device:
                raise ValueError(f"bias tensors must be on the device of q ({device}), "
                                 f"got {t.device}")

    def block(self, q_start: int, q_stop: int, q_len: int, k_len: int,
              k_start: int = 0, k_stop: Optional[int] = None) -> torch.Tensor:
        """Bias rows ``q_start:q_stop`` and columns ``k_start:k_stop`` (default: all ``k_len``) of a
        ``q_len x k_len`` problem: ``[B|1, H|1, q_stop - q_start, k_stop - k_start]``."""
        raise NotImplementedError

    def for_sequence(self, q_start: int, q_stop: int, k_start: int, k_stop: int) -> "Bias":
        """The bias of one varlen sequence occupying packed rows ``q_start:q_stop`` of q and
        ``k_start:k_stop`` of k. Position-defined biases restart at 0 in every sequence."""
        return self

    def materialize(self, q_len: int, k_len: int) -> torch.Tensor:
        """The whole ``[B|1, H|1, q_len, k_len]`` bias (tests, small sizes)."""
        return self.block(0, q_len, q_len, k_len)


class TensorBias(Bias):
    """A user-materialized bias tensor, broadcastable to ``[B, H_q, S_q, S_k]``.

    Tensors with fewer than 4 dims are read as trailing dims (``[S_q, S_k]`` is one bias for all
    batches and heads). For varlen calls the tensor covers the packed problem
    ``[1|1, H|1, total_q, total_k]`` and sequence ``i`` uses its diagonal block.
    """

    def __init__(self, tensor: torch.Tensor):
        _check_float_tensor("bias", tensor)
        if tensor.dim() > 4:
            raise ValueError(f"bias must have at most 4 dims [B, H_q, S_q, S_k], "
                             f"got shape {tuple(tensor.shape)}")
        while tensor.dim() < 4:
            tensor = tensor.unsqueeze(0)
        self.tensor = tensor

    def tensors(self):
        return [self.tensor]

    def check(self, batch, heads, q_len, k_len, device):
        super().check(batch, heads, q_len, k_len, device)
        target = (batch, heads, q_len, k_len)
        if not all(_fits(s, t) for s, t in zip(self.tensor.shape, target)):
            raise ValueError(f"bias must be broadcastable to [B, H_q, S_q, S_k] = {list(target)}, "
                             f"got shape {tuple(self.tensor.shape)}")

    def block(self, q_start, q_stop, q_len, k_len, k_start=0, k_stop=None):
        k_stop = k_len if k_stop is None else k_stop
        t = self.tensor
        rows = t[:, :, q_start:q_stop] if t.shape[2] != 1 else t
        cols = rows[..., k_start:k_stop] if t.shape[3] != 1 else rows
        return cols.expand(t.shape[0], t.shape[1], q_stop - q_start, k_stop - k_start)

    def for_sequence(self, q_start, q_stop, k_start, k_stop):
        t = self.tensor
        t = t[:, :, q_start:q_stop] if t.shape[2] != 1 else t
        t = t[..., k_start:k_stop] if t.shape[3] != 1 else t
        return TensorBias(t)

    def __repr__(self):
        return f"TensorBias(shape={tuple(self.tensor.shape)})"


class ALiBi(Bias):
    """ALiBi linear distance penalty: ``bias[h, i, j] = -slopes[h] * |i + S_k - S_q - j|``.

    ``slopes``: float ``[H_q]``. Query row ``i`` sits at position ``i + S_k - S_q`` (bottom-right
    alignment, flash-attn's rule), so with causal masking the penalty is the distance to the key.
    """

    def __init__(self, slopes: torch.Tensor):
        _check_float_tensor("slopes", slopes)
        if slopes.dim() != 1:
            raise ValueError(f"slopes must be 1-D [H_q], got shape {tuple(slopes.shape)}")
        self.slopes = slopes

    @staticmethod
    def default_slopes(num_heads: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The geometric slopes of the ALiBi paper, ``2^(-8 h / H)`` for ``h = 1..H`` (for a power
        of two ``H``; other ``H`` interleave the two nearest powers as in the reference code)."""
        def powers(n):
            start = 2.0 ** (-8.0 / n)
            return [start ** (i + 1) for i in range(n)]
        p = 2 ** math.floor(math.log2(num_heads))
        values = powers(p)
        if p != num_heads:
            values += powers(2 * p)[0::2][: num_heads - p]
        return torch.tensor(values, device=device, dtype=dtype)

    def tensors(self):
        return [self.slopes]

    def check(self, batch, heads, q_len, k_len, device):
        super().check(batch, heads, q_len, k_len, device)
        if self.slopes.shape[0] != heads:
            raise ValueError(f"ALiBi slopes must have shape [H_q] = [{heads}], "
                             f"got {list(self.slopes.shape)}")

    def block(self, q_start, q_stop, q_len, k_len, k_start=0, k_stop=None):
        k_stop = k_len if k_stop is None else k_stop
        dev = self.slopes.device
        q_pos = torch.arange(q_start, q_stop, device=dev) + (k_len - q_len)
        k_pos = torch.arange(k_start, k_stop, device=dev)
        dist = (q_pos[:, None] - k_pos[None, :]).abs().to(self.slopes.dtype)
        return (-self.slopes.view(-1, 1, 1) * dist).unsqueeze(0)

    def __repr__(self):
        return f"ALiBi(heads={self.slopes.shape[0]})"


class LowRank(Bias):
    """A low-rank bias ``u @ w^T`` (FlashBias): u ``[B|1, H|1, S_q, R]``, w ``[B|1, H|1, S_k, R]``.

    For varlen calls u and w cover the packed rows (``S_q = total_q``, ``S_k = total_k``).
    """

    def __init__(self, u: torch.Tensor, w: torch.Tensor):
        _check_float_tensor("u", u)
        _check_float_tensor("w", w)
        for name, t in (("u", u), ("w", w)):
            if t.dim() != 4:
                raise ValueError(f"{name} must be 4-D [B|1, H|1, S, R], got shape {tuple(t.shape)}")
        if u.shape[-1] != w.shape[-1]:
            raise ValueError(f"u and w must have the same rank R (last dim), got u {tuple(u.shape)} "
                             f"and w {tuple(w.shape)}")
        if u.dtype != w.dtype:
            raise TypeError(f"u and w must have the same dtype, got {u.dtype} and {w.dtype}")
        self.u, self.w = u, w

    def tensors(self):
        return [self.u, self.w]

    def check(self, batch, heads, q_len, k_len, device):
        super().check(batch, heads, q_len, k_len, device)
        for name, t, length in (("u", self.u, q_len), ("w", self.w, k_len)):
            want = (batch, heads, length)
            if not (_fits(t.shape[0], batch) and _fits(t.shape[1], heads) and t.shape[2] == length):
                raise ValueError(f"LowRank {name} must have shape [{batch}|1, {heads}|1, {length}, R],"
                                 f" got {tuple(t.shape)}")

    def block(self, q_start, q_stop, q_len, k_len, k_start=0, k_stop=None):
        k_stop = k_len if k_stop is None else k_stop
        return self.u[:, :, q_start:q_stop] @ self.w[:, :, k_start:k_stop].transpose(-1, -2)

    def for_sequence(self, q_start, q_stop, k_start, k_stop):
        return LowRank(self.u[:, :, q_start:q_stop], self.w[:, :, k_start:k_stop])

    def __repr__(self):
        return f"LowRank(rank={self.u.shape[-1]})"


class RelativePosition(Bias):
    """Swin-style relative position bias over an N-D token grid in row-major order.

    ``grid = (g0, g1, ...)``; token ``i`` has coordinates ``c_i = unravel(i, grid)``.
    ``table``: float ``[H|1, 2*g0 - 1, 2*g1 - 1, ...]``;
    ``bias[h, i, j] = table[h, *(c_i - c_j + g - 1)]``. Needs ``S_q == S_k == prod(grid)`` (for
    varlen: every sequence).
    """

    def __init__(self, table: torch.Tensor, grid: Sequence[int]):
        _check_float_tensor("table", table)
        if isinstance(grid, int) and not isinstance(grid, bool):
            grid = (grid,)
        try:
            grid = tuple(grid)
        except TypeError:
            raise TypeError(f"grid must be a sequence of positive ints, got {grid!r}") from None
        if not grid or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in grid):
            raise ValueError(f"grid must be a non-empty sequence of positive ints, got {grid!r}")
        want = tuple(2 * g - 1 for g in grid)
        if table.dim() != len(grid) + 1 or tuple(table.shape[1:]) != want:
            raise ValueError(f"table must have shape [H, {', '.join(map(str, want))}] for grid "
                             f"{grid}, got {tuple(table.shape)}")
        self.table, self.grid = table, grid

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    def tensors(self):
        return [self.table]

    def check(self, batch, heads, q_len, k_len, device):
        super().check(batch, heads, q_len, k_len, device)
        if not _fits(self.table.shape[0], heads):
            raise ValueError(f"RelativePosition table must have {heads} (or 1) heads in dim 0, "
                             f"got shape {tuple(self.table.shape)}")

    def check_lengths(self, q_len: int, k_len: int, name: str = "bias") -> None:
        if q_len != self.num_tokens or k_len != self.num_tokens:
            raise ValueError(f"{name}: RelativePosition over grid {self.grid} needs S_q == S_k == "
                             f"{self.num_tokens}, got S_q={q_len}, S_k={k_len}")

    def _flat_offsets(self, positions: torch.Tensor) -> torch.Tensor:
        """Row-major flat index into ``table[h]`` of each token's coordinates, shifted so that
        ``flat(c_i) - flat'(c_j)`` addresses ``table[h, *(c_i - c_j + g - 1)]``."""
        flat = torch.zeros_like(positions)
        rest = positions
        stride = 1
        for g in reversed(self.grid):
            flat = flat + (rest % g) * stride
            rest = rest // g
            stride *= 2 * g - 1
        return flat

    def block(self, q_start, q_stop, q_len, k_len, k_start=0, k_stop=None):
        k_stop = k_len if k_stop is None else k_stop
        dev = self.table.device
        fq = self._flat_offsets(torch.arange(q_start, q_stop, device=dev))
        fk = self._flat_offsets(torch.arange(k_start, k_stop, device=dev))
        center = self._flat_offsets(torch.tensor(self.num_tokens - 1, device=dev))
        # c_i - c_j + (g - 1), flattened: the coordinate map is linear, so flat(c_i) - flat(c_j) +
        # flat(g - 1) is the flat index of the shifted difference (each digit stays in range).
        index = fq[:, None] - fk[None, :] + center
        return self.table.flatten(1)[:, index].unsqueeze(0)

    def __repr__(self):
        return f"RelativePosition(grid={self.grid})"


def as_bias(value, name: str = "bias") -> Optional[Bias]:
    """``None`` -> None; a ``Bias`` -> itself; a tensor -> ``TensorBias``; anything else: TypeError."""
    if value is None or isinstance(value, Bias):
        return value
    if isinstance(value, torch.Tensor):
        return TensorBias(value)
    raise TypeError(f"{name} must be None, a torch.Tensor or a tessera.bias.Bias "
                    f"(ALiBi, LowRank, RelativePosition), got {type(value).__name__}")


__all__ = ["Bias", "TensorBias", "ALiBi", "LowRank", "RelativePosition", "as_bias"]
