"""The Gluon tiled-neighborhood forward (``tessera.kernels.gluon.na_forward``) against the Triton
forward kernel on the same plan and tensors, one process, kernel time (``median_ms``: do_bench
median, L2 flushed between calls). GPU (Hopper) only.

    python benchmarks/gpu_gluon_forward.py --out DIR [--dims 128 64] [--cases blocked ...]
        [--variants K2V1 K1V2-defer ...] [--variants-128 K2V2-r128 ...] [--variants-32 K2V2-lazy8 ...]
        [--boxes 8 0] [--boxes-registers 168 128 0] [--query-tiles 2x4x8 2x8x4]

Cases: the N-D suite's 2-D 128 x 128 kernel 17, 3-D 16 x 48 x 48 kernel 5 x 13 x 13, 3-D
blocked 4 x 8 x 8, 1-D 32768 window 2048 and 2-D kernel 17 at dilation 2 (one group's plan,
every group through a dilation fold), and 3-D 16 x 48 x 48 kernel 3 x 7 x 7, bf16, B = 1,
H = 16, in the tiled order natten picks, at 64 x 64 tiles (the Triton kernel at the config
tessera takes there). Rows: case, dim, impl (``triton KernelConfig(...)`` or ``gluon`` and the
``na_forward`` arguments; ``gluon 128-row`` on the plan at 128 x 64 tiles where its 128-row
tiles are grid boxes), ms, and the largest difference of o from the Triton kernel's (a smoke
check; the float64 checks are ``tests/kernels/test_gluon_gpu.py``). Writes
``gluon_forward.json``.

``--variants`` replaces the 64-row variants by sequential-loop ones named ``K<k slots>V<v
slots>``, optionally followed by ``-defer`` (``defer_pv``), ``-lazy<threshold>``
(``lazy_rescale``) and ``-r<registers>`` (``max_registers``); ``--variants-128`` does the same
for the 128-row variants, and ``--variants-32`` adds variants on 64 x 32 tiles (rows ``gluon
32-key``). ``--boxes`` adds ``na_forward_boxes`` (key boxes) at each ``lazy_rescale`` threshold
given and each register cap of ``--boxes-registers`` (0: none), where the plan has key boxes
(rows ``gluon boxes``, with the boxes' cost against the plan's listed tiles in ``impl``);
``--query-tiles`` adds those rows on the plans of other tiled orders (query tiles of that
shape; the tensors stay in grid order, so every row computes the same o).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time

import torch

from tessera.bench.timing import median_ms, warm_up_gpu
from tessera.kernels.gluon import key_boxes, na_forward_boxes
from tessera.kernels.gluon import na_forward as gluon_forward
from tessera.kernels.triton import flash_fwd, masks
from tessera.kernels.triton.masks import DilationFold
from tessera.kernels.triton.tuning import KernelConfig
from tessera.natten import _auto_layout, _group_plan
from tessera.patterns import Neighborhood, Permuted
from tessera.patterns.layout import GridLayout

CASES = {"2-D 128x128 k17": ((128, 128), (17, 17), 1),
         "3-D 16x48x48 k5x13x13": ((16, 48, 48), (5, 13, 13), 1),
         "3-D 16x48x48 blocked 4x8x8": ((16, 48, 48), (4, 8, 8), (4, 8, 8)),
         "1-D 32768 window 2048": ((32768,), (2048,), 1),
         # Dilation 2: one group's plan, every group through a dilation fold (both kernels).
         "2-D 128x128 k17 dil2": ((128, 128), (17, 17), 1, 2),
         # Not in the suite: natten orders it in (1, 4, 16) tiles (19.8 key tiles per query
         # tile); key boxes on (1, 8, 8) query tiles cost 10.3 (``key_boxes.box_plan``).
         "3-D 16x48x48 k3x7x7": ((16, 48, 48), (3, 7, 7), 1)}
# Variants on 128-row query tiles (two warpgroups; plans whose 128-row tiles are grid boxes).
GLUON_128 = [dict(overlap=False, num_buffers=1, v_buffers=1),
             dict(overlap=False, num_buffers=2, v_buffers=1, max_registers=128),
             dict(overlap=False, num_buffers=2, v_buffers=1),
             dict(overlap=False, num_buffers=1, v_buffers=1, max_registers=128),
             dict(overlap=False, num_buffers=2, v_buffers=2, max_registers=128),
             dict(overlap=False, num_buffers=3, v_buffers=2, max_registers=128)]
GLUON = [dict(overlap=False, num_buffers=3), dict(overlap=False, num_buffers=2, v_buffers=1),
         dict(overlap=False, num_buffers=1, v_buffers=1), dict(overlap=False, num_buffers=3, v_buffers=1),
         dict(overlap=False, num_buffers=4, v_buffers=2), dict(overlap=True, num_buffers=3, specialized=True)]


def parse_variant(name: str) -> dict:
    """``na_forward`` arguments of a sequential-loop variant named ``K2V1``, ``K1V1-lazy8-r128``, ..."""
    match = re.fullmatch(r"K(\d+)V(\d+)(-defer)?(?:-lazy([\d.]+))?(?:-r(\d+))?", name)
    if match is None:
        raise SystemExit(f"--variants: {name!r} is not K<n>V<m>[-defer][-lazy<t>][-r<registers>]")
    variant = dict(overlap=False, num_buffers=int(match[1]), v_buffers=int(match[2]))
    if match[3]:
        variant["defer_pv"] = True
    if match[4]:
        variant["lazy_rescale"] = float(match[4])
    if match[5]:
        variant["max_registers"] = int(match[5])
    return variant


def case_plan(grid, kernel, stride, heads: int, device: torch.device, block_m: int = 64,
              block_n: int = 64, tile_shape=None):
    """``(plan, seq)``: the plan of ``Neighborhood(grid, kernel, stride)`` in the tiled order
    ``tessera.natten`` picks (or tiles of ``tile_shape``), at ``block_m`` x ``block_n`` tiles, and
    the number of tokens."""
    rule = Neighborhood(grid, kernel, stride=stride)
    layout = (_auto_layout(rule.grid, rule.kernel, rule.dilation, rule.stride, rule.causal)
              if tile_shape is None else GridLayout(rule.grid, tile_shape))
    seq = 1
    for g in grid:
        seq *= g
    return masks.get_plan(Permuted(rule, layout), seq, seq, block_m, block_n, heads, device), seq


def fold_plan(grid, kernel, dilation: int, heads: int, device: torch.device):
    """``(plan, seq, fold)``: one dilation group's plan (64 x 64 tiles, the sub-grid's tiled
    order), the whole grid's number of tokens and the ``DilationFold`` that runs every group."""
    dilations = (dilation,) * len(grid)
    pattern, _order, _key = _group_plan(grid, kernel, dilations, (1,) * len(grid),
                                        (False,) * len(grid), device.type)
    fold = DilationFold(grid, dilations)
    seq = 1
    for g in grid:
        seq *= g
    sub = seq // fold.groups
    return masks.get_plan(pattern, sub, sub, 64, 64, heads, device), seq, fold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--dims", nargs="*", type=int, default=[128, 64])
    parser.add_argument("--cases", nargs="*", default=None,
                        help="case names containing any of these (default: all)")
    parser.add_argument("--variants", nargs="*", default=None,
                        help="sequential-loop variants K<n>V<m>[-defer][-lazy<t>][-r<registers>] in place of "
                             "the default 64-row list")
    parser.add_argument("--variants-32", nargs="*", default=[],
                        help="sequential-loop variants also run on 64 x 32 tiles (32-key tiles: "
                             "half the K/V shared memory, more programs per SM)")
    parser.add_argument("--boxes", nargs="*", type=float, default=[],
                        help="lazy_rescale thresholds of na_forward_boxes rows (key boxes)")
    parser.add_argument("--boxes-registers", nargs="*", type=int, default=[-1],
                        help="register caps of the na_forward_boxes rows (0: none; -1: its default)")
    parser.add_argument("--query-tiles", nargs="*", default=[],
                        help="query tile shapes such as 2x4x8: the --boxes rows also on the plan of "
                             "that tiled order, where its tiles are grid boxes of the case's grid")
    parser.add_argument("--variants-128", nargs="*", default=None,
                        help="the same for 128-row query tiles (in place of the default list)")
    args = parser.parse_args()
    gluon_variants = [parse_variant(name) for name in args.variants] if args.variants else GLUON
    variants_128 = [parse_variant(name) for name in args.variants_128] if args.variants_128 else GLUON_128
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_gluon_forward.py needs a CUDA GPU")
    device = torch.device("cuda")
    warm_up_gpu(device)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    path = os.path.join(args.out, "gluon_forward.json")
    heads = 16
    for name, (grid, kernel, stride, *dilation) in CASES.items():
        if args.cases and not any(part in name for part in args.cases):
            continue
        fold = None
        if dilation:
            plan, seq, fold = fold_plan(grid, kernel, dilation[0], heads, device)
            plan_128 = plan_32 = None
        else:
            plan, seq = case_plan(grid, kernel, stride, heads, device)
            plan_128, _ = case_plan(grid, kernel, stride, heads, device, block_m=128)
            plan_32, _ = case_plan(grid, kernel, stride, heads, device, block_n=32)
        for dim in args.dims:
            q, k, v = (torch.randn(1, seq, heads, dim, device=device, dtype=torch.bfloat16) for _ in range(3))
            scale = dim ** -0.5
            stages = 1 if dim > 64 or plan.mask_mode == masks.MASK_NONE else 3
            config = KernelConfig(64, 64, 4, stages,
                                  max_registers=128 if plan.mask_mode == masks.MASK_NONE and dim > 64 else None)
            ref, _ = flash_fwd.forward(q, k, v, plan, scale=scale, config=config, grid_order=True,
                                       fold=fold)
            runs = [(f"triton {config}",
                     lambda: flash_fwd.forward(q, k, v, plan, scale=scale, config=config, grid_order=True,
                                               fold=fold))]
            variants = [("gluon", plan, variant) for variant in gluon_variants]
            if plan_128 is not None and gluon_forward.supports(q, k, v, plan_128):
                variants += [("gluon 128-row", plan_128, variant) for variant in variants_128]
            if plan_32 is not None and args.variants_32 and gluon_forward.supports(q, k, v, plan_32):
                variants += [("gluon 32-key", plan_32, parse_variant(variant))
                             for variant in args.variants_32]
            box_plans = [("", plan)] if fold is None else []
            for text in args.query_tiles if fold is None else []:
                shape = tuple(int(part) for part in text.split("x"))
                if len(shape) == len(grid) and all(g % t == 0 for g, t in zip(grid, shape)):
                    box_plans.append((f" query_tile={text}",
                                      case_plan(grid, kernel, stride, heads, device, tile_shape=shape)[0]))
            for suffix, box_plan in box_plans:
                boxes = key_boxes.key_boxes(box_plan)
                if boxes is None or not na_forward_boxes.boxes_supported(q, k, v, box_plan):
                    continue
                listed = box_plan.listed_pairs() / box_plan.n_q_tiles
                for threshold in args.boxes:
                    for cap in args.boxes_registers:
                        cap = None if cap < 0 else cap
                        runs.append((f"gluon boxes{suffix} lazy_rescale={threshold} max_registers={cap} "
                                     f"cost={boxes.cost():.2f} of {listed:.2f} tiles",
                                     lambda t=threshold, r=cap, p=box_plan: na_forward_boxes.na_forward_boxes(
                                         q, k, v, p, scale=scale, lazy_rescale=t, max_registers=r)))
            for label, tiles, variant in variants:
                runs.append((label + " " + " ".join(f"{key}={value}" for key, value in variant.items()),
                             lambda p=tiles, kw=variant: gluon_forward.na_forward(q, k, v, p, scale=scale,
                                                                                 fold=fold, **kw)))
            for impl, fn in runs:
                row = {"case": name, "dim": dim, "impl": impl, "ms": None, "max_diff": None, "error": None}
                try:
                    o, _ = fn()
                    row["max_diff"] = (o.float() - ref.float()).abs().max().item()
                    row["ms"] = median_ms(fn, device)
                except Exception as error:  # noqa: BLE001 - recorded; the other rows stand
                    row["error"] = repr(error)[:300]
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
                with open(path, "w") as f:
                    json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
