"""Tile maps against brute force from the materialized mask, for random patterns and shapes."""

import random

import pytest
import torch

from tessera.patterns import (EMPTY, FULL, PARTIAL, Blocked, Causal, Dense, Dilated, FromFlex,
                              FromMask, Pattern, PerHead, Power, Sinks, Strided, TileMap, Window)
from tessera.patterns.base import UNKNOWN


def brute_states(pattern: Pattern, q_len, k_len, block_m, block_n, num_heads) -> torch.Tensor:
    """int8 [H, n_q, n_k] states from the materialized mask: any / all over each tile's real pairs."""
    mask = pattern.dense_mask(q_len, k_len, num_heads)
    nq, nk = -(-q_len // block_m), -(-k_len // block_n)
    pad = (0, nk * block_n - k_len, 0, nq * block_m - q_len)
    real = torch.nn.functional.pad(torch.ones_like(mask), pad, value=False)
    padded = torch.nn.functional.pad(mask, pad, value=False)
    tiles = lambda t: t.view(num_heads, nq, block_m, nk, block_n)
    any_ = tiles(padded).any(4).any(2)
    all_ = (tiles(padded) | ~tiles(real)).all(4).all(2)
    return torch.where(all_, FULL, torch.where(any_, PARTIAL, EMPTY)).to(torch.int8)


def random_builtin(rng: random.Random, max_len: int) -> Pattern:
    kind = rng.choice(["causal", "window", "sinks", "dilated", "blocked", "strided", "power", "dense"])
    if kind == "causal":
        return Causal()
    if kind == "window":
        left = rng.choice([None, rng.randint(0, max_len)])
        right = rng.choice([None, 0, rng.randint(0, max_len // 2)])
        return Window(left, right)
    if kind == "sinks":
        return Sinks(rng.randint(1, max_len))
    if kind == "dilated":
        return Dilated(rng.randint(1, 40), rng.randint(1, 9), causal=rng.random() < 0.5)
    if kind == "blocked":
        return Blocked(rng.randint(1, 150))
    if kind == "strided":
        return Strided(rng.randint(1, 64), rng.randint(1, 4), rng.randint(1, 5), causal=rng.random() < 0.5)
    if kind == "power":
        return Power(rng.randint(1, 40), causal=rng.random() < 0.5)
    return Dense()


def random_pattern(rng: random.Random, max_len: int, depth: int = 0) -> Pattern:
    roll = rng.random()
    if depth < 2 and roll < 0.2:
        return random_pattern(rng, max_len, depth + 1) | random_pattern(rng, max_len, depth + 1)
    if depth < 2 and roll < 0.35:
        return random_pattern(rng, max_len, depth + 1) & random_pattern(rng, max_len, depth + 1)
    if depth < 2 and roll < 0.45:
        return PerHead([random_pattern(rng, max_len, depth + 1) for _ in range(rng.randint(1, 3))])
    return random_builtin(rng, max_len)


def random_problem(rng: random.Random):
    q_len = rng.randint(1, 300)
    k_len = rng.choice([q_len, rng.randint(1, 300)])
    return q_len, k_len, rng.randint(16, 128), rng.randint(16, 128), rng.randint(1, 8)


@pytest.mark.parametrize("seed", range(8))
def test_tile_states_match_brute_force(seed):
    rng = random.Random(seed)
    for _ in range(30):
        pattern = random_pattern(rng, 300)
        q_len, k_len, bm, bn, heads = random_problem(rng)
        expected = brute_states(pattern, q_len, k_len, bm, bn, heads)
        got = pattern.tile_states(q_len, k_len, bm, bn, heads)
        assert torch.equal(got, expected), (pattern, q_len, k_len, bm, bn, heads)
        tiles = pattern.tile_map(q_len, k_len, bm, bn, heads)
        assert torch.equal(tiles.states(), expected), (pattern, q_len, k_len, bm, bn, heads)
        assert tiles.kv_count.dtype == torch.int32 and tiles.kv_index.dtype == torch.int32
        listed = torch.arange(tiles.max_listed) < tiles.kv_count[..., None].long()
        steps = tiles.kv_index[..., 1:] - tiles.kv_index[..., :-1]
        assert bool((steps > 0)[listed[..., 1:]].all()), "kv_index must ascend"
        assert not bool(tiles.kv_full[~listed].any()) and not bool(tiles.kv_index[~listed].any())


def test_user_masks_match_brute_force():
    rng = random.Random(1)
    for _ in range(20):
        q_len, k_len, bm, bn, heads = random_problem(rng)
        raw = torch.rand(rng.choice([1, heads]), q_len, k_len) < rng.random()
        from_mask = FromMask(raw if raw.shape[0] > 1 else raw[0])
        offset = k_len - q_len
        from_flex = FromFlex(lambda b, h, q, k: (q - k) % (h + 2) == 0)
        for pattern in (from_mask, from_flex, from_mask | Window(rng.randint(0, 50)), from_flex & Causal()):
            expected = brute_states(pattern, q_len, k_len, bm, bn, heads)
            assert torch.equal(pattern.tile_states(q_len, k_len, bm, bn, heads), expected), pattern
        row = torch.arange(q_len)[:, None] + offset
        col = torch.arange(k_len)[None, :]
        flex_rule = torch.stack([(row - col) % (h + 2) == 0 for h in range(heads)])
        assert torch.equal(from_flex.dense_mask(q_len, k_len, heads), flex_rule)


def _offset_only(rng):
    return rng.choice([Causal(), Window(rng.randint(0, 200), rng.choice([0, None, rng.randint(0, 50)])),
                       Dilated(rng.randint(1, 30), rng.randint(1, 6), causal=rng.random() < 0.5),
                       Power(rng.randint(1, 64), causal=rng.random() < 0.5)])


def test_builtins_and_offset_compositions_never_unknown():
    rng = random.Random(2)
    for _ in range(60):
        builtin = random_builtin(rng, 300)
        composed = _offset_only(rng)
        for _ in range(rng.randint(1, 3)):
            composed = (composed | _offset_only(rng)) if rng.random() < 0.5 else (composed & _offset_only(rng))
        with_sinks = (_offset_only(rng) | Sinks(rng.randint(1, 100))) & _offset_only(rng)
        q_len, k_len, bm, bn, heads = random_problem(rng)
        nq, nk = -(-q_len // bm), -(-k_len // bn)
        m, n = torch.arange(nq), torch.arange(nk)
        q_lo = (m * bm + k_len - q_len).view(1, nq, 1)
        q_hi = (torch.clamp((m + 1) * bm, max=q_len) - 1 + k_len - q_len).view(1, nq, 1)
        k_lo = (n * bn).view(1, 1, nk)
        k_hi = (torch.clamp((n + 1) * bn, max=k_len) - 1).view(1, 1, nk)
        head = torch.arange(heads).view(heads, 1, 1)
        for pattern in (builtin, composed, Window(rng.randint(0, 99)) | Sinks(rng.randint(1, 99))):
            states = pattern.classify(q_lo, q_hi, k_lo, k_hi, head)
            assert not bool((states == UNKNOWN).any()), pattern
        for pattern in (composed, with_sinks):
            expected = brute_states(pattern, q_len, k_len, bm, bn, 1)
            assert torch.equal(pattern.tile_states(q_len, k_len, bm, bn, 1), expected), pattern


def test_tilemap_round_trips():
    rng = random.Random(3)
    for _ in range(25):
        pattern = random_pattern(rng, 300)
        q_len, k_len, bm, bn, heads = random_problem(rng)
        states = pattern.tile_states(q_len, k_len, bm, bn, heads)
        tiles = TileMap.from_states(states, q_len, k_len, bm, bn)
        assert torch.equal(tiles.states(), states)
        transposed = tiles.transpose()
        assert (transposed.q_len, transposed.k_len) == (k_len, q_len)
        assert (transposed.block_m, transposed.block_n) == (bn, bm)
        assert torch.equal(transposed.states(), states.transpose(1, 2))
        assert torch.equal(transposed.transpose().states(), states)
        expected_t = brute_states(pattern, q_len, k_len, bm, bn, heads).transpose(1, 2)
        assert torch.equal(transposed.states(), expected_t)
        assert torch.equal(tiles.to("cpu").kv_index, tiles.kv_index)


def test_density_matches_dense_mask():
    rng = random.Random(4)
    for _ in range(30):
        pattern = random_pattern(rng, 400)
        q_len = rng.randint(1, 400)
        k_len = rng.choice([q_len, rng.randint(1, 400)])
        heads = rng.randint(1, 4)
        expected = pattern.dense_mask(q_len, k_len, heads).double().mean().item()
        assert abs(pattern.density(q_len, k_len, heads) - expected) < 1e-12, pattern
