"""Pattern spec strings, for command lines and config files.

Grammar (whitespace is ignored, names are case-insensitive)::

    spec   := union
    union  := inter ( "+" inter )*          # "+" is union:         a + b  ==  a | b
    inter  := term ( "&" term )*            # "&" is intersection, binds tighter than "+"
    term   := "(" union ")" | name [ ":" args ]
    args   := arg ( "," arg )*              # positional arguments first, then key=value
    arg    := value | key "=" value
    value  := integer | "none" | "true" | "false"

Patterns and their arguments (in positional order; defaults in brackets):

    ========================  ===================================================================
    dense                     every query sees every key
    causal                    ``Causal()``: ``k_pos <= q_pos``
    window:left[,right=0]     ``Window(left, right)``; ``none`` = unbounded side.
                              ``window:256`` is ``Window(256, 0)``
    sinks:n                   ``Sinks(n)``: the first ``n`` keys, for every query
    dilated:window,dilation[,causal=true]
                              ``Dilated(window, dilation, causal)``
    blocked:block             ``Blocked(block)``: block-diagonal
    strided:[block=128,local=8,stride=8,causal=true]
                              ``Strided(block, local_blocks, stride, causal)`` (S2-Attention);
                              ``local_blocks`` is also accepted for ``local``
    power:[local=256,causal=true]
                              ``Power(local, causal)`` (PowerAttention)
    neighborhood:grid,kernel[,dilation=1,stride=1,causal=false]
                              ``Neighborhood`` over an N-D grid (NATTEN semantics); per-axis
                              values as ``64x64``, e.g. ``neighborhood:grid=64x64,kernel=7x7``
    swin:grid,window[,shifted=false]
                              ``Swin`` windows, shifted windows with cyclic-shift masking
    maxvit_block:grid,block   ``MaxViTBlock``: non-overlapping block attention
    maxvit_grid:grid,grid_size
                              ``MaxViTGrid``: dilated grid attention
    halo:grid,block,halo      ``Halo``: HaloNet blocks extended by a halo
    crisscross:grid           ``CrissCross``: same row or column (CCNet)
    radial:grid[,window=none] ``Radial``: video window shrinking with temporal distance
    ========================  ===================================================================

Examples: ``causal``, ``window:256``, ``window:256,64``, ``window:256+sinks:4`` (StreamingLLM),
``causal&window:512``, ``dilated:64,4``, ``strided:block=128,local=8,stride=8``,
``power:local=256``, ``causal&(window:128+blocked:64)``.

``parse(spec)`` returns the Pattern; ``to_spec(pattern)`` writes the canonical spec of a pattern
built from these parts (``parse(to_spec(p))`` gives the same pattern). Bad specs raise ValueError
naming the offending token.
"""

from __future__ import annotations

import re

from .base import Dense, Pattern
from .combine import Intersection, Union
from .local import Blocked, Causal, Window
from .neighborhood import Neighborhood
from .sinks import Sinks
from .sparse import Dilated, Power, Strided
from .vision import CrissCross, Halo, MaxViTBlock, MaxViTGrid, Radial, Swin

# name -> (constructor, positional parameter names, accepted keys -> parameter name)
_PATTERNS = {
    "dense": (Dense, (), {}),
    "causal": (Causal, (), {}),
    "window": (Window, ("left", "right"), {"left": "left", "right": "right"}),
    "sinks": (Sinks, ("n",), {"n": "n"}),
    "dilated": (Dilated, ("window", "dilation", "causal"),
                {"window": "window", "dilation": "dilation", "causal": "causal"}),
    "blocked": (Blocked, ("block",), {"block": "block"}),
    "strided": (Strided, ("block", "local_blocks", "stride", "causal"),
                {"block": "block", "local": "local_blocks", "local_blocks": "local_blocks",
                 "stride": "stride", "causal": "causal"}),
    "power": (Power, ("local", "causal"), {"local": "local", "causal": "causal"}),
    "neighborhood": (Neighborhood, ("grid", "kernel", "dilation", "stride", "causal"),
                     {k: k for k in ("grid", "kernel", "dilation", "stride", "causal")}),
    "swin": (Swin, ("grid", "window", "shifted"), {k: k for k in ("grid", "window", "shifted")}),
    "maxvit_block": (MaxViTBlock, ("grid", "block"), {k: k for k in ("grid", "block")}),
    "maxvit_grid": (MaxViTGrid, ("grid", "grid_size"), {k: k for k in ("grid", "grid_size")}),
    "halo": (Halo, ("grid", "block", "halo"), {k: k for k in ("grid", "block", "halo")}),
    "crisscross": (CrissCross, ("grid",), {"grid": "grid"}),
    "radial": (Radial, ("grid", "window"), {k: k for k in ("grid", "window")}),
}

_TOKEN = re.compile(r"\s*(?:(?P<op>[+&()])|(?P<term>[^+&()]+))")


def _value(text: str, token: str, spec: str):
    word = text.strip().lower()
    if word == "none":
        return None
    if word in ("true", "false"):
        return word == "true"
    if re.fullmatch(r"[+-]?\d+", word):
        return int(word)
    if re.fullmatch(r"\d+(x\d+)+", word):
        return tuple(int(part) for part in word.split("x"))
    raise ValueError(f"bad value {text.strip()!r} in {token!r} of spec {spec!r}: expected an integer, "
                     f"per-axis integers such as 64x64, none, true or false")


def _term(token: str, spec: str) -> Pattern:
    name, _, arg_text = token.partition(":")
    name = name.strip().lower()
    if name not in _PATTERNS:
        raise ValueError(f"unknown pattern {name!r} in spec {spec!r}: expected one of {sorted(_PATTERNS)}")
    build, positional, keys = _PATTERNS[name]
    kwargs: dict = {}
    if ":" in token:
        if not arg_text.strip():
            raise ValueError(f"empty argument list in {token.strip()!r} of spec {spec!r}")
        seen_key = False
        for i, arg in enumerate(arg_text.split(",")):
            if not arg.strip():
                raise ValueError(f"empty argument in {token.strip()!r} of spec {spec!r}")
            if "=" in arg:
                key, _, text = arg.partition("=")
                key = key.strip().lower()
                if key not in keys:
                    raise ValueError(f"unknown argument {key!r} in {token.strip()!r} of spec {spec!r}: "
                                     f"{name} takes {sorted(keys) or 'no arguments'}")
                param = keys[key]
                seen_key = True
            else:
                if seen_key:
                    raise ValueError(f"positional argument {arg.strip()!r} after key=value in "
                                     f"{token.strip()!r} of spec {spec!r}")
                if i >= len(positional):
                    raise ValueError(f"too many arguments in {token.strip()!r} of spec {spec!r}: "
                                     f"{name} takes at most {len(positional)} ({', '.join(positional) or 'none'})")
                param, text = positional[i], arg
            if param in kwargs:
                raise ValueError(f"argument {param!r} given twice in {token.strip()!r} of spec {spec!r}")
            kwargs[param] = _value(text, token.strip(), spec)
    try:
        return build(**kwargs)
    except TypeError as error:
        raise ValueError(f"bad arguments in {token.strip()!r} of spec {spec!r}: {error}") from None
    except ValueError as error:
        raise ValueError(f"bad arguments in {token.strip()!r} of spec {spec!r}: {error}") from None


class _Parser:
    def __init__(self, spec: str):
        self.spec = spec
        self.tokens: list[tuple[str, str]] = []
        position = 0
        text = spec.rstrip()
        while position < len(text):
            match = _TOKEN.match(text, position)
            kind = "op" if match.group("op") else "term"
            self.tokens.append((kind, match.group(kind).strip()))
            position = match.end()
        self.at = 0

    def _peek(self):
        return self.tokens[self.at] if self.at < len(self.tokens) else ("end", "")

    def _take(self):
        token = self._peek()
        self.at += 1
        return token

    def parse(self) -> Pattern:
        if not self.tokens:
            raise ValueError(f"spec must name a pattern, got {self.spec!r}")
        pattern = self._union()
        kind, text = self._peek()
        if kind != "end":
            raise ValueError(f"unexpected {text!r} in spec {self.spec!r}")
        return pattern

    def _union(self) -> Pattern:
        pattern = self._inter()
        while self._peek() == ("op", "+"):
            self._take()
            pattern = Union(pattern, self._inter())
        return pattern

    def _inter(self) -> Pattern:
        pattern = self._atom()
        while self._peek() == ("op", "&"):
            self._take()
            pattern = Intersection(pattern, self._atom())
        return pattern

    def _atom(self) -> Pattern:
        kind, text = self._take()
        if (kind, text) == ("op", "("):
            pattern = self._union()
            if self._take() != ("op", ")"):
                raise ValueError(f"missing ')' in spec {self.spec!r}")
            return pattern
        if kind != "term":
            found = "end of spec" if kind == "end" else repr(text)
            raise ValueError(f"expected a pattern name but found {found} in spec {self.spec!r}")
        return _term(text, self.spec)


def parse(spec: str) -> Pattern:
    """The Pattern described by ``spec`` (grammar in this module's docstring)."""
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str, got {type(spec).__name__}")
    return _Parser(spec).parse()


def _side(value) -> str:
    return "none" if value is None else str(value)


def _axes(values) -> str:
    return "x".join(str(v) for v in values)


def to_spec(pattern: Pattern) -> str:
    """Canonical spec string of ``pattern``; ValueError for patterns a spec cannot express
    (``PerHead``, ``FromMask``, ``FromFlex``)."""
    kind = type(pattern)
    if kind is Dense:
        return "dense"
    if kind is Causal:
        return "causal"
    if kind is Window:
        if pattern.right == 0:
            return f"window:{_side(pattern.left)}"
        return f"window:{_side(pattern.left)},{_side(pattern.right)}"
    if kind is Sinks:
        return f"sinks:{pattern.n}"
    if kind is Dilated:
        return f"dilated:{pattern.window},{pattern.dilation},causal={str(pattern.causal).lower()}"
    if kind is Blocked:
        return f"blocked:{pattern.block}"
    if kind is Strided:
        return (f"strided:block={pattern.block},local={pattern.local_blocks},stride={pattern.stride},"
                f"causal={str(pattern.causal).lower()}")
    if kind is Power:
        return f"power:local={pattern.local},causal={str(pattern.causal).lower()}"
    if kind is Neighborhood and len(set(pattern.causal)) == 1:
        return (f"neighborhood:grid={_axes(pattern.grid)},kernel={_axes(pattern.kernel)},"
                f"dilation={_axes(pattern.dilation)},stride={_axes(pattern.stride)},"
                f"causal={str(pattern.causal[0]).lower()}")
    if kind is Swin:
        return f"swin:grid={_axes(pattern.grid)},window={_axes(pattern.window)},shifted={str(pattern.shifted).lower()}"
    if kind is MaxViTBlock:
        return f"maxvit_block:grid={_axes(pattern.grid)},block={_axes(pattern.window)}"
    if kind is MaxViTGrid:
        return f"maxvit_grid:grid={_axes(pattern.grid)},grid_size={_axes(pattern.grid_size)}"
    if kind is Halo:
        return f"halo:grid={_axes(pattern.grid)},block={_axes(pattern.block)},halo={_axes(pattern.halo)}"
    if kind is CrissCross:
        return f"crisscross:grid={_axes(pattern.grid)}"
    if kind is Radial:
        return f"radial:grid={_axes(pattern.grid)},window={pattern.window}"
    if kind is Union:
        return "+".join(to_spec(p) for p in pattern.parts)
    if kind is Intersection:
        return "&".join(f"({to_spec(p)})" if isinstance(p, Union) else to_spec(p) for p in pattern.parts)
    raise ValueError(f"pattern must be built from spec-expressible parts, got {pattern!r}")
