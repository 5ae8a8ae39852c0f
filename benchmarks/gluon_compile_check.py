"""Compile the Gluon tiled-neighborhood kernels (``tessera.kernels.gluon.na_forward``, ``na_dq``, ``na_dkdv``)
for Hopper (sm_90) without a GPU, on the N-D suite's shapes, and print shared memory, registers and spills.

    python benchmarks/gluon_compile_check.py [--kernel fwd|boxes|dq|dq-boxes|dkdv|dkdv-boxes] [--num-buffers 3] [--dim 128] [--heads 16] [--no-overlap]
        [--specialized] [--v-buffers N]
        [--max-registers N] [--pipeline 0|1|2] [--block-m 64|128] [--lazy-rescale 8] [--defer-pv] [--cases NAME ...] [--loops] [--dump FILE] [--ptx FILE]

The call runs on CPU stand-ins of the suite's tensors (B = 1, ``--heads``) up to the launch, which
is captured instead of executed and compiled as the GPU would compile it
(``hopper_compile.as_launched``: Triton's own binder, every argument specialization included).
"""

from __future__ import annotations

import argparse

import torch

from tessera.bench.hopper_compile import as_launched, resources, sass, sass_loops
from tessera.kernels.gluon import na_dkdv, na_dkdv_boxes, na_dq
from tessera.kernels.gluon import na_forward as gluon_forward
from tessera.kernels.gluon import na_dq_boxes, na_forward_boxes
from tessera.kernels.triton import masks
from tessera.kernels.triton.masks import DilationFold
from tessera.natten import _auto_layout, _group_plan
from tessera.patterns import Neighborhood, Permuted
from tessera.patterns.layout import GridLayout

CASES = {
    "na2d 128x128 k17": ((128, 128), (17, 17), 1),
    "na3d 16x48x48 k5x13x13": ((16, 48, 48), (5, 13, 13), 1),
    "na3d blocked 16x48x48 k4x8x8": ((16, 48, 48), (4, 8, 8), (4, 8, 8)),
    # Dilation 2: one group's plan, every group run through a dilation fold (forward, dq, dk/dv).
    "na2d 128x128 k17 dil2": ((128, 128), (17, 17), 1, 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=("fwd", "boxes", "dq", "dq-boxes", "dkdv", "dkdv-boxes"), default="fwd",
                        help="na_forward, na_forward_boxes (--lazy-rescale), na_dq_boxes, na_dq (--num-buffers, --v-buffers: its K and V slots) or "
                             "na_dkdv (--num-buffers: its q/dO slots) or na_dkdv_boxes")
    parser.add_argument("--num-buffers", type=int, default=3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--heads", type=int, default=16, help="query heads (the suite's 16)")
    parser.add_argument("--no-overlap", action="store_true")
    parser.add_argument("--specialized", action="store_true", help="a producer warp fills the ring")
    parser.add_argument("--v-buffers", type=int, default=None, help="V ring slots (--no-overlap)")
    parser.add_argument("--max-registers", type=int, default=None)
    parser.add_argument("--block-m", type=int, default=64, help="query tile rows (64 or 128)")
    parser.add_argument("--block-n", type=int, default=64, help="key tile columns")
    parser.add_argument("--lazy-rescale", type=float, default=0.0,
                        help="the forward's lazy_rescale threshold (with --no-overlap)")
    parser.add_argument("--defer-pv", action="store_true",
                        help="the forward's defer_pv loop (--no-overlap --num-buffers 1 --v-buffers 2)")
    parser.add_argument("--parts-off", type=int, default=0,
                        help="the forward's PARTS_OFF bits (timing only: 1 no softmax, 2 no copies)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help=f"of {list(CASES)}")
    parser.add_argument("--loops", action="store_true",
                        help="print each innermost loop's instruction count and commonest opcodes "
                             "(not the two-instruction mbarrier waits)")
    parser.add_argument("--pipeline", type=int, default=0,
                        help="na_dkdv's loop: 0 sequential, 1 dK deferred, 2 dP^T early as well")
    parser.add_argument("--dump", default=None, help="write the SASS of the last case here")
    parser.add_argument("--ptx", default=None, help="write the PTX of the last case here (for ptxas -v)")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    for name in args.cases:
        grid, kernel, stride, *dilation = CASES[name]
        seq = 1
        for g in grid:
            seq *= g
        fold = None
        if dilation:
            dilations = (dilation[0],) * len(grid)
            pattern, _order, _key = _group_plan(grid, kernel, dilations, (stride,) * len(grid),
                                                (False,) * len(grid), "cuda")
            fold = DilationFold(grid, dilations)
            plan = masks.get_plan(pattern, seq // fold.groups, seq // fold.groups, args.block_m, args.block_n, 2, cpu)
        else:
            rule = Neighborhood(grid, kernel, stride=stride)
            layout = _auto_layout(rule.grid, rule.kernel, rule.dilation, rule.stride, rule.causal)
            pattern = Permuted(rule, layout if isinstance(layout, GridLayout) else GridLayout(rule.grid, layout))
            plan = masks.get_plan(pattern, seq, seq, args.block_m, args.block_n, 2, cpu)
        q, k, v = (torch.empty(1, seq, args.heads, args.dim, dtype=torch.bfloat16) for _ in range(3))
        captured = []
        jit_fn = {"dkdv": na_dkdv._na_dkdv, "dq": na_dq._na_dq,
                  "boxes": na_forward_boxes._na_fwd_boxes,
                  "dq-boxes": na_dq_boxes._na_dq_boxes,
                  "dkdv-boxes": na_dkdv_boxes._na_dkdv_boxes}.get(args.kernel, gluon_forward._na_fwd)
        original = type(jit_fn).__getitem__
        type(jit_fn).__getitem__ = lambda fn, launch_grid: (lambda *a, **kw: captured.append((a, kw)))
        try:
            if args.kernel == "dkdv":
                stats = torch.empty(1, args.heads, seq, dtype=torch.float32)
                na_dkdv.na_dkdv(q, k, v, torch.empty_like(q), stats, stats, plan,
                                scale=args.dim ** -0.5, num_buffers=args.num_buffers,
                                max_registers=args.max_registers, pipeline=args.pipeline, fold=fold)
            elif args.kernel == "dkdv-boxes":
                stats = torch.empty(1, args.heads, seq, dtype=torch.float32)
                na_dkdv_boxes.na_dkdv_boxes(q, k, v, torch.empty_like(q), stats, stats, plan,
                                            scale=args.dim ** -0.5, max_registers=args.max_registers)
            elif args.kernel == "dq-boxes":
                stats = torch.empty(1, args.heads, seq, dtype=torch.float32)
                na_dq_boxes.na_dq_boxes(q, k, v, torch.empty_like(q), stats, stats, plan,
                                        scale=args.dim ** -0.5, max_registers=args.max_registers)
            elif args.kernel == "dq":
                stats = torch.empty(1, args.heads, seq, dtype=torch.float32)
                na_dq.na_dq(q, k, v, torch.empty_like(q), stats, stats, plan, scale=args.dim ** -0.5,
                            num_buffers=args.num_buffers, v_buffers=args.v_buffers or 1,
                            max_registers=args.max_registers, fold=fold)
            elif args.kernel == "boxes":
                na_forward_boxes.na_forward_boxes(q, k, v, plan, scale=args.dim ** -0.5,
                                                  lazy_rescale=args.lazy_rescale,
                                                  max_registers=args.max_registers)   # None: per-dim default
            else:
                gluon_forward.na_forward(q, k, v, plan, scale=args.dim ** -0.5,
                                         num_buffers=args.num_buffers, overlap=not args.no_overlap,
                                         specialized=args.specialized, v_buffers=args.v_buffers,
                                         max_registers=args.max_registers,
                                         lazy_rescale=args.lazy_rescale, defer_pv=args.defer_pv,
                                         fold=fold)
        finally:
            type(jit_fn).__getitem__ = original
        (launch_args, launch_kwargs), = captured
        if args.parts_off:
            launch_kwargs = {**launch_kwargs, "PARTS_OFF": args.parts_off}
        compiled = as_launched(jit_fn, launch_args, launch_kwargs)
        regs, stack = resources(compiled)
        variant = (f"overlap={not args.no_overlap} specialized={args.specialized} "
                   f"v_buffers={args.v_buffers} max_registers={args.max_registers} "
                   f"lazy_rescale={args.lazy_rescale} defer_pv={args.defer_pv} "
                   f"parts_off={args.parts_off} "
                   if args.kernel == "fwd" else
                   f"lazy_rescale={args.lazy_rescale} max_registers={args.max_registers} "
                   if args.kernel == "boxes" else
                   f"v_buffers={args.v_buffers or 1} max_registers={args.max_registers} "
                   if args.kernel == "dq" else "")
        print(f"{args.kernel} {name} D={args.dim} buffers={args.num_buffers} {variant}: shared "
              f"{compiled.metadata.shared} B, registers {regs}, stack {stack} B")
        if args.loops:
            for label, start, end, ops in sass_loops(sass(compiled)):
                if end - start < 8:
                    continue
                top = ", ".join(f"{op} {n}" for op, n in ops.most_common(10))
                print(f"    loop {label}: {end - start + 1} instructions ({top})")
        if args.ptx:
            with open(args.ptx, "w") as f:
                f.write(compiled.asm["ptx"])
        if args.dump:
            with open(args.dump, "w") as f:
                f.write(sass(compiled))


if __name__ == "__main__":
    main()
