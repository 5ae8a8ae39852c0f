"""transformers integration on a tiny random Llama: dense equals eager, patterns equal eager with
the same explicit mask, backward and generate() with the KV cache."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tessera.integrations import hf as tessera_hf  # noqa: E402
from tessera.patterns import Causal, parse  # noqa: E402

VOCAB = 97


def tiny_llama(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, attn_implementation="eager")
    return transformers.LlamaForCausalLM(config).float().eval()


def pattern_bias(pattern, length: int) -> torch.Tensor:
    """Additive [1, 1, S, S] mask for eager attention from a head-independent pattern."""
    allowed = (pattern & Causal()).dense_mask(length, length)[0]
    return torch.zeros(length, length).masked_fill(~allowed, float("-inf"))[None, None]


def test_dense_matches_eager_forward_and_backward():
    eager = tiny_llama()
    ours = tessera_hf.apply(tiny_llama(), pattern=None)
    ids = torch.randint(0, VOCAB, (2, 37))
    ref, out = eager(ids).logits, ours(ids).logits
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), (out - ref).abs().max()
    eager(ids).logits.square().mean().backward()
    ours(ids).logits.square().mean().backward()
    for (name, p_ref), (_, p_out) in zip(eager.named_parameters(), ours.named_parameters()):
        assert torch.allclose(p_out.grad, p_ref.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("spec", ["window:8", "window:6+sinks:2", "dilated:4,2"])
def test_pattern_matches_eager_with_explicit_mask(spec):
    length = 29
    eager = tiny_llama(1)
    ours = tessera_hf.apply(tiny_llama(1), pattern=spec)
    ids = torch.randint(0, VOCAB, (1, length))
    ref = eager(ids, attention_mask=pattern_bias(parse(spec), length)).logits
    out = ours(ids).logits
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5), (out - ref).abs().max()


def test_per_layer_patterns_and_layers_argument():
    model = tessera_hf.apply(tiny_llama(), pattern={1: "window:4"})
    layers = tessera_hf.attention_layers(model)
    assert layers[0].tessera_attention.pattern is None
    assert repr(layers[1].tessera_attention.pattern) == repr(parse("window:4"))
    model = tessera_hf.apply(tiny_llama(), pattern="window:4", layers=[0])
    assert tessera_hf.attention_layers(model)[1].tessera_attention.pattern is None


def test_generate_with_cache_matches_eager():
    eager = tiny_llama(2)
    ours = tessera_hf.apply(tiny_llama(2), pattern=None)
    prompt = torch.randint(0, VOCAB, (1, 11))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, **kwargs), eager.generate(prompt, **kwargs))


def test_windowed_generate_equals_windowed_full_forward():
    """Decoding step by step with the cache sees the same keys as one full forward."""
    model = tessera_hf.apply(tiny_llama(3), pattern="window:5")
    prompt = torch.randint(0, VOCAB, (1, 9))
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    full = model(generated[:, :-1]).logits.argmax(-1)[:, prompt.shape[1] - 1:]
    assert torch.equal(full, generated[:, prompt.shape[1]:])


def test_padding_mask_is_honoured():
    eager = tiny_llama(4)
    ours = tessera_hf.apply(tiny_llama(4))
    ids = torch.randint(1, VOCAB, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, :4] = 0   # left padding in the second sequence
    ref, out = eager(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
    assert torch.allclose(out[:, 4:], ref[:, 4:], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(pattern=3), TypeError, "pattern"),
    (dict(pattern="window:4", layers=[7]), ValueError, "layers"),
    (dict(pattern={0: "window:4"}, layers=[0]), ValueError, "layers"),
    (dict(pattern="nonsense:1"), ValueError, "nonsense"),
])
def test_apply_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        tessera_hf.apply(tiny_llama(), **kwargs)


def test_not_a_transformers_model():
    with pytest.raises(ValueError, match="attention layers"):
        tessera_hf.apply(torch.nn.Linear(2, 2))
