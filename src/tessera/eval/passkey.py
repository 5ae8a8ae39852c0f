"""Passkey retrieval (Landmark Attention): can the model recall a number hidden in filler text?"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from ..integrations import hf

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


@dataclass
class PasskeyResult:
    pattern: str
    length: int
    depth: float
    accuracy: float
    trials: int


def passkey_prompt(tokenizer, length: int, depth: float, key: int) -> torch.Tensor:
    """Token ids of a prompt of about ``length`` tokens with the needle at relative ``depth``
    (0 = right after the task description, 1 = right before the question). At depth 1 small
    models such as SmolLM2-135M tend to echo "the pass key" instead of the number, so the default
    depths of ``tessera eval passkey`` stop at 0.75."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    def count(text):
        return len(tokenizer(text, add_special_tokens=False).input_ids)
    fixed = count(f"{TASK} {NEEDLE.format(key=key)} {QUESTION}")
    per_filler = count(" ".join([FILLER] * 8)) / 8
    n_filler = max(0, int((length - fixed) / per_filler))
    before = round(n_filler * depth)
    parts = [TASK] + [FILLER] * before + [NEEDLE.format(key=key)] + [FILLER] * (n_filler - before) + [QUESTION]
    return tokenizer(" ".join(parts), return_tensors="pt").input_ids


@torch.no_grad()
def passkey_accuracy(model, tokenizer, length: int, depth: float, trials: int = 3, seed: int = 0) -> float:
    rng = random.Random(seed * 1_000_003 + length * 101 + int(depth * 100))
    correct = 0
    for _ in range(trials):
        key = rng.randint(10000, 99999)
        ids = passkey_prompt(tokenizer, length, depth, key)
        out = model.generate(ids, max_new_tokens=8, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        correct += str(key) in tokenizer.decode(out[0, ids.shape[1]:])
    return correct / trials


def passkey_table(model, tokenizer, specs: Sequence[str], lengths: Sequence[int], depths: Sequence[float],
                  trials: int = 3, backend: str = "auto", progress=None) -> list[PasskeyResult]:
    results = []
    for spec in specs:
        hf.apply(model, pattern=None if spec == "dense" else spec, backend=backend)
        for length in lengths:
            for depth in depths:
                acc = passkey_accuracy(model, tokenizer, length, depth, trials)
                results.append(PasskeyResult(spec, length, depth, acc, trials))
                if progress:
                    progress(results[-1])
    return results
