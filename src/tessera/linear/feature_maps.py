"""Feature maps ``phi`` of linear attention: ``softmax(q . k)`` is replaced by ``phi(q) . phi(k)``.

Every map acts on the last dimension of ``[..., D]`` and returns ``[..., F]``:
    identity: ``F = D``;  elu: ``elu(x) + 1`` (Katharopoulos et al., 2020), ``F = D``;
    relu: ``F = D``;  taylor: BASED's second-order Taylor map, ``F = 1 + D + D^2``, with
    ``phi(q) . phi(k) = 1 + s + s^2 / 2`` for ``s = q . k / sqrt(D)``;
    HedgehogFeatureMap: learnable ``[softmax(W x + b), softmax(-(W x + b))]``, ``F = 2 D``
    (Zhang et al., 2024, "The Hedgehog & the Porcupine").
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import nn


def identity_feature_map(x: torch.Tensor) -> torch.Tensor:
    return x


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1.0


def relu_feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


def taylor_feature_map(x: torch.Tensor) -> torch.Tensor:
    """``[1, x / D^(1/4), vec(x x^T) / (sqrt(2) sqrt(D))]``: the exponential's Taylor series to order 2."""
    d = x.shape[-1]
    xs = x * d ** -0.25
    second = (xs.unsqueeze(-1) * xs.unsqueeze(-2)).flatten(-2) * 0.5 ** 0.5
    return torch.cat([torch.ones_like(x[..., :1]), xs, second], dim=-1)


class HedgehogFeatureMap(nn.Module):
    """Learnable Hedgehog map ``[softmax(W x + b), softmax(-(W x + b))]`` over the last dimension.

    ``head_dim``: ``D``; the output has ``2 D`` features. ``W`` starts at the identity, ``b`` at zero.
    """

    def __init__(self, head_dim: int):
        super().__init__()
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
        self.layer = nn.Linear(head_dim, head_dim)
        nn.init.eye_(self.layer.weight)
        nn.init.zeros_(self.layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x.to(self.layer.weight.dtype))
        return torch.cat([y.softmax(-1), (-y).softmax(-1)], dim=-1).to(x.dtype)


FEATURE_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": identity_feature_map,
    "elu": elu_feature_map,
    "relu": relu_feature_map,
    "taylor": taylor_feature_map,
}

FeatureMap = Union[None, str, Callable[[torch.Tensor], torch.Tensor]]


def resolve_feature_map(feature_map: FeatureMap) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable behind ``feature_map``: ``None`` (identity), a name in ``FEATURE_MAPS``, or a callable."""
    if feature_map is None:
        return identity_feature_map
    if isinstance(feature_map, str):
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {sorted(FEATURE_MAPS)} or a callable, got {feature_map!r}")
        return FEATURE_MAPS[feature_map]
    if callable(feature_map):
        return feature_map
    raise TypeError(f"feature_map must be None, a str or a callable, got {type(feature_map).__name__}")
