"""Preloaded launch choices replace the timed choice for their keys only (no GPU: timing is faked)."""

from __future__ import annotations

import pytest

from tessera.linear.triton import tuning


@pytest.fixture
def tuning_state(monkeypatch):
    monkeypatch.setattr(tuning, "_tuning_enabled", lambda: True)
    monkeypatch.setattr(tuning, "_CHOSEN", {})
    monkeypatch.setattr(tuning, "_PRELOADED", {})
    timed = []

    def fake_time(launch, cfg):
        timed.append(cfg)
        return float(tuning.CANDIDATES["simple_gla.state"].index(cfg) == 2)  # all but the third: 0 ms
    monkeypatch.setattr(tuning, "_time_ms", fake_time)
    return timed


def test_preloaded_choice_is_taken_without_timing(tuning_state):
    candidates = tuning.CANDIDATES["simple_gla.state"]
    key = (16, 128, 128, "torch.bfloat16", True)
    assert tuning.preload({f"simple_gla.state|{key}": vars(candidates[2])}) == 1
    assert tuning.pick("simple_gla.state", key, launch=lambda cfg: None) == candidates[2]
    assert tuning_state == []
    assert tuning.chosen() == {f"simple_gla.state|{key}": vars(candidates[2])}


def test_other_keys_are_still_timed(tuning_state):
    candidates = tuning.CANDIDATES["simple_gla.state"]
    tuning.preload({f"simple_gla.state|{(16, 128, 128, 'torch.bfloat16', True)}": vars(candidates[2])})
    assert tuning.pick("simple_gla.state", (8, 64, 64, "torch.float16", True), launch=lambda cfg: None) == candidates[0]
    assert tuning_state == list(candidates)


def test_choices_that_are_not_candidates_are_skipped(tuning_state):
    taken = tuning.preload({"simple_gla.state|(1,)": {"block_k": 8, "block_v": 8, "num_warps": 1, "num_stages": 1},
                            "no.such.kernel|(1,)": vars(tuning.CANDIDATES["simple_gla.state"][0])})
    assert taken == 0
