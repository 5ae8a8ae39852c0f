"""Hugging Face transformers integration: ``attn_implementation="tessera"``.

    import tessera.integrations.hf as tessera_hf
    model = tessera_hf.apply(model, pattern="window:256+sinks:4")          # every layer
    model = tessera_hf.apply(model, pattern={0: "causal", 5: "window:512"})  # per layer
    model = tessera_hf.apply(model, pattern="strided:block=64,local=4,stride=4", layers=[2, 3])

Importing this module registers ``"tessera"`` in transformers' attention interface and mask
interface, so ``AutoModelForCausalLM.from_pretrained(..., attn_implementation="tessera")`` works too
(dense causal attention until ``apply`` sets patterns). Decoders are causal: every pattern is
intersected with causal masking, bottom-right aligned, so ``generate()`` with a KV cache (queries
shorter than keys) sees the same keys as a full forward. Padding masks from the tokenizer are
honoured through an additive bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Union

import torch

from ..api import attention
from ..patterns import Pattern, parse

IMPLEMENTATION = "tessera"
PatternLike = Union[Pattern, str, None]


@dataclass
class LayerAttention:
    """What one attention layer runs: its pattern (None = dense), score and backend."""

    pattern: Optional[Pattern] = None
    score: str = "softmax"
    backend: str = "auto"


_DEFAULT = LayerAttention()


def _as_pattern(value: PatternLike, name: str) -> Optional[Pattern]:
    if value is None or isinstance(value, Pattern):
        return value
    if isinstance(value, str):
        return parse(value)
    raise TypeError(f"{name} must be a Pattern, a pattern spec string or None, got {type(value).__name__}")


def _bias_from_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """transformers' 4-D mask (bool: True = attend, or additive float) as an additive bias."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


def tessera_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                              value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                              scaling: Optional[float] = None, dropout: float = 0.0,
                              is_causal: Optional[bool] = None, **kwargs):
    """transformers attention function. query ``[B, H_q, S_q, D]``, key/value ``[B, H_kv, S_k, D]``
    (after the cache update); returns ``(out [B, S_q, H_q, D], None)``."""
    if dropout and module.training:
        raise ValueError(f"dropout must be 0 with the tessera attention implementation, got {dropout}")
    layer = getattr(module, "tessera_attention", _DEFAULT)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    bias = None if attention_mask is None else _bias_from_mask(attention_mask, query.dtype)
    out = attention(query, key, value, pattern=layer.pattern, causal=bool(causal), scale=scaling,
                    score=layer.score, bias=bias, layout="bhsd", backend=layer.backend)
    return out.transpose(1, 2), None


def register() -> None:
    """Register ``"tessera"`` with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, tessera_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def attention_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's self-attention modules, in layer order (modules with a ``layer_idx``)."""
    layers = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")]
    if not layers:
        raise ValueError("model has no transformers attention layers (modules with layer_idx and "
                         "num_key_value_groups); is it a transformers decoder?")
    return sorted(layers, key=lambda m: m.layer_idx)


def apply(model: torch.nn.Module, pattern: Union[PatternLike, Mapping[int, PatternLike]] = None,
          score: str = "softmax", backend: str = "auto", layers: Optional[Iterable[int]] = None) -> torch.nn.Module:
    """Switch ``model`` to tessera attention and choose what each layer runs.

    Args:
        pattern: a Pattern, a spec string (``tessera.patterns.parse``), None (dense), or a dict
            ``{layer index: pattern}``; layers missing from the dict run dense causal attention.
        score: ``"softmax"`` or ``"sigmoid"`` for the patterned layers.
        backend: tessera backend for the patterned layers (``"auto"``, ``"triton"``, ``"reference"``).
        layers: with a single pattern, the layer indices that get it (default: all).
    Returns the same model, modified in place.
    """
    register()
    modules = attention_layers(model)
    indices = {m.layer_idx for m in modules}
    if isinstance(pattern, Mapping):
        if layers is not None:
            raise ValueError("layers must be None when pattern is a dict of layer -> pattern")
        chosen = {int(i): _as_pattern(p, f"pattern[{i}]") for i, p in pattern.items()}
    else:
        one = _as_pattern(pattern, "pattern")
        chosen = {i: one for i in (indices if layers is None else layers)}
    unknown = sorted(set(chosen) - indices)
    if unknown:
        raise ValueError(f"layers must be among the model's layer indices 0..{max(indices)}, got {unknown}")
    for m in modules:
        if m.layer_idx in chosen:
            m.tessera_attention = LayerAttention(chosen[m.layer_idx], score, backend)
        else:
            m.tessera_attention = LayerAttention(None, "softmax", backend)
    model.set_attn_implementation(IMPLEMENTATION)
    return model


try:
    register()
except ImportError:  # transformers is optional; apply() raises its own ImportError then
    pass
