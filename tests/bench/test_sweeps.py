"""The tuning scripts' pieces (tessera/bench/sweeps.py)."""

from __future__ import annotations

import pytest
import torch

from tessera.bench import sweeps
from tessera.kernels.triton import tuning
from tessera.kernels.triton.tuning import KernelConfig
from tessera.patterns.vision import MaxViTGrid


def test_attention_steps_run_the_pattern_forward_and_backward():
    pattern = MaxViTGrid((4, 6), 2)
    forward, forward_backward = sweeps.attention_steps(pattern, 2, 3, 8, torch.device("cpu"))
    o = forward()
    assert o.shape == (2, 24, 3, 8) and o.dtype == torch.bfloat16 and not o.requires_grad
    grads = forward_backward()
    assert [g.shape for g in grads] == [(2, 24, 3, 8)] * 3 and all(g.abs().sum() > 0 for g in grads)


def test_override_times_set_the_overrides_while_timing_and_clear_them(monkeypatch):
    seen = []
    monkeypatch.setattr(sweeps, "graph_replay_ms", lambda fn: seen.append(dict(tuning.OVERRIDES)) or 0.5)
    overrides = {"fwd": KernelConfig(64, 64, 2, 1)}
    assert sweeps.override_times((lambda: None, lambda: None), overrides) == {"fwd": 0.5, "fwd+bwd": 0.5}
    assert seen == [overrides, overrides] and not tuning.OVERRIDES

    def failing(fn):
        raise RuntimeError("out of shared memory")
    monkeypatch.setattr(sweeps, "graph_replay_ms", failing)
    with pytest.raises(RuntimeError):
        sweeps.override_times((lambda: None, lambda: None), overrides)
    assert not tuning.OVERRIDES
