"""Digest of every flash kernel's sm_90 SASS, to show that a source change compiles to the same code.

    python benchmarks/sass_digest.py [--only NAME ...] --out before.json
    ... change the kernels ...
    python benchmarks/sass_digest.py [--only NAME ...] --out after.json --against before.json

Compiles each ``compile_check.py`` variant's launches for Hopper without a GPU (as
``compile_check.py`` does) and records, per distinct kernel, a SHA-256 of its instructions
(nvdisasm without line information, so moved source lines do not count), its opcode counts, shared
memory, registers and spills. With ``--against``, lists the kernels that differ: "same opcodes"
where only the order of instructions or the registers they name changed, else the opcode counts
that changed. Exits 1 if any kernel differs (one present on one side only counts as different;
with ``--only``, among the variants it names).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(__file__))

from compile_check import Capture, variants  # noqa: E402

from tessera.bench.hopper_compile import compile_distinct, resources, sass  # noqa: E402

_ADDRESS = re.compile(r"/\*[0-9a-f]{4,}\*/")
_OPCODE = re.compile(r"^(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9.]*)")


def instructions(kernel) -> list[str]:
    """The kernel's SASS instructions, without addresses, labels and comment lines."""
    text = sass(kernel, line_info=False)
    lines = [_ADDRESS.sub("", line).strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith(("//", ".")) and not line.endswith(":")]


def opcode_counts(lines: list[str]) -> dict:
    """How often each opcode (with its modifiers) occurs."""
    return dict(Counter(m.group(1) for m in map(_OPCODE.match, lines) if m))


def digests(only) -> dict:
    """``{"<variant> | <kernel> | <launch options>": {"sass", "opcodes", "shared", "regs", "stack"}}``
    (or ``{"error"}`` for a kernel that does not compile)."""
    out, seen = {}, set()
    for name, thunk in variants():
        if only and not any(s in name for s in only):
            continue
        with Capture() as capture:
            thunk()
        for fn, options, kernel, error in compile_distinct(capture.launches, seen):
            key = f"{name} | {fn.__name__} | {sorted(options.items())}"
            if error is not None:
                out[key] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
                continue
            regs, stack = resources(kernel)
            lines = instructions(kernel)
            out[key] = {"sass": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
                        "opcodes": opcode_counts(lines), "shared": kernel.metadata.shared,
                        "regs": regs, "stack": stack}
            print(f"{key}: {len(lines)} instructions, {regs} registers, {stack} B stack", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="variants whose name contains one of these")
    parser.add_argument("--out", required=True, help="JSON file for the digests")
    parser.add_argument("--against", help="an earlier --out file to compare with")
    args = parser.parse_args()
    now = digests(args.only)
    with open(args.out, "w") as f:
        json.dump(now, f, indent=1)
    if not args.against:
        return 0
    with open(args.against) as f:
        before = json.load(f)
    # With --only, kernels of the variants left out are not compared.
    kept = {k for k in before if not args.only or any(s in k.split(" | ")[0] for s in args.only)}
    differ = sorted(k for k in set(now) | kept if now.get(k) != before.get(k))
    for key in differ:
        old, new = before.get(key, {}), now.get(key, {})
        ops_old, ops_new = Counter(old.get("opcodes", {})), Counter(new.get("opcodes", {}))
        changed = {op: ops_new[op] - ops_old[op] for op in ops_old | ops_new if ops_new[op] != ops_old[op]}
        sizes = {f: (old.get(f), new.get(f)) for f in ("shared", "regs", "stack", "error")
                 if old.get(f) != new.get(f)}
        print(f"DIFFERS {key}: {'same opcodes' if not changed else changed} {sizes or ''}")
    print(f"{len(now)} kernels, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
