"""Linear and recurrent attention: simple GLA, Lightning, GLA, DeltaNet, Gated DeltaNet, feature-map linear
attention (BASED, Hedgehog). Layout ``[B, T, H, D]``; every op returns ``(o, final_state)``.

``ops``: the public ops (Triton on CUDA where a kernel exists, chunked PyTorch elsewhere);
``recurrent``: one-token decode steps; ``naive``: per-token float64-capable references;
``chunk``: chunked PyTorch forms; ``feature_maps``: ``phi`` for linear attention.
"""

from .feature_maps import HedgehogFeatureMap
from .naive import lightning_log_decay
from .ops import delta_rule, gated_delta_rule, gla, lightning_attn, linear_attention, simple_gla
from .recurrent import (delta_rule_step, gated_delta_rule_step, gla_step, lightning_attn_step,
                        linear_attention_step, simple_gla_step)

__all__ = [
    "simple_gla", "lightning_attn", "gla", "delta_rule", "gated_delta_rule", "linear_attention",
    "simple_gla_step", "lightning_attn_step", "gla_step", "delta_rule_step", "gated_delta_rule_step",
    "linear_attention_step", "HedgehogFeatureMap", "lightning_log_decay",
]
