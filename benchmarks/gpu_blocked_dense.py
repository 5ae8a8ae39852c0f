"""Blocked attention as batched dense attention: is a dense kernel on the blocks faster than the
block-sparse path? (next step of the N-D issue's blocked case, bf16, B = 1, H = 16.)

With stride = kernel every block attends to itself only, and natten's "auto" layout makes each
block ``prod(kernel)`` contiguous tokens (``blocked_tile_shape``). So after one gather into that
order the whole call is dense attention on a ``[B * blocks, prod(kernel), H, D]`` view. Timed,
forward and forward+backward (``median_ms``):

- ``natten``: ``na3d(..., kernel, stride=kernel)`` as it runs today (grid order in-kernel);
- ``tessera-dense-view``, ``sdpa-cudnn-view``, ``sdpa-flash-view``: dense attention on the view,
  inputs already in block order, output reshaped to ``[B, S, H, D]`` (a copy where the kernel's
  output is strided, as a real path would pay);
- ``flex-tiled``: FlexAttention with the tiled pattern (inputs already in the tiled order);
- ``gather``: one ``GridLayout.permute`` of a ``[B, S, H, D]`` tensor (a real dense-view path
  pays four forward and four backward).

    python benchmarks/gpu_blocked_dense.py --out DIR [--grid 16 48 48] [--block 4 8 8] [--dims 128 64]
    python benchmarks/gpu_blocked_dense.py --device cpu --grid 4 16 16 --dims 32   (dry run)

Writes ``blocked_dense.json`` (``rows``: case, impl, direction, ms; and per head dim the largest
difference between the dense view, gathered back, and ``natten``). On CPU the tessera rows use
the reference backend, SDPA its default backend, and Flex is skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from types import SimpleNamespace

import torch


def _sdpa(q, k, v, backend):
    """SDPA on ``[B, S, H, D]`` tensors with one backend (``cudnn``, ``flash``; ``None``: PyTorch's
    choice), output ``[B, S, H, D]`` (a strided view)."""
    from contextlib import nullcontext

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention
    chosen = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}.get(backend)
    with sdpa_kernel(chosen) if chosen is not None else nullcontext():
        return scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--grid", type=int, nargs=3, default=[16, 48, 48])
    parser.add_argument("--block", type=int, nargs=3, default=[4, 8, 8])
    parser.add_argument("--dims", type=int, nargs="*", default=[128, 64])
    args = parser.parse_args()

    from tessera import attention
    from tessera.bench.attention import _flex_fn, _na_case, tiled_problem
    from tessera.bench.timing import median_ms, warm_up_gpu
    from tessera.natten import _auto_layout, na3d

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    grid, block = tuple(args.grid), tuple(args.block)
    seq, block_tokens = math.prod(grid), math.prod(block)
    blocks = seq // block_tokens
    layout = _auto_layout(grid, block, (1, 1, 1), block, (False,) * 3)
    if layout is None or layout.tile_shape != block:
        raise SystemExit(f"the auto layout of {block} blocks over {grid} is not the block: {layout}")
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": []}
    warm_up_gpu(device)
    backend = "triton" if cuda else "reference"
    heads = 16                                    # as the suite's cases (bench.attention._na_case)
    for dim in args.dims:
        case = f"3-D {'x'.join(map(str, grid))} blocked {'x'.join(map(str, block))} D={dim}"
        flat = (1, seq, heads, dim)
        q, k, v, do = (torch.randn(flat, device=device, dtype=dtype) for _ in range(4))
        view = (blocks, block_tokens, heads, dim)

        def as_grid(t):
            return t.view(1, *grid, heads, dim)

        def as_blocks(t):
            return t.view(view)

        runs = {
            "natten": lambda: na3d(as_grid(q), as_grid(k), as_grid(v), block, stride=block,
                                   backend=backend).view(flat),
            "tessera-dense-view": lambda: attention(as_blocks(q), as_blocks(k), as_blocks(v),
                                                    backend=backend).reshape(flat),
            "gather": lambda: layout.permute(q, 1),
        }
        for name, which in (("sdpa-cudnn-view", "cudnn"), ("sdpa-flash-view", "flash")):
            if cuda or which == "flash":
                runs[name] = (lambda which=which: _sdpa(as_blocks(q), as_blocks(k), as_blocks(v),
                                                        which if cuda else None).reshape(flat))
        if cuda:
            na_case = _na_case(case, grid, block, dim=dim, stride=block)
            pattern, groups = tiled_problem(na_case, device)

            runs["flex-tiled"] = _flex_fn(na_case, pattern, SimpleNamespace(q=q, k=k, v=v), groups)
        with torch.no_grad():   # the premise: dense attention on the block view is the same call
            blocked = attention(*(as_blocks(layout.permute(t, 1)) for t in (q, k, v)), backend=backend)
            same = layout.unpermute(blocked.reshape(flat), 1)
            diff = (same.float() - runs["natten"]().float()).abs().max().item()
        result["rows"].append({"case": case, "check": "dense view vs natten, max abs difference", "value": diff})
        print(json.dumps(result["rows"][-1]), flush=True)
        for direction in ("fwd", "fwd+bwd"):
            for t in (q, k, v):
                t.requires_grad_(direction != "fwd")
            for name, run in runs.items():
                row = {"case": case, "impl": name, "direction": direction}
                try:
                    if direction == "fwd":
                        with torch.no_grad():
                            row["ms"] = median_ms(run, device)
                    else:
                        def step(run=run):
                            o = run()
                            torch.autograd.grad(o, (q, k, v), do.view(o.shape), allow_unused=True)
                        row["ms"] = median_ms(step, device)
                except Exception as exc:  # one failing implementation must not hide the others
                    row["ms"], row["error"] = None, f"{type(exc).__name__}: {str(exc)[:300]}"
                print(json.dumps(row), flush=True)
                result["rows"].append(row)
                with open(os.path.join(args.out, "blocked_dense.json"), "w") as f:
                    json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
