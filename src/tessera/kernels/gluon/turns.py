"""Turns between the warpgroups of one program, on hardware named barriers (FA3's ping-pong).

Warpgroup ``w`` of ``n`` takes its turn on barrier ``FIRST_BARRIER + w`` (``bar.sync``: its
128 threads and the 128 of the warpgroup that passes to it) and passes it to ``w + 1`` mod
``n`` (``bar.arrive``, which does not wait). What a warpgroup issues between taking and passing
its turn reaches the hardware in rotation over the warpgroups. Before the first turn the last
warpgroup passes to the first (``pass_turn(0)``), and every warpgroup takes as many turns as
any other, so that each barrier sees as many arrivals as syncs (the first warpgroup takes one
more turn at the end, for the last pass).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

# Barrier 0 is the program's; Triton's warp specialization names a few more for its partitions.
FIRST_BARRIER = gl.constexpr(8)
_TAKE = gl.constexpr("bar.sync $1, 256;\nmov.u32 $0, 0;")
_PASS = gl.constexpr("bar.arrive $1, 256;\nmov.u32 $0, 0;")


@gluon.jit
def _on_barrier(ASM: gl.constexpr, which):
    """``ASM`` once per thread of a four-warp warpgroup with barrier ``FIRST_BARRIER + which``."""
    ids = gl.full([128], 0, gl.int32, gl.BlockedLayout([1], [32], [4], [0])) + (FIRST_BARRIER + which)
    return gl.inline_asm_elementwise(ASM, "=r,r", [ids], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def take_turn(which):
    """Wait until warpgroup ``which`` (this one) has been passed the turn."""
    _on_barrier(_TAKE, which)


@gluon.jit
def pass_turn(to):
    """Pass the turn to warpgroup ``to``."""
    _on_barrier(_PASS, to)
