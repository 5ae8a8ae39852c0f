"""Sparse static patterns: dilated windows, S2-Attention strided shards, PowerAttention."""

from __future__ import annotations

import torch

from .base import Pattern, _check_positive_int, unique_columns
from .offsets import INF, OffsetPattern, OffsetSet
from .tilemap import EMPTY, FULL, PARTIAL, cdiv

# Dilated windows with more keys than this expose no OffsetSet (one interval per key).
_MAX_OFFSET_POINTS = 4096


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def _floor_div(a, b: int):
    return torch.div(a, b, rounding_mode="floor")


class Dilated(OffsetPattern, Pattern):
    """Dilated sliding window (dilated attention of Longformer; NATTEN's ``dilation``): ``window``
    keys spaced ``dilation`` positions apart around the query.

    With ``j = (k_pos - q_pos) / dilation`` (the key must lie a multiple of ``dilation`` away):
      * causal:     ``-(window - 1) <= j <= 0``: the query and the ``window - 1`` keys
        ``dilation, 2 * dilation, ...`` positions before it;
      * non-causal: ``-(window // 2) <= j <= window - 1 - window // 2``: centered, with the extra
        key of an even window on the past side.
    ``dilation=1`` is a dense window (``Dilated(w, 1) == Window(w - 1)`` when causal).
    """

    def __init__(self, window: int, dilation: int, causal: bool = True):
        self.window = _check_positive_int("window", window)
        self.dilation = _check_positive_int("dilation", dilation)
        self.causal = _check_bool("causal", causal)

    def _steps(self) -> tuple[int, int]:
        """Inclusive range of ``i = (q_pos - k_pos) / dilation``."""
        if self.causal:
            return 0, self.window - 1
        return -(self.window - 1 - self.window // 2), self.window // 2

    def offsets(self) -> OffsetSet | None:
        lo, hi = self._steps()
        if self.dilation == 1:
            return OffsetSet([(lo, hi)])
        if self.window > _MAX_OFFSET_POINTS:
            return None
        return OffsetSet([(i * self.dilation, i * self.dilation) for i in range(lo, hi + 1)])

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        d = q_pos - k_pos
        lo, hi = self._steps()
        step = _floor_div(d, self.dilation)
        allowed = (d - step * self.dilation == 0) & (step >= lo) & (step <= hi)
        return allowed.expand(shape)

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        lo, hi = self._steps()
        dil = self.dilation
        a, b = q_lo - k_hi, q_hi - k_lo
        # The smallest allowed offset >= a: the next multiple of dil, no smaller than lo * dil.
        first = torch.clamp(-_floor_div(-a, dil), min=lo) * dil
        hit = (first <= b) & (first <= hi * dil)
        if dil == 1:
            full = (a >= lo) & (b <= hi)
        else:
            full = (a == b) & hit
        return torch.where(full, FULL, torch.where(hit, PARTIAL, EMPTY)).to(torch.int8).expand(shape)

    def key_tile_candidates(self, q_lo, q_hi, k_len, block_n, heads=1):
        lo, hi = self._steps()
        return OffsetSet([(lo * self.dilation, hi * self.dilation)]).key_tile_candidates(
            q_lo, q_hi, k_len, block_n)

    def __repr__(self) -> str:
        return f"Dilated({self.window}, {self.dilation}, causal={self.causal})"


class Power(OffsetPattern, Pattern):
    """PowerAttention (Chen et al. 2025): a local window plus keys at power-of-two distances, so the
    receptive field doubles with each layer.

    Causal: query ``q_pos`` sees key ``k_pos`` iff ``d = q_pos - k_pos`` satisfies
    ``0 <= d < local`` or ``d`` is a power of two (1, 2, 4, ...). Non-causal mirrors it: the same rule
    on ``|d|``.
    """

    def __init__(self, local: int = 256, causal: bool = True):
        self.local = _check_positive_int("local", local)
        self.causal = _check_bool("causal", causal)

    def offsets(self) -> OffsetSet:
        half = [(0, self.local - 1)] + [(1 << i, 1 << i) for i in range(62) if (1 << i) >= self.local]
        if self.causal:
            return OffsetSet(half)
        return OffsetSet(half + [(-hi, -lo) for lo, hi in half])

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        d = q_pos - k_pos
        if not self.causal:
            d = d.abs()
        power = (d > 0) & ((d & (d - 1)) == 0)
        return (((d >= 0) & (d < self.local)) | power).expand(shape)

    def __repr__(self) -> str:
        return f"Power(local={self.local}, causal={self.causal})"


class Strided(Pattern):
    """S2-Attention (Lin et al. 2024): context sharded across heads, plus a local window of blocks.

    With ``qb = q_pos // block`` and ``kb = k_pos // block``, head ``h`` sees key ``k_pos`` iff
      * local:  ``0 <= qb - kb < local_blocks`` (causal) or ``|qb - kb| < local_blocks``
        (non-causal), or
      * remote: ``(kb + h) % stride == 0``, its shard of the key blocks;
    and, when causal, also ``k_pos <= q_pos`` (token-level causality). Heads ``h`` and
    ``h + stride`` share a shard, and any ``stride`` consecutive heads together cover every key
    block.
    """

    head_dependent = True

    def __init__(self, block: int = 128, local_blocks: int = 8, stride: int = 8, causal: bool = True):
        self.block = _check_positive_int("block", block)
        self.local_blocks = _check_positive_int("local_blocks", local_blocks)
        self.stride = _check_positive_int("stride", stride)
        self.causal = _check_bool("causal", causal)

    def _local_range(self) -> tuple[int, int]:
        """Inclusive range of ``qb - kb`` in the local window."""
        return (0 if self.causal else 1 - self.local_blocks), self.local_blocks - 1

    def _remote(self, kb, head):
        return (kb + head) % self.stride == 0

    def mask(self, q_pos, k_pos, head):
        shape = torch.broadcast_shapes(q_pos.shape, k_pos.shape, head.shape)
        qb, kb = _floor_div(q_pos, self.block), _floor_div(k_pos, self.block)
        e_lo, e_hi = self._local_range()
        allowed = ((qb - kb >= e_lo) & (qb - kb <= e_hi)) | self._remote(kb, head)
        if self.causal:
            allowed = allowed & (k_pos <= q_pos)
        return allowed.expand(shape)

    def _first_remote(self, kb_lo, head):
        """Smallest remote key block ``>= kb_lo`` for each head."""
        return kb_lo + (-(kb_lo + head)) % self.stride

    def _all_remote(self, x, y, head):
        """Every key block of ``[x, y]`` (possibly empty) is remote."""
        if self.stride == 1:
            return torch.ones_like(x + y + head, dtype=torch.bool)
        return (x > y) | ((x == y) & self._remote(x, head))

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        shape = torch.broadcast_shapes(q_lo.shape, q_hi.shape, k_lo.shape, k_hi.shape, head.shape)
        B = self.block
        qa, qz, ka, kz = (_floor_div(x, B) for x in (q_lo, q_hi, k_lo, k_hi))
        e_lo, e_hi = self._local_range()
        # Full: every key block outside the one local to all query blocks, [qz - e_hi, qa - e_lo],
        # must be remote; when causal, every pair must also lie on or below the diagonal.
        full = (self._all_remote(ka, torch.minimum(kz, qz - e_hi - 1), head)
                & self._all_remote(torch.maximum(ka, qa - e_lo + 1), kz, head))
        if self.causal:
            full = full & (k_hi <= q_lo)
            # A remote pair needs a remote key at or before q_hi.
            k_top = torch.minimum(k_hi, q_hi)
            remote_hit = (k_lo <= q_hi) & (self._first_remote(ka, head) <= _floor_div(k_top, B))
            # A local pair: a key equal to a query position, or else the nearest pair
            # (query just past k_hi, key k_hi) within local_blocks.
            diagonal = torch.maximum(q_lo, k_lo) <= torch.minimum(q_hi, k_hi)
            q_near = torch.maximum(q_lo, k_hi + 1)
            local_hit = diagonal | ((q_near <= q_hi) & (_floor_div(q_near, B) - kz <= e_hi))
        else:
            remote_hit = self._first_remote(ka, head) <= kz
            local_hit = (qa - kz <= e_hi) & (qz - ka >= e_lo)
        hit = remote_hit | local_hit
        out = torch.where(full, FULL, torch.where(hit, PARTIAL, EMPTY)).to(torch.int8)
        return out.expand(shape)

    def key_tile_candidates(self, q_lo, q_hi, k_len, block_n, heads=1):
        """Per head: the key tiles of the local blocks of each query tile, and of the head's shard."""
        if self.stride == 1:
            return None
        B, device = self.block, q_lo.device
        nk = cdiv(k_len, block_n)
        e_lo, e_hi = self._local_range()
        # Local window of each query tile, as one run of key tiles.
        first = torch.clamp((_floor_div(q_lo, B) - e_hi) * B, min=0, max=k_len) // block_n
        top = (_floor_div(q_hi, B) - e_lo + 1) * B - 1
        if self.causal:
            top = torch.minimum(top, q_hi)
        last = torch.clamp(top, min=-1, max=k_len - 1)
        last = torch.where(last < 0, -1, last // block_n)
        width = int((last - first + 1).max().clamp(min=1).item())
        tiles = first[:, None] + torch.arange(width, device=device)
        local = torch.where(tiles <= last[:, None], tiles, nk)
        # The shard of head h: key blocks kb = (-h) mod stride + j * stride, each spanning a run of
        # key tiles.
        shard = torch.arange(0, cdiv(k_len, B), self.stride, device=device)
        blocks = (-torch.arange(heads, device=device)) % self.stride
        kb = blocks[:, None] + shard[None, :]                                    # [heads, R]
        tile_first = torch.clamp(kb * B, max=k_len) // block_n
        tile_last = (torch.clamp((kb + 1) * B, max=k_len) - 1) // block_n
        span = max(int((tile_last - tile_first).max().item()) + 1, 1)
        runs = tile_first[..., None] + torch.arange(span, device=device)
        runs = torch.where((runs <= tile_last[..., None]) & (kb[..., None] * B < k_len), runs, nk)
        remote = runs.flatten(1)[:, None, :].expand(heads, q_lo.shape[0], -1)
        if remote.shape[-1] >= nk:
            return None
        columns = torch.cat([local.expand(heads, -1, -1), remote], dim=-1)
        return unique_columns(columns, nk)

    def __repr__(self) -> str:
        return (f"Strided(block={self.block}, local_blocks={self.local_blocks}, stride={self.stride}, "
                f"causal={self.causal})")
