"""Where the time of a padded-grid neighborhood call goes (grids no tile shape divides: natten pads
them up to whole tiles). GPU ms per forward, replayed from CUDA graphs (no host time), bf16,
B = 1, H = 16, D = 128, per case:

- ``pad_qkv``: ``grid_padding.pad_grids`` of q, k and v (and ``functional_pad_qkv``:
  ``torch.nn.functional.pad`` of the three, for comparison);
- ``kernels``: the grid-order kernels on already padded tensors;
- ``unpad_o``: ``grid_padding.unpad_grid`` of o;
- ``call``: the whole ``na2d`` / ``na3d`` forward, and ``call_fwd_bwd`` its forward+backward;
- ``row_major``: the same call in row-major order (no tiles, no padding);
- ``divisible``: the kernels on a grid of about the same size that tiles divide, for the
  kernels' per-token cost.

    python benchmarks/gpu_padded_grid.py --out DIR   -> DIR/padded_grid.json
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from tessera.bench.timing import graph_replay_ms, warm_up_gpu
from tessera.grid_padding import pad_grids, unpad_grid
from tessera.natten import _call_plan, _grid_order_run, neighborhood_attention

# name: (grid, kernel, a grid of about the same size that 64-token tiles divide)
CASES = {"2-D 100x100 k17": ((100, 100), (17, 17), (104, 104)),
         "3-D 21x30x52 k5x13x13": ((21, 30, 52), (5, 13, 13), (22, 32, 52))}


def measure(grid, kernel, divisible, dim: int = 128) -> dict:
    device = torch.device("cuda")
    ndim = len(grid)
    q, k, v, do = (torch.randn(1, *grid, 16, dim, device=device, dtype=torch.bfloat16) for _ in range(4))
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

    dq, dk, dv = (torch.randn(1, *divisible, 16, dim, device=device, dtype=torch.bfloat16) for _ in range(3))

    def divisible_call():
        return neighborhood_attention(dq, dk, dv, kernel, na_dim=ndim)

    with torch.no_grad():
        result = {
            "grid": grid, "padded": padded, "tile": plan.grid_order.layout.tile_shape,
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
    result["tokens"], result["padded_tokens"] = math.prod(grid), math.prod(padded)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    warm_up_gpu(torch.device("cuda"))
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": {}}
    for name, (grid, kernel, divisible) in CASES.items():
        results["cases"][name] = measure(grid, kernel, divisible)
        print(name, json.dumps(results["cases"][name]))
    with open(f"{args.out}/padded_grid.json", "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
