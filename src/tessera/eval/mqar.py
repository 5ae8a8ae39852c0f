"""Multi-query associative recall (MQAR, Zoology): data and a small trainer for any tessera mixer.

A sequence starts with ``num_kv_pairs`` key-value pairs (keys from ``[1, V/2)``, values from
``[V/2, V)``, each key once), then the keys come back one by one as queries at power-law
distributed gaps (``p(gap = g) ~ a * g^(a-1)``, ``a = power_a``); only the token at a query's
position is scored, and its label is that key's value. Everything else is filler (0, or random
tokens with ``random_non_queries``) labelled -100 (ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

IGNORE = -100


def mqar_layout(keys: Sequence[int], values: Sequence[int], gaps: Sequence[int], input_seq_len: int):
    """One example from explicit keys, values and query gaps.

    The pairs occupy the first ``2 * len(keys)`` tokens; key ``i`` is queried at position
    ``2 * len(keys) + 2 * gaps[i]``, where the label is ``values[i]``.
    Returns ``(inputs, labels)``, int64 ``[input_seq_len]`` each.
    """
    context = 2 * len(keys)
    inputs = torch.zeros(input_seq_len, dtype=torch.int64)
    labels = torch.full((input_seq_len,), IGNORE, dtype=torch.int64)
    inputs[0:context:2] = torch.as_tensor(keys)
    inputs[1:context:2] = torch.as_tensor(values)
    where = context + 2 * torch.as_tensor(gaps, dtype=torch.int64)
    inputs[where] = torch.as_tensor(keys)
    labels[where] = torch.as_tensor(values)
    return inputs, labels


def multiquery_ar(vocab_size: int, num_examples: int, input_seq_len: int, num_kv_pairs: int,
                  power_a: float = 0.01, random_non_queries: bool = True, seed: int = 0):
    """``num_examples`` MQAR sequences: ``(inputs, labels)``, int64 ``[num_examples, input_seq_len]``."""
    if input_seq_len % 2:
        raise ValueError(f"input_seq_len must be even, got {input_seq_len}")
    if vocab_size <= input_seq_len:
        raise ValueError(f"vocab_size must exceed input_seq_len ({input_seq_len}), got {vocab_size}")
    if 4 * num_kv_pairs > input_seq_len:
        raise ValueError(f"num_kv_pairs must be <= input_seq_len / 4 = {input_seq_len // 4}, got {num_kv_pairs}")
    if not 0 < power_a <= 1:
        raise ValueError(f"power_a must be in (0, 1], got {power_a}")
    gen = torch.Generator().manual_seed(seed)
    half = vocab_size // 2
    space = (input_seq_len - 2 * num_kv_pairs) // 2
    gap_weights = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    inputs = torch.empty(num_examples, input_seq_len, dtype=torch.int64)
    labels = torch.empty_like(inputs)
    for n in range(num_examples):
        keys = 1 + torch.randperm(half - 1, generator=gen)[:num_kv_pairs]
        values = half + torch.randperm(vocab_size - half, generator=gen)[:num_kv_pairs]
        gaps = torch.multinomial(gap_weights, num_kv_pairs, replacement=False, generator=gen)
        inputs[n], labels[n] = mqar_layout(keys.tolist(), values.tolist(), gaps.tolist(), input_seq_len)
    if random_non_queries:
        filler = torch.randint(vocab_size, inputs.shape, generator=gen)
        inputs = torch.where(inputs == 0, filler, inputs)
    return inputs, labels


class AttentionMixer(torch.nn.Module):
    """Causal multi-head attention through ``tessera.attention`` with a chosen pattern."""

    def __init__(self, d_model: int, num_heads: int, pattern=None, backend: str = "auto"):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.pattern, self.backend = num_heads, pattern, backend
        self.qkv = torch.nn.Linear(d_model, 3 * d_model)
        self.out = torch.nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..api import attention

        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.num_heads, d // self.num_heads).unbind(2)
        o = attention(q, k, v, pattern=self.pattern, causal=True, backend=self.backend)
        return self.out(o.reshape(b, s, d))


class TinyLM(torch.nn.Module):
    """Embedding -> ``num_layers`` x (mixer + MLP, pre-norm residual) -> vocabulary logits."""

    def __init__(self, vocab_size: int, d_model: int, num_layers: int = 2, num_heads: int = 1,
                 pattern=None, max_len: int = 4096, backend: str = "auto"):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, d_model)
        self.position = torch.nn.Embedding(max_len, d_model)
        self.blocks = torch.nn.ModuleList()
        for _ in range(num_layers):
            self.blocks.append(torch.nn.ModuleDict({
                "norm1": torch.nn.LayerNorm(d_model), "mixer": AttentionMixer(d_model, num_heads, pattern, backend),
                "norm2": torch.nn.LayerNorm(d_model),
                "mlp": torch.nn.Sequential(torch.nn.Linear(d_model, 4 * d_model), torch.nn.GELU(),
                                           torch.nn.Linear(4 * d_model, d_model)),
            }))
        self.norm = torch.nn.LayerNorm(d_model)
        self.head = torch.nn.Linear(d_model, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = x + block["mixer"](block["norm1"](x))
            x = x + block["mlp"](block["norm2"](x))
        return self.head(self.norm(x))


@dataclass
class MQARResult:
    seq_len: int
    num_kv_pairs: int
    d_model: int
    pattern: str
    accuracy: float
    steps: int


def answer_accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                    batch_size: int = 64) -> float:
    """Fraction of query positions whose argmax prediction is the right value."""
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for s in range(0, inputs.shape[0], batch_size):
            logits = model(inputs[s:s + batch_size])
            scored = labels[s:s + batch_size] != IGNORE
            correct += (logits.argmax(-1)[scored] == labels[s:s + batch_size][scored]).sum().item()
            total += scored.sum().item()
    model.train()
    return correct / max(total, 1)


def train_mqar(seq_len: int = 64, num_kv_pairs: int = 4, d_model: int = 64, vocab_size: int = 256,
               pattern=None, num_train: int = 4000, num_test: int = 500, epochs: int = 8,
               batch_size: int = 64, lr: float = 3e-3, num_heads: int = 1, seed: int = 0,
               device: Optional[torch.device] = None, log=None) -> MQARResult:
    """Train a 2-layer TinyLM on MQAR and return its answer accuracy on fresh test sequences."""
    device = torch.device(device or "cpu")
    torch.manual_seed(seed)
    x_train, y_train = multiquery_ar(vocab_size, num_train, seq_len, num_kv_pairs, seed=seed)
    x_test, y_test = multiquery_ar(vocab_size, num_test, seq_len, num_kv_pairs, seed=seed + 1)
    x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))
    model = TinyLM(vocab_size, d_model, 2, num_heads, pattern, max_len=seq_len).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    steps_per_epoch = -(-num_train // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    steps = 0
    for epoch in range(epochs):
        order = torch.randperm(num_train, device=device)
        for s in range(0, num_train, batch_size):
            idx = order[s:s + batch_size]
            logits = model(x_train[idx])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y_train[idx].flatten(),
                                                     ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
        if log:
            log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, "
                f"test accuracy {answer_accuracy(model, x_test, y_test):.3f}")
    return MQARResult(seq_len, num_kv_pairs, d_model, repr(pattern) if pattern is not None else "dense",
                      answer_accuracy(model, x_test, y_test), steps)
