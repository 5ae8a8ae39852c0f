"""TileMap: which key tiles each query tile visits, and whether each is full or partial.

The contract between patterns/selectors (what attends to what) and the kernels (how). CSR-like:
for head ``h`` and query tile ``m`` the kernel visits key tiles ``kv_index[h, m, :kv_count[h, m]]``
(ascending); ``kv_full[h, m, t]`` says that every (query, key) pair inside that tile is allowed,
so the kernel may skip masking. A listed tile that is not full is *partial*: at least one pair is
allowed and at least one is not. Unlisted tiles hold no allowed pair. Padding entries (positions
``>= kv_count``) hold index 0 and ``kv_full`` False; kernels never read them.

Tiles are over the real sequence: the last query tile holds ``q_len - (n_q_tiles - 1) * block_m``
rows, and "full" and "partial" are judged on the rows and columns that exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EMPTY, PARTIAL, FULL = 0, 1, 2


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class TileMap:
    """Per-head, per-query-tile lists of key tiles.

    Attributes:
        kv_count: int32 ``[H, n_q_tiles]`` number of listed key tiles.
        kv_index: int32 ``[H, n_q_tiles, max_listed]`` key-tile indices, ascending, padded with 0.
        kv_full:  bool  ``[H, n_q_tiles, max_listed]`` True where every pair of the tile is allowed.
        q_len, k_len: sequence lengths the map was built for.
        block_m, block_n: query and key tile sizes.
    """

    kv_count: torch.Tensor
    kv_index: torch.Tensor
    kv_full: torch.Tensor
    q_len: int
    k_len: int
    block_m: int
    block_n: int

    @property
    def num_heads(self) -> int:
        return self.kv_count.shape[0]

    @property
    def n_q_tiles(self) -> int:
        return cdiv(self.q_len, self.block_m)

    @property
    def n_k_tiles(self) -> int:
        return cdiv(self.k_len, self.block_n)

    @property
    def max_listed(self) -> int:
        return self.kv_index.shape[-1]

    def to(self, device) -> "TileMap":
        return TileMap(self.kv_count.to(device), self.kv_index.to(device), self.kv_full.to(device),
                       self.q_len, self.k_len, self.block_m, self.block_n)

    def states(self) -> torch.Tensor:
        """Dense int8 ``[H, n_q_tiles, n_k_tiles]``: 0 empty, 1 partial, 2 full (tests, pictures)."""
        h, nq = self.kv_count.shape
        out = torch.zeros(h, nq, self.n_k_tiles, dtype=torch.int8, device=self.kv_count.device)
        listed = torch.arange(self.max_listed, device=self.kv_count.device) < self.kv_count[..., None]
        value = torch.where(self.kv_full, FULL, PARTIAL).to(torch.int8)
        hh, mm, tt = listed.nonzero(as_tuple=True)
        out[hh, mm, self.kv_index[hh, mm, tt].long()] = value[hh, mm, tt]
        return out

    @staticmethod
    def from_states(states: torch.Tensor, q_len: int, k_len: int, block_m: int, block_n: int) -> "TileMap":
        """Build a TileMap from dense tile states ``[H, n_q_tiles, n_k_tiles]`` (0/1/2)."""
        columns = torch.arange(states.shape[-1], device=states.device)
        return TileMap.from_candidates(columns, states, q_len, k_len, block_m, block_n)

    @staticmethod
    def from_candidates(columns: torch.Tensor, states: torch.Tensor, q_len: int, k_len: int,
                        block_m: int, block_n: int) -> "TileMap":
        """Build a TileMap from the states of candidate key tiles only.

        Args:
            columns: int ``[n_q_tiles, W]``, ``[H, n_q_tiles, W]`` or ``[W]`` (shared by all query
                tiles): key-tile index of each candidate, strictly ascending along the last axis
                among the candidates that ``states`` marks non-empty.
            states: int8 ``[H, n_q_tiles, W]`` state (0/1/2) of each candidate; unlisted key tiles
                are empty.
        Costs O(H * n_q_tiles * W): no sort, no dense ``n_k_tiles`` axis.
        """
        listed = states > EMPTY
        count = listed.sum(-1, dtype=torch.int32)
        width = max(int(count.max().item()) if count.numel() else 0, 1)
        slot = torch.where(listed, listed.cumsum(-1) - 1, width)          # unlisted -> spill slot
        shape = (*states.shape[:-1], width + 1)
        cols = columns.expand(states.shape).to(torch.int32)
        index = torch.zeros(shape, dtype=torch.int32, device=states.device).scatter_(-1, slot, cols)
        full = torch.zeros(shape, dtype=torch.bool, device=states.device).scatter_(-1, slot, states == FULL)
        return TileMap(count.contiguous(), index[..., :width].contiguous(), full[..., :width].contiguous(),
                       q_len, k_len, block_m, block_n)

    def transpose(self) -> "TileMap":
        """The key-major view (for backward passes that loop over query tiles per key tile).

        Returned as a TileMap whose "query" axis is the key tiles: ``kv_count[h, n]`` is the number
        of query tiles that list key tile ``n``, ``kv_index`` those query tiles, ``kv_full`` flags.
        """
        return TileMap.from_states(self.states().transpose(1, 2), self.k_len, self.q_len, self.block_n, self.block_m)

    def tile_density(self) -> float:
        """Fraction of (head, query tile, key tile) triples that are listed."""
        total = self.num_heads * self.n_q_tiles * self.n_k_tiles
        return float(self.kv_count.sum().item()) / max(total, 1)

    def full_fraction(self) -> float:
        """Fraction of listed tiles that are full."""
        listed = int(self.kv_count.sum().item())
        return float(self.kv_full.sum().item()) / max(listed, 1)
