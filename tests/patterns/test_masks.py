"""Every built-in pattern's mask against its rule written out in plain Python, pair by pair."""

import random

import pytest
import torch

from tessera.patterns import (Blocked, Causal, Dense, Dilated, FromFlex, FromMask, PerHead, Power,
                              Sinks, Strided, Window)


def is_power_of_two(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def rule(pattern, q: int, k: int, h: int) -> bool:
    """The documented rule of each built-in, for query position q, key position k, head h."""
    d = q - k
    if isinstance(pattern, Dense):
        return True
    if isinstance(pattern, Causal):
        return k <= q
    if isinstance(pattern, Window):
        after = pattern.left is None or k >= q - pattern.left
        before = pattern.right is None or k <= q + pattern.right
        return after and before
    if isinstance(pattern, Sinks):
        return k < pattern.n
    if isinstance(pattern, Dilated):
        w, s = pattern.window, pattern.dilation
        if pattern.causal:
            allowed = [q - i * s for i in range(w)]
        else:
            allowed = [q + j * s for j in range(-(w // 2), w - w // 2)]
        return k in allowed
    if isinstance(pattern, Blocked):
        return q // pattern.block == k // pattern.block
    if isinstance(pattern, Strided):
        qb, kb = q // pattern.block, k // pattern.block
        if pattern.causal:
            local = 0 <= qb - kb < pattern.local_blocks
        else:
            local = abs(qb - kb) < pattern.local_blocks
        remote = (kb + h) % pattern.stride == 0
        return (local or remote) and (k <= q or not pattern.causal)
    if isinstance(pattern, Power):
        if not pattern.causal:
            d = abs(d)
        return 0 <= d < pattern.local or is_power_of_two(d)
    raise AssertionError(pattern)


def random_builtin(rng):
    return rng.choice([
        Dense(), Causal(),
        Window(rng.randint(0, 60), rng.randint(0, 30)),
        Window(None, rng.randint(0, 30)), Window(rng.randint(0, 60), None),
        Sinks(rng.randint(1, 40)),
        Dilated(rng.randint(1, 12), rng.randint(1, 7), causal=True),
        Dilated(rng.randint(1, 12), rng.randint(1, 7), causal=False),
        Blocked(rng.randint(1, 50)),
        Strided(rng.randint(1, 20), rng.randint(1, 3), rng.randint(1, 4), causal=rng.random() < 0.5),
        Power(rng.randint(1, 20), causal=rng.random() < 0.5),
    ])


@pytest.mark.parametrize("seed", range(6))
def test_mask_matches_rule(seed):
    rng = random.Random(seed)
    for _ in range(12):
        pattern = random_builtin(rng)
        q_len = rng.randint(1, 70)
        k_len = rng.choice([q_len, rng.randint(1, 70)])
        heads = rng.randint(1, 5)
        got = pattern.dense_mask(q_len, k_len, heads)
        offset = k_len - q_len
        expected = torch.tensor([[[rule(pattern, r + offset, k, h) for k in range(k_len)]
                                  for r in range(q_len)] for h in range(heads)])
        assert torch.equal(got, expected), (pattern, q_len, k_len)


def test_named_cases():
    # Window(2): query at position 5 sees 3, 4, 5; with S_q=2, S_k=6 row 0 has position 4.
    assert Window(2).dense_mask(2, 6)[0].nonzero()[:, 1].tolist() == [2, 3, 4, 3, 4, 5]
    # Causal bottom-right: the last query sees every key.
    assert Causal().dense_mask(3, 7)[0, -1].all()
    assert Causal().dense_mask(3, 7)[0, 0].sum() == 5
    # Dilated(3, 2): keys q, q - 2, q - 4.
    row = Dilated(3, 2).dense_mask(10, 10)[0, 9]
    assert row.nonzero().flatten().tolist() == [5, 7, 9]
    row = Dilated(4, 3, causal=False).dense_mask(20, 20)[0, 10]
    assert row.nonzero().flatten().tolist() == [4, 7, 10, 13]
    # Power: offsets 0, 1 (local 2) and 2, 4, 8, 16.
    row = Power(2).dense_mask(20, 20)[0, 19]
    assert sorted((19 - row.nonzero().flatten()).tolist()) == [0, 1, 2, 4, 8, 16]
    # Strided heads together cover every causal pair.
    s2 = Strided(block=4, local_blocks=1, stride=3)
    assert torch.equal(s2.dense_mask(40, 40, 3).any(0), Causal().dense_mask(40, 40)[0])


def test_from_mask_and_per_head():
    raw = torch.rand(3, 9, 13) < 0.5
    pattern = FromMask(raw)
    assert torch.equal(pattern.dense_mask(9, 13, 3), raw)
    assert torch.equal(FromMask(raw[1]).dense_mask(9, 13, 2), raw[1].expand(2, 9, 13))
    mixed = PerHead([Causal(), Window(1)])
    m = mixed.dense_mask(6, 6, 4)
    assert torch.equal(m[0], Causal().dense_mask(6, 6)[0]) and torch.equal(m[2], m[0])
    assert torch.equal(m[1], Window(1).dense_mask(6, 6)[0]) and torch.equal(m[3], m[1])
    with pytest.raises(ValueError, match="q_len, k_len"):
        pattern.dense_mask(10, 13, 3)
    with pytest.raises(ValueError, match="num_heads"):
        pattern.tile_map(9, 13, 16, 16, num_heads=2)


def test_from_flex_passes_positions():
    seen = FromFlex(lambda b, h, q, k: (q >= k) & (h == 0), head_dependent=True)
    assert torch.equal(seen.dense_mask(3, 5, 2)[0], Causal().dense_mask(3, 5)[0])
    assert not seen.dense_mask(3, 5, 2)[1].any()


@pytest.mark.parametrize("pattern", [
    Causal(), Window(5, 2), Window(None, 3), Sinks(3), Dilated(4, 3), Dilated(4, 2, causal=False),
    Blocked(5), Strided(4, 2, 3), Strided(4, 2, 3, causal=False), Power(4), Power(3, causal=False),
    FromMask(torch.rand(12, 12) < 0.5), (Window(3) | Sinks(2)) & Causal(),
    PerHead([Window(2), Power(2)]),
], ids=repr)
def test_mask_traces_with_dynamo(pattern):
    """mask runs inside FlexAttention's compiled mask_mod: no graph breaks, no data-dependent branches."""
    q = torch.arange(12).view(12, 1)
    k = torch.arange(12).view(1, 12)
    h = torch.tensor(1)
    compiled = torch.compile(pattern.mask, fullgraph=True, backend="eager", dynamic=False)
    assert torch.equal(compiled(q, k, h), pattern.mask(q, k, h))
