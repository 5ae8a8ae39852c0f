"""Vision and video attention patterns (``tessera.bench.attention.vision_cases``) on the GPU:
tessera against FlexAttention on the same mask, SDPA on the windows where the pattern is one,
tessera's row-major tile map where the pattern routes through natten, and dense baselines; bf16,
forward and forward+backward, eager and replayed from CUDA graphs.

    python benchmarks/vision.py [--out benchmarks/results] [--only Swin MaxViT] [--suite vision] [--profile]

Results: ``<out>/<date>-<device>-<suite>.json``; its notes give, per case, the speedup over
tessera's own dense kernel at that shape (and its fraction of the ideal ``1 / density``) and the
ratios of the other rows' times to tessera's.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from tessera.bench.attention import GRAPH_SUFFIX, _Inputs, _step, _tessera_fn, run_case, vision_cases
from tessera.bench.report import print_table, results_path, write_results
from tessera.bench.timing import top_host_functions, warm_up_gpu


def _ms(records: list[dict], case: str, impl: str, direction: str):
    return next((r["ms"] for r in records if r["case"] == case and r["impl"] == impl
                 and r["direction"] == direction and r["ms"]), None)


def speedup_notes(cases, records: list[dict]) -> list[str]:
    """Per pattern case: tessera's speedup over its dense kernel at the case's shape and its
    fraction of the ideal, then ``other ms / tessera ms`` for Flex, SDPA on windows and the
    row-major tile map, eager and in CUDA graphs."""
    notes = []
    for case in cases:
        if case.pattern is None or case.windows is not None or case.unrouted:
            continue
        pattern = case.pattern(torch.device("cpu"))
        ideal = 1.0 / pattern.density(case.seq, case.seq, case.heads)
        parts = [f"{case.name}: ideal {ideal:.1f}x"]
        dense = f"dense baseline S={case.seq} B={case.batch} H={case.heads} D={case.head_dim}"
        for direction in ("fwd", "fwd+bwd"):
            for suffix in ("", GRAPH_SUFFIX):
                ours = _ms(records, case.name + suffix, "tessera", direction)
                if not ours:
                    continue
                where = " in CUDA graphs" if suffix else ""
                own_dense = _ms(records, dense, "tessera", direction)
                if own_dense and not suffix:
                    measured = own_dense / ours
                    parts.append(f"{direction} {measured:.1f}x own dense ({measured / ideal:.2f} of ideal)")
                others = [(case.name + suffix, "flex", "flex"),
                          (f"{case.name} sdpa on windows{suffix}", "sdpa-cudnn", "sdpa-cudnn on windows"),
                          (f"{case.name} sdpa on windows{suffix}", "sdpa-flash", "sdpa-flash on windows"),
                          (f"{case.name} row-major{suffix}", "tessera", "tessera row-major")]
                for other_case, impl, label in others:
                    theirs = _ms(records, other_case, impl, direction)
                    if theirs:
                        parts.append(f"{direction} {theirs / ours:.2f}x {label}{where}")
        notes.append(", ".join(parts))
    return notes


def host_profile(case, device) -> list[str]:
    """The top host functions of tessera's eager fwd+bwd step on ``case`` (after warm-up)."""
    pattern = case.pattern(device) if case.pattern is not None else None
    inp = _Inputs(case, device, torch.bfloat16)
    step = _step(_tessera_fn(case, pattern, inp, "triton"), inp, "fwd+bwd")
    for _ in range(5):
        step()
    return top_host_functions(step, top=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for the results JSON")
    parser.add_argument("--only", nargs="*", default=None, help="run only cases whose name contains one of these")
    parser.add_argument("--suite", default="vision", help="suite name in the results file name")
    parser.add_argument("--profile", action="store_true",
                        help="print the top host functions of tessera's eager fwd+bwd step per case instead")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/vision.py needs a CUDA GPU (tests/patterns/test_vision.py checks the "
                         "patterns on CPU)")
    device = torch.device("cuda")
    cases = vision_cases()
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    if args.profile:
        for case in cases:
            if "tessera" in case.impls:
                print(case.name)
                for line in host_profile(case, device):
                    print("   ", line)
        return
    path = results_path(Path(args.out), device, args.suite, datetime.date.today().isoformat())
    records, done = [], []
    warm_up_gpu(device)
    for case in cases:
        print(case.name)
        records += run_case(case, device, torch.bfloat16, graph=not case.name.startswith("dense baseline"))
        done.append(case)
        payload = write_results(path, device, records)
        payload["notes"] = speedup_notes(done, records)
        path.write_text(json.dumps(payload, indent=1) + "\n")
    print_table(payload)
    for note in payload["notes"]:
        print(note)
    print(f"results -> {path}")


if __name__ == "__main__":
    main()
