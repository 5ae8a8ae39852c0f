"""Spec strings: parsing, canonical round trips, and errors that name the bad token or argument."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from tessera.patterns import (Blocked, Causal, Dense, Dilated, Intersection, Power, Sinks, Strided,
                              Union, Window, parse, to_spec)
from tessera.patterns import FromMask, PerHead

bools = st.booleans()
sides = st.one_of(st.none(), st.integers(0, 300))
builtins = st.one_of(
    st.just(Dense()), st.just(Causal()),
    st.builds(Window, sides, sides),
    st.builds(Sinks, st.integers(1, 64)),
    st.builds(Dilated, st.integers(1, 64), st.integers(1, 8), bools),
    st.builds(Blocked, st.integers(1, 256)),
    st.builds(Strided, st.integers(1, 64), st.integers(1, 8), st.integers(1, 8), bools),
    st.builds(Power, st.integers(1, 256), bools),
)
patterns = st.recursive(builtins, lambda inner: st.one_of(st.builds(Union, inner, inner),
                                                          st.builds(Intersection, inner, inner)),
                        max_leaves=5)


@settings(max_examples=60, deadline=None)
@given(patterns, st.integers(1, 90), st.integers(1, 90))
def test_round_trip(pattern, q_len, k_len):
    spec = to_spec(pattern)
    again = parse(spec)
    assert to_spec(again) == spec
    heads = 3
    assert torch.equal(again.dense_mask(q_len, k_len, heads), pattern.dense_mask(q_len, k_len, heads))


@pytest.mark.parametrize("spec, expected", [
    ("dense", Dense()),
    ("causal", Causal()),
    ("window:256", Window(256, 0)),
    ("window:256,64", Window(256, 64)),
    ("window:none,0", Window(None, 0)),
    ("window:left=7,right=none", Window(7, None)),
    ("sinks:4", Sinks(4)),
    ("window:256+sinks:4", Window(256) | Sinks(4)),
    ("causal&window:512", Causal() & Window(512)),
    ("dilated:64,4", Dilated(64, 4)),
    ("dilated:8,2,causal=false", Dilated(8, 2, causal=False)),
    ("blocked:128", Blocked(128)),
    ("strided:block=128,local=8,stride=8", Strided(128, 8, 8)),
    ("strided:block=64,local_blocks=2,stride=4,causal=false", Strided(64, 2, 4, causal=False)),
    ("strided", Strided()),
    ("power:local=256", Power(256)),
    ("power", Power()),
    (" Causal & ( window:16 + blocked:8 ) ", Causal() & (Window(16) | Blocked(8))),
    ("sinks:2+window:3&causal", Sinks(2) | (Window(3) & Causal())),
])
def test_parse_examples(spec, expected):
    got = parse(spec)
    assert repr(got) == repr(expected)
    assert torch.equal(got.dense_mask(70, 90, 2), expected.dense_mask(70, 90, 2))


@pytest.mark.parametrize("spec, named", [
    ("windw:3", "windw"),
    ("window:abc", "abc"),
    ("window:-1", "left"),
    ("window:1,2,3", "window:1,2,3"),
    ("window:1,left=2", "left"),
    ("window", "left"),
    ("window:", "window:"),
    ("window:1,", "window:1,"),
    ("sinks:0", "n must be >= 1"),
    ("sinks:1.5", "1.5"),
    ("dilated:4,0", "dilation"),
    ("dilated:4,2,causal=3", "causal"),
    ("blocked:0", "block"),
    ("strided:foo=1", "foo"),
    ("strided:stride=0", "stride"),
    ("power:local=true", "local"),
    ("causal&", "end of spec"),
    ("+causal", "'+'"),
    ("(causal", "')'"),
    ("causal)", "')'"),
    ("causal:1", "causal:1"),
    ("", "spec"),
])
def test_bad_specs_name_the_token(spec, named):
    with pytest.raises(ValueError) as error:
        parse(spec)
    assert named in str(error.value)


def test_parse_rejects_non_strings_and_to_spec_rejects_custom():
    with pytest.raises(TypeError, match="spec"):
        parse(256)
    with pytest.raises(ValueError, match="pattern"):
        to_spec(PerHead([Causal()]))
    with pytest.raises(ValueError, match="pattern"):
        to_spec(FromMask(torch.ones(2, 2, dtype=torch.bool)))


@pytest.mark.parametrize("build, named", [
    (lambda: Window(-2), "left"), (lambda: Window(3, -1), "right"), (lambda: Window(2.5), "left"),
    (lambda: Sinks(0), "n"), (lambda: Sinks(True), "n"),
    (lambda: Dilated(0, 1), "window"), (lambda: Dilated(3, 0), "dilation"), (lambda: Dilated(3, 1, 1), "causal"),
    (lambda: Blocked(0), "block"), (lambda: Blocked("8"), "block"),
    (lambda: Strided(block=0), "block"), (lambda: Strided(local_blocks=0), "local_blocks"),
    (lambda: Strided(stride=0), "stride"), (lambda: Strided(causal=None), "causal"),
    (lambda: Power(0), "local"), (lambda: Power(4, causal="yes"), "causal"),
    (lambda: FromMask(torch.ones(3, 3)), "mask"), (lambda: FromMask([[True]]), "mask"),
    (lambda: FromMask(torch.ones(3, dtype=torch.bool)), "mask"),
    (lambda: Causal() | 3, "operands of |"), (lambda: PerHead([]), "patterns"),
    (lambda: Causal().tile_map(0, 4), "q_len"), (lambda: Causal().tile_map(4, 4, block_n=0), "block_n"),
])
def test_bad_parameters_name_the_argument(build, named):
    with pytest.raises((ValueError, TypeError)) as error:
        build()
    assert named in str(error.value)
