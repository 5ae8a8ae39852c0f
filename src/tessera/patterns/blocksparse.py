"""BlockSparse: an arbitrary pattern given block by block (random block masks, learned layouts)."""

from __future__ import annotations

import torch

from .base import Pattern
from .tilemap import EMPTY, FULL, PARTIAL, cdiv


class BlockSparse(Pattern):
    """Query block ``qb = q_pos // block_m`` sees key block ``kb = k_pos // block_n`` iff
    ``layout[h, qb, kb]``.

    Args:
        layout: bool ``[n_q_blocks, n_k_blocks]`` or ``[H, n_q_blocks, n_k_blocks]`` (one layout per
            head; head ``h`` uses ``layout[h % H]``). Positions past the layout are not allowed.
        block_m, block_n: block sizes in positions (queries, keys).

    Any rectangle is classified exactly in O(1) from 2-D prefix sums of the layout, so tile maps
    cost O(number of tiles) for every tile size.
    """

    def __init__(self, layout: torch.Tensor, block_m: int = 128, block_n: int | None = None):
        if not isinstance(layout, torch.Tensor):
            raise TypeError(f"layout must be a torch.Tensor, got {type(layout).__name__}")
        if layout.dtype != torch.bool:
            raise TypeError(f"layout must have dtype torch.bool, got {layout.dtype}")
        if layout.ndim not in (2, 3):
            raise ValueError(f"layout must be [n_q_blocks, n_k_blocks] or [H, n_q_blocks, n_k_blocks], "
                             f"got shape {tuple(layout.shape)}")
        block_n = block_m if block_n is None else block_n
        for name, value in (("block_m", block_m), ("block_n", block_n)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.layout = layout if layout.ndim == 3 else layout[None]
        self.block_m, self.block_n = block_m, block_n
        self.head_dependent = self.layout.shape[0] > 1
        counts = self.layout.to(torch.int64).cumsum(1).cumsum(2)
        self._prefix = torch.nn.functional.pad(counts, (1, 0, 1, 0))   # [H, nqb + 1, nkb + 1]

    @classmethod
    def random(cls, seq_len: int, density: float, block: int = 128, num_heads: int = 1,
               seed: int = 0, device: torch.device | str = "cpu") -> "BlockSparse":
        """Each (head, query block, key block) kept independently with probability ``density``;
        the diagonal block is always kept so that no query row is empty. The layout is drawn on
        CPU (the same for every device) and stored on ``device``."""
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        n = cdiv(seq_len, block)
        gen = torch.Generator().manual_seed(seed)
        layout = torch.rand(num_heads, n, n, generator=gen) < density
        layout |= torch.eye(n, dtype=torch.bool)
        return cls(layout.to(device), block, block)

    def _head(self, head: torch.Tensor) -> torch.Tensor:
        return head % self.layout.shape[0]

    def mask(self, q_pos, k_pos, head):
        h = self._head(head).to(self.layout.device)
        layout = self.layout.to(q_pos.device)
        nqb, nkb = layout.shape[1:]
        qb, kb = q_pos // self.block_m, k_pos // self.block_n
        inside = (qb >= 0) & (qb < nqb) & (kb >= 0) & (kb < nkb)
        allowed = layout[h.to(q_pos.device), qb.clamp(0, nqb - 1), kb.clamp(0, nkb - 1)]
        return allowed & inside

    def classify(self, q_lo, q_hi, k_lo, k_hi, head):
        prefix = self._prefix.to(q_lo.device)
        nqb, nkb = self.layout.shape[1:]
        q0 = (q_lo.clamp(min=0) // self.block_m).clamp(max=nqb)
        q1 = (q_hi // self.block_m + 1).clamp(min=0, max=nqb)
        k0 = (k_lo.clamp(min=0) // self.block_n).clamp(max=nkb)
        k1 = (k_hi // self.block_n + 1).clamp(min=0, max=nkb)
        h = self._head(head)
        q0, q1, k0, k1, h = torch.broadcast_tensors(q0, q1, k0, k1, h)
        kept = prefix[h, q1, k1] - prefix[h, q0, k1] - prefix[h, q1, k0] + prefix[h, q0, k0]
        covered = (q1 - q0).clamp(min=0) * (k1 - k0).clamp(min=0)
        # Rectangles reaching outside the layout (negative query positions, or past its end) hold
        # pairs that are never allowed.
        outside = (q_lo < 0) | (q_hi >= nqb * self.block_m) | (k_lo < 0) | (k_hi >= nkb * self.block_n)
        full = (kept == covered) & (covered > 0) & ~outside
        return torch.where(full, FULL, torch.where(kept > 0, PARTIAL, EMPTY)).to(torch.int8)

    def __repr__(self) -> str:
        h, nqb, nkb = self.layout.shape
        return f"BlockSparse(layout=[{h}, {nqb}, {nkb}], block_m={self.block_m}, block_n={self.block_n})"
