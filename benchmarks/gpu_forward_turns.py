"""The turn-taking Gluon forward (``na_forward_turns``: three query tiles per program whose
warpgroups issue their QK^T products in rotation) against the routed Gluon forward on the suite's
2-D kernel-17 case. GPU only.

    python benchmarks/gpu_forward_turns.py [--dims 128 64] [--programs 3x168 2x240] [--take-turns 1 0] [--one-shot 0 1] [--out DIR]

For each head dim: the routed call's plan and tensors are captured from one ``na2d`` forward
(B = 1, H = 16, bf16, 128 x 128, layout "auto", ``gpu_forward_shared.captured_call``); both
kernels' o and lse are checked against the float64 definition by ``tessera.bench.error_rule``
(the turn-taking one against the routed one's error), then each is timed
(``triton.testing.do_bench`` median, warmup 50, rep 300, host included as a call makes it).
Prints one ``RESULT`` line per variant; with ``--out``, ``forward-turns.json`` there.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
import triton

from gpu_forward_shared import captured_call
from tessera.bench.error_rule import rel_err, within_rule
from tessera.bench.report import write_results
from tessera.kernels.gluon import na_forward as routed
from tessera.kernels.gluon.na_forward_turns import na_forward_turns
from tessera.natten import na2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", nargs="*", type=int, default=[128, 64])
    parser.add_argument("--programs", nargs="*", default=["3x168"],
                        help="query tiles per program x registers per thread, e.g. 3x168 2x240")
    parser.add_argument("--take-turns", nargs="*", type=int, default=[1, 0],
                        help="0: the same program without turns (na_forward_turns' take_turns)")
    parser.add_argument("--one-shot", nargs="*", type=int, default=[0, 1],
                        help="1: workers that leave after their partition (na_forward_turns' one_shot)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    records = []
    for dim in args.dims:
        grid_tensors, (q, k, v, plan, kwargs) = captured_call(dim)
        exact = [t.double() for t in grid_tensors]
        want, want_lse = na2d(*exact, 17, backend="reference", return_lse=True)
        want = want.reshape(q.shape)
        want_lse = want_lse.reshape(want_lse.shape[0], want_lse.shape[1], -1)
        o, lse = routed.na_forward(q, k, v, plan, **kwargs)
        routed_errors = (rel_err(o, want), rel_err(lse, want_lse))
        routed_ms = triton.testing.do_bench(lambda: routed.na_forward(q, k, v, plan, **kwargs),
                                            warmup=50, rep=300, return_mode="median")
        records.append(dict(dim=dim, variant="routed", ms=routed_ms, o_error=routed_errors[0],
                            lse_error=routed_errors[1], passes=True))
        print(f"RESULT D={dim} routed: {routed_ms:.4f} ms, o err {routed_errors[0]:.2e}, "
              f"lse err {routed_errors[1]:.2e}", flush=True)
        for program, turns, one_shot in itertools.product(args.programs, args.take_turns,
                                                          args.one_shot):
            tiles, registers = (int(n) for n in program.split("x"))
            call = dict(scale=kwargs["scale"], registers=registers, take_turns=bool(turns),
                        one_shot=bool(one_shot), tiles_per_program=tiles)
            o, lse = na_forward_turns(q, k, v, plan, **call)
            torch.cuda.synchronize()
            errors = (rel_err(o, want), rel_err(lse, want_lse))
            passes = all(within_rule(e, r, q.dtype) for e, r in zip(errors, routed_errors))
            ms = triton.testing.do_bench(lambda: na_forward_turns(q, k, v, plan, **call),
                                         warmup=50, rep=300, return_mode="median")
            variant = (f"{'turns' if turns else 'no turns'} {tiles} tiles, registers={registers}"
                       f"{' one-shot workers' if one_shot else ''}")
            records.append(dict(dim=dim, variant=variant, ms=ms, o_error=errors[0],
                                lse_error=errors[1], passes=passes))
            print(f"RESULT D={dim} {variant}: {ms:.4f} ms ({routed_ms / ms:.3f}x routed), "
                  f"o err {errors[0]:.2e}, lse err {errors[1]:.2e}, "
                  f"{'passes' if passes else 'FAILS'} the error rule", flush=True)
    if args.out:
        write_results(Path(args.out) / "forward-turns.json", torch.device("cuda"), records)


if __name__ == "__main__":
    main()
