"""FlexAttention export: the BlockMask is tessera's exact TileMap; flex_attention matches float64."""

import warnings

import pytest
import torch

from tessera.patterns import (Blocked, Causal, Dense, Dilated, FromMask, Power, Sinks, Strided,
                              Window, to_flex)

flex = pytest.importorskip("torch.nn.attention.flex_attention")

PATTERNS = [
    Causal(), Window(40), Window(30, 17) | Sinks(5), Dilated(9, 4), Blocked(48) & Causal(),
    Strided(block=16, local_blocks=2, stride=3), Power(8), Dense(),
]


def reference(q, k, v, mask):
    """Masked softmax attention in float64 on [B, H, S, D]; fully masked rows give 0."""
    scores = (q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    return weights @ v.double()


def block_mask_elements(block_mask, mask_mod, q_len, k_len, heads):
    """Element mask that a block-sparse kernel computes from this BlockMask: pairs of full blocks,
    plus pairs of partial blocks where mask_mod allows them."""
    dense_partial = torch.zeros(heads, q_len, k_len, dtype=torch.bool)
    dense_full = torch.zeros_like(dense_partial)
    q_block, kv_block = block_mask.BLOCK_SIZE
    for target, count, index in ((dense_partial, block_mask.kv_num_blocks, block_mask.kv_indices),
                                 (dense_full, block_mask.full_kv_num_blocks, block_mask.full_kv_indices)):
        for h in range(heads):
            hb = h if count.shape[1] > 1 else 0
            for m in range(count.shape[2]):
                for t in range(int(count[0, hb, m])):
                    n = int(index[0, hb, m, t])
                    target[h, m * q_block:(m + 1) * q_block, n * kv_block:(n + 1) * kv_block] = True
    rows = torch.arange(q_len).view(1, -1, 1)
    cols = torch.arange(k_len).view(1, 1, -1)
    allowed = mask_mod(torch.tensor(0), torch.arange(heads).view(-1, 1, 1), rows, cols)
    return dense_full | (dense_partial & allowed)


@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
@pytest.mark.parametrize("q_len, k_len, block", [(192, 192, 32), (100, 230, (32, 64)), (150, 70, 32)])
def test_flex_attention_matches_reference(pattern, q_len, k_len, block):
    heads, dim = 3, 16
    mask_mod, block_mask = to_flex(pattern, q_len, k_len, num_heads=heads, block_size=block)
    mask = pattern.dense_mask(q_len, k_len, heads)
    # The BlockMask alone reproduces the pattern: no block missing, no block wrongly full.
    assert torch.equal(block_mask_elements(block_mask, mask_mod, q_len, k_len, heads), mask)
    q = torch.randn(2, heads, q_len, dim)
    k = torch.randn(2, heads, k_len, dim)
    v = torch.randn(2, heads, k_len, dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex.flex_attention(q, k, v, block_mask=block_mask)
    ref = reference(q, k, v, mask)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


@pytest.mark.parametrize("pattern", [Causal(), Window(40) | Sinks(3), Strided(16, 2, 3), Dilated(5, 3)],
                         ids=repr)
def test_block_mask_matches_create_block_mask(pattern):
    """Where every tile is whole (lengths divisible by the block), create_block_mask, which
    evaluates every element, gives the same blocks."""
    heads = 3 if pattern.head_dependent else 1
    mask_mod, ours = to_flex(pattern, 256, 256, num_heads=heads, block_size=32)
    theirs = flex.create_block_mask(mask_mod, 1, heads, 256, 256, device="cpu", BLOCK_SIZE=32)
    for name in ("kv_num_blocks", "full_kv_num_blocks", "q_num_blocks", "full_q_num_blocks"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name
    assert torch.equal(ours.to_dense(), theirs.to_dense())


def test_unequal_lengths_are_bottom_right_aligned():
    """FlexAttention passes query rows; the exported mask_mod adds k_len - q_len."""
    mask_mod, _ = to_flex(Causal(), 4, 10)
    rows = torch.arange(4).view(-1, 1)
    cols = torch.arange(10).view(1, -1)
    allowed = mask_mod(torch.tensor(0), torch.tensor(0), rows, cols)
    assert allowed.sum(1).tolist() == [7, 8, 9, 10]


def test_from_mask_exports_and_bad_arguments():
    raw = torch.rand(64, 96) < 0.3
    mask_mod, block_mask = to_flex(FromMask(raw), 64, 96, block_size=16)
    assert torch.equal(block_mask_elements(block_mask, mask_mod, 64, 96, 1)[0], raw)
    with pytest.raises(TypeError, match="block_size"):
        to_flex(Causal(), 8, 8, block_size=1.5)
    with pytest.raises(ValueError, match="block_size"):
        to_flex(Causal(), 8, 8, block_size=0)
    with pytest.raises(TypeError, match="pattern"):
        to_flex("causal", 8, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("pattern", PATTERNS, ids=repr)
def test_compiled_flex_on_gpu_matches_reference(pattern):
    """On GPU the compiled kernel does skip blocks: checks the block structure end to end,
    including full blocks at ragged sequence ends."""
    torch._dynamo.reset()              # a fresh compile budget: never fall back to eager here
    heads, dim = 4, 64
    compiled = torch.compile(flex.flex_attention)
    for q_len, k_len in ((1000, 1000), (300, 1100)):
        _, block_mask = to_flex(pattern, q_len, k_len, num_heads=heads, block_size=128, device="cuda")
        q = torch.randn(1, heads, q_len, dim, device="cuda")
        k = torch.randn(1, heads, k_len, dim, device="cuda")
        v = torch.randn(1, heads, k_len, dim, device="cuda")
        out = compiled(q, k, v, block_mask=block_mask)
        ref = reference(q, k, v, pattern.dense_mask(q_len, k_len, heads, device="cuda"))
        assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compiled_flex_on_gpu_uses_the_blocks():
    """Dropping the full blocks changes the compiled result: the GPU check above is sensitive to
    the block structure (eager FlexAttention is not)."""
    torch._dynamo.reset()
    mask_mod, block_mask = to_flex(Causal(), 1024, 1024, block_size=128, device="cuda")
    no_full = flex.BlockMask.from_kv_blocks(block_mask.kv_num_blocks, block_mask.kv_indices,
                                            torch.zeros_like(block_mask.full_kv_num_blocks),
                                            block_mask.full_kv_indices, BLOCK_SIZE=128,
                                            mask_mod=mask_mod, seq_lengths=(1024, 1024))
    q, k, v = (torch.randn(1, 2, 1024, 64, device="cuda") for _ in range(3))
    compiled = torch.compile(flex.flex_attention)
    ref = reference(q, k, v, Causal().dense_mask(1024, 1024, 2, device="cuda"))
    good = compiled(q, k, v, block_mask=block_mask)
    bad = compiled(q, k, v, block_mask=no_full)
    assert ((good.double() - ref).norm() / ref.norm()).item() < 1e-3
    assert ((bad.double() - ref).norm() / ref.norm()).item() > 1e-2
