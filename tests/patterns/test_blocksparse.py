"""BlockSparse: mask semantics and exact tile states for tile sizes unrelated to its block size."""

import random

import pytest
import torch

from tessera.patterns.base import UNKNOWN
from tessera.patterns.blocksparse import BlockSparse
from tessera.patterns.tilemap import EMPTY, FULL, PARTIAL, cdiv


def brute_states(pattern, q_len, k_len, bm, bn, heads):
    mask = pattern.dense_mask(q_len, k_len, heads)
    nq, nk = cdiv(q_len, bm), cdiv(k_len, bn)
    states = torch.zeros(heads, nq, nk, dtype=torch.int8)
    for a in range(nq):
        for b in range(nk):
            tile = mask[:, a * bm:(a + 1) * bm, b * bn:(b + 1) * bn].flatten(1)
            states[:, a, b] = torch.where(tile.all(1), FULL, torch.where(tile.any(1), PARTIAL, EMPTY))
    return states


def test_mask_follows_layout():
    layout = torch.tensor([[True, False], [False, True]])
    p = BlockSparse(layout, 4, 4)
    m = p.dense_mask(8, 8)[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = expected[4:, 4:] = True
    assert torch.equal(m, expected)
    # positions past the layout are never allowed
    assert not p.dense_mask(8, 12)[0][:, 8:].any()


@pytest.mark.parametrize("seed", range(40))
def test_tile_states_exact(seed):
    rng = random.Random(seed)
    heads = rng.randint(1, 3)
    bm, bn = rng.choice([8, 16, 24]), rng.choice([8, 16, 32])
    q_len, k_len = rng.randint(1, 150), rng.randint(1, 150)
    layout = torch.rand(heads, max(1, cdiv(k_len, bm) + rng.randint(-1, 1)),
                        max(1, cdiv(k_len, bn) + rng.randint(-1, 1)),
                        generator=torch.Generator().manual_seed(seed)) < rng.random()
    p = BlockSparse(layout, bm, bn)
    tile_m, tile_n = rng.choice([8, 16, 32]), rng.choice([8, 16, 32])
    q_lo = torch.arange(cdiv(q_len, tile_m)).view(1, -1, 1) * tile_m
    raw = p.classify(q_lo, q_lo + tile_m - 1, torch.zeros(1, 1, 1, dtype=torch.long),
                     torch.zeros(1, 1, 1, dtype=torch.long) + tile_n - 1, torch.zeros(1, 1, 1, dtype=torch.long))
    assert not (raw == UNKNOWN).any()
    assert torch.equal(p.tile_states(q_len, k_len, tile_m, tile_n, heads),
                       brute_states(p, q_len, k_len, tile_m, tile_n, heads))


def test_random_keeps_diagonal_and_density():
    p = BlockSparse.random(4096, 0.1, block=128, num_heads=4, seed=1)
    assert p.layout.diagonal(dim1=1, dim2=2).all()
    assert 0.08 < p.layout.float().mean().item() < 0.16


@pytest.mark.parametrize("bad, error, name", [
    (lambda: BlockSparse([[True]]), TypeError, "layout"),
    (lambda: BlockSparse(torch.ones(2, 2)), TypeError, "layout"),
    (lambda: BlockSparse(torch.ones(2, dtype=torch.bool)), ValueError, "layout"),
    (lambda: BlockSparse(torch.ones(2, 2, dtype=torch.bool), 0), ValueError, "block_m"),
    (lambda: BlockSparse(torch.ones(2, 2, dtype=torch.bool), 16, -1), ValueError, "block_n"),
    (lambda: BlockSparse.random(128, 0.0), ValueError, "density"),
])
def test_bad_arguments(bad, error, name):
    with pytest.raises(error, match=name):
        bad()
