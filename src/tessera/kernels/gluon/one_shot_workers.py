"""Worker warps that leave after their partition, for warp-specialized Gluon kernels with one
``gl.warp_specialize`` region (Hopper, Triton 3.6).

Why: Triton 3.6 lowers ``gl.warp_specialize`` with the worker warps in a dispatch loop. They wait
in it at ``maxnreg - 48`` registers (``setmaxnreg.dec``), raise their registers to run their
partition, and lower them again to go back to waiting. Because the partitions' code can loop
back into the low-register wait, ptxas serializes every wgmma of the kernel (its warning C7512,
"insufficient register resources"), the default partition's included. With the workers leaving
after their partition instead, ptxas keeps the wgmmas asynchronous; the partitions then get the
registers their ``setmaxnreg.inc`` names, above ``maxnreg`` if they ask for more.

``register(name)`` marks a kernel by its entry name; ``rewrite(ptx)`` is what is done to a
marked kernel's PTX, installed as Triton's ``add_stages_inspection_hook`` (after any hook already
there) on import. The rewrite, for the one region:
- each worker's return to the wait (``barrier.sync 1`` that joins the default partition, then
  ``setmaxnreg.dec`` to the wait's count) becomes the join, the barrier that would release it
  from the wait (the default partition's last), and ``ret``;
- the default partition's ``setmaxnreg.inc`` back to its count outside the region is dropped: the
  workers hold their registers until they leave, so it could never be granted. The default
  partition finishes at its count inside the region.
Any other shape of PTX raises ``ValueError`` rather than being rewritten in part.

The hook is not part of Triton's cache key: a marked entry name must name only kernels compiled
while this module is imported (every kernel that registers itself imports it first).
"""

from __future__ import annotations

import re

from triton import knobs

_MARKED: set[str] = set()
_DEC = re.compile(r"^(\s*)setmaxnreg\.dec\.sync\.aligned\.u32\s+(\d+);\s*$")
_INC = re.compile(r"^\s*setmaxnreg\.inc\.sync\.aligned\.u32\s+(\d+);\s*$")
_LABEL = re.compile(r"^\$L__BB\d+_\d+:")
_JOIN = re.compile(r"^\s*barrier\.sync\s+1;\s*$")
_ENTRY = re.compile(r"\.visible \.entry ([A-Za-z_][A-Za-z0-9_]*)\(")


def register(name: str) -> str:
    """Mark the kernel whose PTX entry is ``name`` (a ``@gluon.jit`` function's name) for
    ``rewrite``; returns ``name``."""
    _MARKED.add(name)
    return name


def _is_instruction(line: str) -> bool:
    """Not blank, a comment, a ``.loc`` or a debug label (``$L__tmp``)."""
    text = line.strip()
    return bool(text) and not text.startswith(("//", ".loc", "$L__tmp"))


def _instructions_after(lines: list[str], i: int):
    """Indices of the instruction lines after line ``i``, in order."""
    return (j for j in range(i + 1, len(lines)) if _is_instruction(lines[j]))


def _follows_join(lines: list[str], i: int) -> bool:
    """Whether the instruction before line ``i`` is ``barrier.sync 1``."""
    before = next((j for j in range(i - 1, -1, -1) if _is_instruction(lines[j])), None)
    return before is not None and bool(_JOIN.match(lines[before]))


def rewrite(ptx: str) -> str:
    """The PTX of a one-region warp-specialized kernel with its workers leaving after their
    partition (see the module docstring). Raises ``ValueError`` on any other shape."""
    lines = ptx.split("\n")
    wait_at = None
    wait_registers = None
    for i, line in enumerate(lines):
        if _LABEL.match(line):
            following = [j for _, j in zip(range(2), _instructions_after(lines, i))]
            if (len(following) == 2 and _DEC.match(lines[following[0]])
                    and _JOIN.match(lines[following[1]])):
                if wait_at is not None:
                    raise ValueError("one_shot_workers: more than one worker wait loop")
                wait_at = following[0]
                wait_registers = _DEC.match(lines[wait_at]).group(2)
    if wait_at is None:
        raise ValueError("one_shot_workers: no worker wait loop (setmaxnreg.dec, barrier.sync 1)")

    returns = 0
    for i, line in enumerate(lines):
        match = _DEC.match(line)
        if i == wait_at or not match or match.group(2) != wait_registers:
            continue
        if not _follows_join(lines, i):
            raise ValueError(f"one_shot_workers: a return to the wait without its join, line {i + 1}")
        indent = match.group(1)
        lines[i] = f"{indent}barrier.sync \t1;\n{indent}ret;"
        returns += 1
    if returns == 0:
        raise ValueError("one_shot_workers: no worker returns to the wait")

    restores = [i for i, line in enumerate(lines) if _INC.match(line) and _follows_join(lines, i)]
    if not restores:
        raise ValueError("one_shot_workers: no default-partition restore after the region")
    for i in restores:
        lines[i] = ""
    return "\n".join(lines)


def _hook(previous):
    def install(backend, stages, options, language, capability):
        if previous is not None:
            previous(backend, stages, options, language, capability)
        make_ptx = stages["ptx"]

        def ptx_stage(src, metadata):
            ptx = make_ptx(src, metadata)
            match = _ENTRY.search(ptx)
            if match and match.group(1) in _MARKED:
                ptx = rewrite(ptx)
            return ptx

        stages["ptx"] = ptx_stage
    install.one_shot_workers = True
    return install


if not getattr(knobs.runtime.add_stages_inspection_hook, "one_shot_workers", False):
    knobs.runtime.add_stages_inspection_hook = _hook(knobs.runtime.add_stages_inspection_hook)
