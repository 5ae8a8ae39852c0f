"""The shared-stream Gluon forward (``na_forward_shared``: three query tiles per program, one
producer warp copying the union of their key tiles once) against the routed Gluon forward
(``na_forward`` as ``tessera.natten`` calls it) on the suite's 2-D kernel-17 case. GPU only.

    python benchmarks/gpu_forward_shared.py [--dims 128 64] [--buffers 2 3 4] [--registers 152 160]
        [--membership-word 0 1] [--out DIR]

For each head dim: the call's plan and tensors are captured from one ``na2d`` forward (B = 1,
H = 16, bf16, 128 x 128, layout "auto"); both kernels' o and lse are checked against the float64
definition (``backend="reference"``) by ``tessera.bench.error_rule`` (the shared one against the
routed one's error), then each is timed (``triton.testing.do_bench`` median, warmup
50, rep 300, host included as a call makes it). Prints one ``RESULT`` line per variant; with
``--out``, ``forward-shared.json`` there.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from unittest import mock

import torch
import triton

from tessera.bench.error_rule import rel_err, within_rule
from tessera.bench.report import write_results
from tessera.kernels.gluon import na_forward as routed
from tessera.kernels.gluon.na_forward_shared import na_forward_shared
from tessera.natten import na2d


def captured_call(dim: int):
    """``(q, k, v, plan, kwargs)`` of the routed Gluon forward one ``na2d`` call makes."""
    q, k, v = (torch.randn(1, 128, 128, 16, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    seen = []
    forward = routed.na_forward

    def capture(*args, **kwargs):
        seen.append((*args, kwargs))
        return forward(*args, **kwargs)
    with torch.no_grad(), mock.patch.object(routed, "na_forward", capture):
        na2d(q, k, v, 17)
    assert len(seen) == 1, len(seen)
    return (q, k, v), seen[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", nargs="*", type=int, default=[128, 64])
    parser.add_argument("--buffers", nargs="*", type=int, default=[2, 3, 4])
    parser.add_argument("--registers", nargs="*", type=int, default=[152, 160])
    parser.add_argument("--membership-word", nargs="*", type=int, default=[0, 1],
                        help="1: each consumer gathers its bits once (na_forward_shared's membership_word)")
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
        for buffers, registers, word in itertools.product(args.buffers, args.registers,
                                                       args.membership_word):
            call = dict(scale=kwargs["scale"], num_buffers=buffers, consumer_registers=registers,
                        membership_word=bool(word))
            o, lse = na_forward_shared(q, k, v, plan, **call)
            torch.cuda.synchronize()
            errors = (rel_err(o, want), rel_err(lse, want_lse))
            passes = all(within_rule(e, r, q.dtype) for e, r in zip(errors, routed_errors))
            ms = triton.testing.do_bench(lambda: na_forward_shared(q, k, v, plan, **call),
                                         warmup=50, rep=300, return_mode="median")
            variant = f"shared buffers={buffers} registers={registers} word={word}"
            records.append(dict(dim=dim, variant=variant, ms=ms, o_error=errors[0],
                                lse_error=errors[1], passes=passes))
            print(f"RESULT D={dim} {variant}: {ms:.4f} ms ({routed_ms / ms:.3f}x routed), "
                  f"o err {errors[0]:.2e}, lse err {errors[1]:.2e}, "
                  f"{'passes' if passes else 'FAILS'} the error rule", flush=True)
    if args.out:
        write_results(Path(args.out) / "forward-shared.json", torch.device("cuda"), records)


if __name__ == "__main__":
    main()
