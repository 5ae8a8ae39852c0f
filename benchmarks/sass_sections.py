"""Instruction counts of a flash kernel's tile loops, compiled for Hopper (sm_90) without a GPU.

    python benchmarks/sass_sections.py [--variant NAME] [--kernel _attn_fwd] [--config 64,64,4,3]
        [--dump FILE]

Runs one variant of ``compile_check.py`` (default: the 2-D 17 x 17 neighborhood in grid order)
with launches captured, compiles the chosen kernel as the GPU would, and prints, per tile loop,
the SASS between the wait for the QK^T wgmma and the P @ V wgmma (the softmax section: mask,
scale, max, exp, sums) as a total and its most frequent opcodes; then shared memory, registers
and spills. Forward kernels only (the section markers are the forward's wgmma shapes).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(__file__))

from compile_check import Capture, variants  # noqa: E402

from tessera.bench.hopper_compile import compile_distinct, resources, sass  # noqa: E402
from tessera.kernels.triton import tuning  # noqa: E402
from tessera.kernels.triton.tuning import KernelConfig  # noqa: E402

_OPCODE = re.compile(r"(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9]+)(?:\.[A-Z0-9_.]+)?\s")


def softmax_sections(text: str) -> list[tuple[int, Counter]]:
    """``(instructions, opcode counts)`` of each stretch from a QK^T wgmma group's last
    instruction (``gsb0``) to the next P @ V wgmma (``HGMMA.64x<D>``, D > 64 or a register A)."""
    lines = text.splitlines()
    sections, i = [], 0
    while i < len(lines):
        if "HGMMA" in lines[i] and "gsb0" in lines[i] and "gdesc" in lines[i].split("HGMMA", 1)[1].split(",")[1]:
            j = i + 1
            while j < len(lines) and not re.search(r"HGMMA\.\d+x\d+x\d+\.\S+ R\d+, R\d+", lines[j]):
                j += 1
            counts = Counter()
            for line in lines[i + 1:j]:
                body = line.split("*/", 1)[-1] if "*/" in line else line
                match = _OPCODE.search(body.strip() + " ")
                if match:
                    counts[match.group(1)] += 1
            sections.append((sum(counts.values()), counts))
            i = j
        i += 1
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="na2d 128x128 k17 grid order bf16 D128")
    parser.add_argument("--kernel", default="_attn_fwd")
    parser.add_argument("--config", default=None, help="forced block_m,block_n,warps,stages")
    parser.add_argument("--dump", default=None, help="write the SASS here")
    args = parser.parse_args()
    if args.config:
        kernel_name = {"_attn_fwd": "fwd", "_attn_bwd_dq": "dq", "_attn_bwd_dkdv": "dkdv"}[args.kernel]
        tuning.OVERRIDES[kernel_name] = KernelConfig(*map(int, args.config.split(",")))
    matches = [thunk for name, thunk in variants() if name == args.variant]
    if not matches:
        raise SystemExit(f"no variant {args.variant!r}; see benchmarks/compile_check.py")
    with Capture() as capture:
        matches[0]()
    launches = [launch for launch in capture.launches if launch[0].__name__ == args.kernel]
    for _fn, _options, kernel, error in compile_distinct(launches, set()):
        if error is not None:
            raise SystemExit(f"compile failed: {error} {error.__cause__!r}")
        text = sass(kernel)
        if args.dump:
            with open(args.dump, "w") as f:
                f.write(text)
        for n, (total, counts) in enumerate(softmax_sections(text)):
            print(f"tile loop {n}: {total} instructions  {dict(counts.most_common(8))}")
        regs, stack = resources(kernel)
        print(f"shared {kernel.metadata.shared} B, registers {regs}, stack {stack} B")


if __name__ == "__main__":
    main()
