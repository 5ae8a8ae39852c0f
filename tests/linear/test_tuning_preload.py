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


def test_unusable_candidates_are_neither_timed_nor_taken(tuning_state, monkeypatch):
    """A dq/dk launch at a 32-wide key block, 4 warps and 3 stages faults on sm_90 except at K >= 64 with
    V a multiple of 64: at other head dims it is never timed, never a default, never taken from a preload."""
    bad, good = tuning.LaunchConfig(32, 64, 4, 3), tuning.LaunchConfig(64, 64, 8, 3)
    monkeypatch.setitem(tuning.CANDIDATES, "gla.dqk", (bad, good))
    timed = []
    monkeypatch.setattr(tuning, "_time_ms", lambda launch, cfg: timed.append(cfg) or 0.0)
    odd = (2, 128, 65, "torch.bfloat16")
    tuning.preload({f"gla.dqk|{odd}": vars(bad)})
    assert tuning.pick("gla.dqk", odd, launch=lambda cfg: None) == good
    assert timed == []  # one usable candidate: nothing to time
    assert tuning.pick("gla.dqk", (2, 128, 128, "torch.bfloat16"), launch=lambda cfg: None) == bad
    assert timed == [bad, good]
    monkeypatch.setattr(tuning, "_tuning_enabled", lambda: False)
    assert tuning.pick("gla.dqk", (2, 32, 64, "torch.bfloat16"), launch=lambda cfg: None) == good


@pytest.mark.parametrize("K,V,ok", [(128, 128, True), (128, 64, True), (32, 64, False), (32, 65, False),
                                    (128, 65, False), (64, 129, False)])
def test_usable_follows_the_measured_faults(K, V, ok):
    C = tuning.LaunchConfig
    assert tuning.usable("simple_gla.dqk", K, V, C(32, 64, 4, 3)) is ok
    assert tuning.usable("simple_gla.dqk", K, V, C(64, 64, 8, 3))
    assert tuning.usable("simple_gla.state", K, V, C(32, 64, 4, 3))
    assert tuning.usable("delta.dqk", K, V, C(128, 64, 4, 3)) is (ok or K > 32)


def test_forced_applies_prerequisites_and_restores_overrides(monkeypatch):
    monkeypatch.setattr(tuning, "OVERRIDES", {"simple_gla.state": tuning.CANDIDATES["simple_gla.state"][1]})
    before = dict(tuning.OVERRIDES)
    cfg = tuning.CANDIDATES["delta.wu"][1]
    with tuning.forced("delta.wu", cfg):
        assert tuning.pick("delta.wu", (2, 64, 64, "torch.float32", False), launch=None) == cfg
        assert tuning.OVERRIDES["delta.prepare"] == tuning.PREREQUISITES["delta.wu"]["delta.prepare"]
    assert tuning.OVERRIDES == before
    with pytest.raises(RuntimeError, match="inside"):
        with tuning.forced("delta.wu", cfg):
            raise RuntimeError("inside")
    assert tuning.OVERRIDES == before
