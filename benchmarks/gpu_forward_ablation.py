"""What the parts of the Gluon neighborhood forward cost: the kernel a suite call launches, timed
alone as launched and with one part switched off (outputs then wrong; timing only). GPU only.

    python benchmarks/gpu_forward_ablation.py [--dims 128 64] [--cases 2-d 3-d] [--variants NAME ...] [--out DIR]

Each case (the N-D suite's 2-D kernel 17 over 128 x 128 and 3-D 5 x 13 x 13 over 16 x 48 x 48;
B = 1, H = 16, bf16, layout "auto") runs once through ``tessera.natten`` with its Gluon launch
recorded (``Launcher._launch``); that launch is then timed by itself (``triton.testing.do_bench``
median, warmup 50, rep 300) as routed and under each variant whose switches it takes:
``MASKED=False`` (the neighborhood penalty left out: the same tiles and loop without the mask's
arithmetic), ``LAZY_RESCALE=0`` (every tile rescales the running output), and in the deferred
loop ``PARTS_OFF`` (``na_forward.NO_SOFTMAX``: the logits taken as weights; ``NO_COPIES``: the
first K/V tile reused for every step; both: the products and the loop alone). The ratio of a
variant to the routed time bounds what removing that part could gain. ``maxnreg=96`` (five
programs per SM at D = 64, with spills) and ``LAZY_RESCALE=0`` compute the routed results
another way: their records hold the largest relative difference of o and lse from the routed
launch's (``vs_routed``, ``error_rule.rel_err``). ``--variants`` names variants with ``-``
for spaces (``rescale-every-tile``). Prints one ``RESULT`` line per (case, head dim, variant);
with ``--out``, ``forward-ablation.json`` there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import triton

from tessera.bench.error_rule import rel_err
from tessera.bench.report import write_results
from tessera.kernels.gluon.na_forward import NO_COPIES, NO_SOFTMAX
from tessera.kernels.triton import launcher
from tessera.natten import na2d, na3d

CASES = {"2-d": (na2d, (128, 128), 17), "3-d": (na3d, (16, 48, 48), (5, 13, 13))}
VARIANTS = {"routed": {}, "no mask": {"MASKED": False}, "rescale every tile": {"LAZY_RESCALE": 0.0},
            "no mask, rescale every tile": {"MASKED": False, "LAZY_RESCALE": 0.0},
            "no softmax": {"PARTS_OFF": NO_SOFTMAX.value}, "no copies": {"PARTS_OFF": NO_COPIES.value},
            "products only": {"PARTS_OFF": NO_SOFTMAX.value | NO_COPIES.value},
            "96 registers": {"maxnreg": 96}}
# Variants that compute the routed results (up to rounding): their o and lse are compared with the
# routed launch's.
EXACT = ("rescale every tile", "96 registers")
# Launch options a variant may add that the routed launch need not have.
ADDED_OPTIONS = ("maxnreg",)


def recorded_gluon_launch(op, grid, kernel, dim):
    """``(jit function, launch grid, args, kwargs)`` of the Gluon forward one no-grad call launches."""
    q, k, v = (torch.randn(1, *grid, 16, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    launches = []
    launch = launcher.Launcher._launch

    def record(self, launch_grid, stream, args, kwargs):
        launches.append((self.kernel, launch_grid, args, kwargs))
        return launch(self, launch_grid, stream, args, kwargs)
    launcher.Launcher._launch = record
    try:
        with torch.no_grad():
            op(q, k, v, kernel)
    finally:
        launcher.Launcher._launch = launch
    gluon = [entry for entry in launches if entry[0].__name__.startswith("_na_fwd")]
    assert len(gluon) == 1, [entry[0].__name__ for entry in launches]
    return gluon[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", nargs="*", type=int, default=[128, 64])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS)[1:], choices=list(VARIANTS)[1:],
                        type=lambda name: name.replace("-", " "), help="besides the routed launch")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    records = []
    for name in args.cases:
        op, grid, kernel = CASES[name]
        for dim in args.dims:
            fn, launch_grid, launch_args, kwargs = recorded_gluon_launch(op, grid, kernel, dim)
            routed_ms = None
            o, lse = launch_args[3].base, launch_args[4]
            routed = None
            for variant, switches in VARIANTS.items():
                if variant not in ("routed", *args.variants):
                    continue
                if any((key not in kwargs and key not in ADDED_OPTIONS) or kwargs.get(key) == value
                       for key, value in switches.items()):
                    continue
                options = {**kwargs, **switches}
                o.fill_(float("nan"))
                lse.fill_(float("nan"))
                fn[launch_grid](*launch_args, **options)
                torch.cuda.synchronize()
                if routed is None:
                    routed = (o.clone(), lse.clone())
                vs_routed = max(rel_err(o, routed[0]), rel_err(lse, routed[1])) \
                    if variant in EXACT else None
                ms = triton.testing.do_bench(lambda: fn[launch_grid](*launch_args, **options),
                                             warmup=50, rep=300, return_mode="median")
                routed_ms = routed_ms or ms
                records.append(dict(case=name, dim=dim, kernel=fn.__name__, variant=variant, ms=ms,
                                    of_routed=ms / routed_ms, vs_routed=vs_routed))
                print(f"RESULT {name} D={dim} {fn.__name__} {variant}: {ms:.4f} ms "
                      f"({ms / routed_ms:.3f} of routed)"
                      + ("" if vs_routed is None else f", differs from routed by {vs_routed:.2e}"), flush=True)
    if args.out:
        write_results(Path(args.out) / "forward-ablation.json", torch.device("cuda"), records)


if __name__ == "__main__":
    main()
