"""Perplexity of a causal LM under different attention patterns, relative to dense attention."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..integrations import hf


@dataclass
class PerplexityResult:
    pattern: str
    perplexity: float
    ratio_to_dense: Optional[float]
    tokens: int


def token_windows(tokenizer, text: str, context: int, num_windows: int) -> torch.Tensor:
    """The first ``num_windows`` non-overlapping ``context``-token windows of ``text``: int64
    ``[num_windows, context]``."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    available = ids.numel() // context
    if available < num_windows:
        raise ValueError(f"num_windows must be <= {available} for this text at context {context}, got {num_windows}")
    return ids[: num_windows * context].view(num_windows, context)


@torch.no_grad()
def mean_nll(model, windows: torch.Tensor, progress: Optional[Callable[[int], None]] = None) -> float:
    """Mean next-token negative log-likelihood over every predicted token of every window."""
    total, count = 0.0, 0
    for i, window in enumerate(windows):
        logits = model(window[None]).logits[0, :-1].float()
        total += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
        count += window.numel() - 1
        if progress:
            progress(i + 1)
    return total / count


def perplexity_table(model, tokenizer, text: str, context: int, specs: Sequence[str], num_windows: int = 4,
                     backend: str = "auto", progress=None) -> list[PerplexityResult]:
    """Perplexity for each pattern spec (``"dense"`` first if present: the others' ratio needs it)."""
    windows = token_windows(tokenizer, text, context, num_windows)
    results, dense = [], None
    for spec in specs:
        hf.apply(model, pattern=None if spec == "dense" else spec, backend=backend)
        ppl = math.exp(mean_nll(model, windows, progress=(lambda n, s=spec: progress(s, n)) if progress else None))
        if spec == "dense":
            dense = ppl
        results.append(PerplexityResult(spec, ppl, None, windows.numel()))
    for r in results:
        r.ratio_to_dense = r.perplexity / dense if dense else None
    return results
