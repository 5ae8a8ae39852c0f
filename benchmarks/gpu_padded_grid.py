"""Where the time of a padded-grid neighborhood call goes (grids no tile shape divides: natten pads
them up to whole tiles). GPU ms per forward, replayed from CUDA graphs (no host time), bf16,
H = 16, D = 128, B = 1 (B = 2 in the case that says so: batch its own axis in the Gluon kernels'
views, ``na_forward.batch_axis``), per case:

- ``pad_qkv``: ``grid_padding.pad_grids`` of q, k and v (and ``functional_pad_qkv``:
  ``torch.nn.functional.pad`` of the three, for comparison);
- ``kernels``: the grid-order kernels on already padded tensors;
- ``unpad_o``: ``grid_padding.unpad_grid`` of o;
- ``call``: the whole ``na2d`` / ``na3d`` forward, and ``call_fwd_bwd`` its forward+backward
  (the Gluon kernels reading q, k, v unpadded, ``natten.PAD_IN_KERNEL``); ``call_copies`` and
  ``call_fwd_bwd_copies`` the same with it off (q, k, v padded, o cut: the parts above);
- ``row_major``: the same call in row-major order (no tiles, no padding);
- ``divisible``: the kernels on a grid of about the same size that tiles divide, for the
  kernels' per-token cost.

    python benchmarks/gpu_padded_grid.py --out DIR   -> DIR/padded_grid.json

``--sweep``: for grids of several sizes that no tile shape divides, the padded plan's cost
against the row-major plan's (the ratio ``natten.PAD_MAX_COST`` bounds under "auto") next to
forward and forward+backward GPU ms of the call padded (its layout given) and row-major
(``SWEEP``) -> DIR/padded_grid_sweep.json.

``--dilated``: dilated neighborhoods whose dilation groups' sub-grid no tile shape divides
(``DILATED``), forward and forward+backward GPU ms with the groups padded
(``natten.PAD_DILATION_GROUPS``, their tiles ``natten._padded_group_tiles``) and in the
sub-grid's row-major order -> DIR/padded_grid_dilated.json.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from tessera.bench.timing import graph_replay_ms, warm_up_gpu
from tessera.grid_padding import pad_grids, unpad_grid
import tessera.natten as natten
from tessera.natten import _call_plan, _grid_order_run, neighborhood_attention
from tessera.patterns.layout import box_tile_counts, choose_padded_tile_shape, padded_grid
from tessera.patterns.neighborhood import PARTIAL_COST, Neighborhood, PaddedNeighborhood

# name: (grid, kernel, a grid of about the same size that 64-token tiles divide, batch)
CASES = {"2-D 100x100 k17": ((100, 100), (17, 17), (104, 104), 1),
         "3-D 21x30x52 k5x13x13": ((21, 30, 52), (5, 13, 13), (22, 32, 52), 1),
         "3-D 21x30x52 k5x13x13 B=2": ((21, 30, 52), (5, 13, 13), (22, 32, 52), 2)}


def measure(grid, kernel, divisible, batch: int, dim: int = 128) -> dict:
    device = torch.device("cuda")
    ndim = len(grid)
    q, k, v, do = (torch.randn(batch, *grid, 16, dim, device=device, dtype=torch.bfloat16) for _ in range(4))
    plan = _call_plan(grid, kernel, 1, 1, False, "auto", device)
    padded = plan.padded
    flat = pad_grids([q, k, v], grid, padded)

    def kernels():
        return _grid_order_run(flat, plan.grid_order, plan.grid_order_key, None, False, "triton")

    o_flat = kernels()[0]
    widths = [0, 0, 0, 0] + [w for g, p in zip(reversed(grid), reversed(padded)) for w in (0, p - g)]

    def call(layout="auto"):
        return neighborhood_attention(q, k, v, kernel, na_dim=ndim, layout=layout)

    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def fwd_bwd():
        o = neighborhood_attention(*leaves, kernel, na_dim=ndim)
        torch.autograd.grad(o, leaves, do)

    dq, dk, dv = (torch.randn(batch, *divisible, 16, dim, device=device, dtype=torch.bfloat16) for _ in range(3))

    def divisible_call():
        return neighborhood_attention(dq, dk, dv, kernel, na_dim=ndim)

    with torch.no_grad():
        result = {
            "grid": grid, "batch": batch, "padded": padded, "tile": plan.grid_order.layout.tile_shape,
            "pad_qkv": graph_replay_ms(lambda: pad_grids([q, k, v], grid, padded)),
            "functional_pad_qkv": graph_replay_ms(lambda: [torch.nn.functional.pad(t, widths) for t in (q, k, v)]),
            "kernels": graph_replay_ms(kernels),
            "unpad_o": graph_replay_ms(lambda: unpad_grid(o_flat, grid, padded, 1)),
            "call": graph_replay_ms(call),
            "row_major": graph_replay_ms(lambda: call("row-major")),
            "divisible_grid": divisible,
            "divisible": graph_replay_ms(divisible_call),
        }
    result["call_fwd_bwd"] = graph_replay_ms(fwd_bwd)
    natten.PAD_IN_KERNEL = False
    try:
        with torch.no_grad():
            result["call_copies"] = graph_replay_ms(call)
        result["call_fwd_bwd_copies"] = graph_replay_ms(fwd_bwd)
    finally:
        natten.PAD_IN_KERNEL = True
    result["tokens"], result["padded_tokens"] = math.prod(grid), math.prod(padded)
    return result


# (grid, kernel, batch): batches bring small grids to at least about 16k tokens.
SWEEP = [((44, 37), (13, 11), 8), ((28, 28), (7, 7), 16), ((30, 45), (7, 9), 8), ((56, 100), (7, 7), 4),
         ((100, 100), (7, 7), 2), ((60, 90), (13, 13), 4), ((7, 21, 26), (3, 7, 9), 4),
         ((21, 30, 52), (3, 7, 13), 1), ((13, 45, 80), (5, 13, 13), 1)]


def cost_ratio(grid, kernel) -> tuple:
    """``(tile shape, padded cost / row-major cost)`` of the padded plan "auto" would consider."""
    shape = choose_padded_tile_shape(grid, kernel, 64)
    padded = padded_grid(grid, shape)
    listed, full = box_tile_counts(PaddedNeighborhood(padded, grid, kernel), shape)
    size = math.prod(grid)
    rows = Neighborhood(grid, kernel).tile_map(size, size, 64, 64)
    row_listed, row_full = int(rows.kv_count.sum()), int(rows.kv_full.sum())
    cost = full + PARTIAL_COST * (listed - full)
    return shape, cost / (row_full + PARTIAL_COST * (row_listed - row_full))


def sweep(dim: int = 128) -> list:
    device = torch.device("cuda")
    rows = []
    for grid, kernel, batch in SWEEP:
        shape, ratio = cost_ratio(grid, kernel)
        q, k, v, do = (torch.randn(batch, *grid, 16, dim, device=device, dtype=torch.bfloat16) for _ in range(4))
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        row = {"grid": grid, "kernel": kernel, "batch": batch, "tile": shape, "cost_ratio": ratio}
        for name, layout in (("padded", shape), ("row_major", "row-major")):
            def fwd(layout=layout):
                with torch.no_grad():
                    return neighborhood_attention(q, k, v, kernel, na_dim=len(grid), layout=layout)

            def fwd_bwd(layout=layout):
                o = neighborhood_attention(*leaves, kernel, na_dim=len(grid), layout=layout)
                torch.autograd.grad(o, leaves, do)
            row[f"{name}_fwd"] = graph_replay_ms(fwd)
            row[f"{name}_fwd_bwd"] = graph_replay_ms(fwd_bwd)
        print(json.dumps(row))
        rows.append(row)
    return rows


# (grid, kernel, dilation, batch): DiNAT-style 2-D levels and a 3-D video latent.
DILATED = [((56, 56), (7, 7), (2, 2), 16), ((56, 56), (7, 7), (4, 4), 16), ((100, 100), (7, 7), (2, 2), 4),
           ((60, 50), (7, 7), (2, 2), 4), ((6, 40, 42), (3, 7, 7), (2, 2, 2), 2)]


def dilated(dim: int = 128) -> list:
    device = torch.device("cuda")
    rows = []
    for grid, kernel, dilation, batch in DILATED:
        n = len(grid)
        tiles = natten._padded_group_tiles(grid, kernel, dilation, (1,) * n, (False,) * n, "cuda")
        q, k, v, do = (torch.randn(batch, *grid, 16, dim, device=device, dtype=torch.bfloat16) for _ in range(4))
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        row = {"grid": grid, "kernel": kernel, "dilation": dilation, "batch": batch, "group_tiles": tiles}

        def fwd():
            with torch.no_grad():
                return neighborhood_attention(q, k, v, kernel, dilation, na_dim=n)

        def fwd_bwd():
            o = neighborhood_attention(*leaves, kernel, dilation, na_dim=n)
            torch.autograd.grad(o, leaves, do)
        for name, on in (("padded", True), ("row_major", False)):
            natten.PAD_DILATION_GROUPS = on
            try:
                row[f"{name}_fwd"] = graph_replay_ms(fwd)
                row[f"{name}_fwd_bwd"] = graph_replay_ms(fwd_bwd)
            finally:
                natten.PAD_DILATION_GROUPS = True
        print(json.dumps(row))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--sweep", action="store_true", help="padded against row-major over SWEEP")
    parser.add_argument("--dilated", action="store_true", help="padded dilation groups over DILATED")
    args = parser.parse_args()
    warm_up_gpu(torch.device("cuda"))
    if args.dilated:
        results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": dilated()}
        with open(f"{args.out}/padded_grid_dilated.json", "w") as f:
            json.dump(results, f, indent=1)
        return
    if args.sweep:
        results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": sweep()}
        with open(f"{args.out}/padded_grid_sweep.json", "w") as f:
            json.dump(results, f, indent=1)
        return
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": {}}
    for name, (grid, kernel, divisible, batch) in CASES.items():
        results["cases"][name] = measure(grid, kernel, divisible, batch)
        print(name, json.dumps(results["cases"][name]))
    with open(f"{args.out}/padded_grid.json", "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
