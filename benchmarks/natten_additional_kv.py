"""Neighborhood attention with additional keys and values (``na2d`` / ``na3d`` with
``additional_keys`` / ``additional_values``) against FlexAttention on the same mask, bf16, forward
and forward+backward (the loss on o), eager and replayed from CUDA graphs.

    python benchmarks/natten_additional_kv.py [--out benchmarks/results] [--only 2-D]

Rows per case: ``tessera`` (the neighborhood and the extra tokens, merged), the same case
``... neighborhood alone`` (``tessera`` without the extra tokens: what the extra tokens and the merge
add), ``... torch merge`` (``tessera`` merging in torch operations instead of its Triton kernels)
and ``flex`` (one FlexAttention call over the grid's keys followed by the extra ones, the mask
``kv >= S or neighborhood(q, kv)``, row-major). Useful FLOPs count each query's window plus the
extra tokens. Results: ``<out>/<date>-<device>-natten-additional-kv.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from pathlib import Path

import torch

from tessera.bench.attention import FWD_BWD_FLOP_FACTOR, GRAPH_SUFFIX
from tessera.bench.report import print_table, results_path, write_results
from tessera.bench.timing import graph_replay_ms, median_ms, top_host_functions, warm_up_gpu
from tessera.natten import neighborhood_attention
from tessera.patterns import Neighborhood, to_flex

HEADS = 16
CASES = [
    # name, grid, kernel, extra tokens, head dim
    ("2-D 128x128 k17 +77", (128, 128), (17, 17), 77, 128),
    ("3-D 16x48x48 k5x13x13 +256", (16, 48, 48), (5, 13, 13), 256, 128),
]


def _inputs(grid, extra: int, dim: int, device):
    gen = torch.Generator(device=device).manual_seed(0)
    n = math.prod(grid)

    def rand(*shape):
        return torch.randn(shape, device=device, dtype=torch.bfloat16, generator=gen)
    return [rand(1, n, HEADS, dim) for _ in range(3)] + [rand(1, extra, HEADS, dim) for _ in range(2)] + \
        [rand(1, n, HEADS, dim)]


def _tessera(grid, kernel, tensors, with_extra: bool):
    q, k, v, keys, values, _do = tensors
    shape = (1, *grid, HEADS, q.shape[-1])
    extra = dict(additional_keys=keys, additional_values=values) if with_extra else {}

    def run():
        o = neighborhood_attention(q.view(shape), k.view(shape), v.view(shape), kernel, na_dim=len(grid),
                                   backend="triton", **extra)
        return o.reshape(q.shape)
    return run, [q, k, v, keys, values] if with_extra else [q, k, v]


def _torch_merge(grid, kernel, tensors):
    """``_tessera`` with the merge in torch operations (``merge.FUSED`` off while it runs)."""
    import tessera.merge as merge
    run, leaves = _tessera(grid, kernel, tensors, True)

    def unfused():
        merge.FUSED = False
        try:
            return run()
        finally:
            merge.FUSED = True
    return unfused, leaves


def flex_block_mask(grid, kernel, extra: int, device, block: int = 128):
    """``(mask_mod, BlockMask)`` over ``prod(grid)`` queries and the grid's keys followed by
    ``extra`` keys every query sees: the neighborhood's exact tile map (``to_flex``) with the extra
    keys' blocks appended to every query block's full blocks."""
    from torch.nn.attention.flex_attention import BlockMask
    n = math.prod(grid)
    if n % block:
        raise ValueError(f"the grid's {n} tokens must fill whole {block}-key blocks")
    local, grid_mask = to_flex(Neighborhood(grid, kernel), n, n, block_size=block, device=device)
    first, count = n // block, -(-extra // block)
    width = first + count

    def widened(indices):
        out = torch.zeros((*indices.shape[:-1], width), dtype=indices.dtype, device=device)
        out[..., :indices.shape[-1]] = indices
        return out
    full_count = grid_mask.full_kv_num_blocks
    full_index = widened(grid_mask.full_kv_indices)
    slots = full_count[..., None].long() + torch.arange(count, device=device)
    ids = torch.arange(first, width, dtype=full_index.dtype, device=device).expand(slots.shape)
    full_index.scatter_(-1, slots, ids)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= n) | local(b, h, q_idx, torch.clamp(kv_idx, max=n - 1))
    return mask_mod, BlockMask.from_kv_blocks(grid_mask.kv_num_blocks, widened(grid_mask.kv_indices),
                                              full_count + count, full_index, BLOCK_SIZE=(block, block),
                                              mask_mod=mask_mod, seq_lengths=(n, n + extra))


def _flex(grid, kernel, tensors):
    from torch.nn.attention.flex_attention import flex_attention
    q, k, v, keys, values, _do = tensors
    _mask_mod, block_mask = flex_block_mask(grid, kernel, keys.shape[1], q.device)
    torch._dynamo.reset()
    flex = torch.compile(flex_attention, dynamic=False)

    def run():
        key_all, value_all = torch.cat([k, keys], 1), torch.cat([v, values], 1)
        o = flex(q.transpose(1, 2), key_all.transpose(1, 2), value_all.transpose(1, 2), block_mask=block_mask)
        return o.transpose(1, 2)
    return run, [q, k, v, keys, values]


def _step(run, leaves, do, direction: str):
    for t in leaves:
        t.requires_grad_(direction != "fwd")
    if direction == "fwd":
        def fwd():
            with torch.no_grad():
                run()
        return fwd

    def fwd_bwd():
        torch.autograd.grad(run(), leaves, do)
    return fwd_bwd


def _record(case: str, impl: str, direction: str, ms, flops: float) -> dict:
    return {"suite": "natten-additional-kv", "case": case, "impl": impl, "direction": direction, "ms": ms,
            "useful_tflops": flops / (ms * 1e-3) / 1e12 if ms else None, "tokens_per_s": None, "tbps": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--only", nargs="*", default=None, help="run only cases whose name contains one of these")
    parser.add_argument("--profile", action="store_true",
                        help="print the top host functions of each case's eager fwd+bwd step instead")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/natten_additional_kv.py needs a CUDA GPU (tests/test_merge.py checks "
                         "correctness on CPU)")
    device = torch.device("cuda")
    path = results_path(Path(args.out), device, "natten-additional-kv", datetime.date.today().isoformat())
    warm_up_gpu(device)
    records, notes = [], []
    for name, grid, kernel, extra, dim in CASES:
        if args.only and not any(s in name for s in args.only):
            continue
        print(name)
        tensors = _inputs(grid, extra, dim, device)
        n = math.prod(grid)
        if args.profile:
            for with_extra in (False, True):
                run, leaves = _tessera(grid, kernel, tensors, with_extra)
                step = _step(run, leaves, tensors[5], "fwd+bwd")
                for _ in range(5):
                    step()
                print(f"  host, {'with' if with_extra else 'without'} the extra tokens:")
                for line in top_host_functions(step, top=40):
                    print("   ", line)
            continue
        rows = [(name, "tessera", lambda: _tessera(grid, kernel, tensors, True), math.prod(kernel) + extra),
                (f"{name} neighborhood alone", "tessera", lambda: _tessera(grid, kernel, tensors, False),
                 math.prod(kernel)),
                (f"{name} torch merge", "tessera", lambda: _torch_merge(grid, kernel, tensors),
                 math.prod(kernel) + extra),
                (name, "flex", lambda: _flex(grid, kernel, tensors), math.prod(kernel) + extra)]
        for case, impl, build, keys_per_query in rows:
            try:
                run, leaves = build()
            except Exception as exc:  # noqa: BLE001 - one broken implementation must not hide the others
                print(f"  {case} / {impl}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
                continue
            for direction in ("fwd", "fwd+bwd"):
                flops = 4 * HEADS * n * keys_per_query * dim * (FWD_BWD_FLOP_FACTOR if direction != "fwd" else 1)
                step = _step(run, leaves, tensors[5], direction)
                for suffix, timer in (("", lambda: median_ms(step, device)), (GRAPH_SUFFIX, lambda: graph_replay_ms(step))):
                    try:
                        ms = timer()
                    except Exception as exc:  # noqa: BLE001 - recorded as missing
                        print(f"  {case + suffix} / {impl} / {direction}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
                        ms = None
                    records.append(_record(case + suffix, impl, direction, ms, flops))
                    if ms is not None:
                        print(f"  {case + suffix:48s} {impl:8s} {direction:8s} {ms:9.3f} ms")
        payload = write_results(path, device, records)
        by = {(r["case"], r["impl"], r["direction"]): r["ms"] for r in records}
        for direction in ("fwd", "fwd+bwd"):
            for suffix in ("", GRAPH_SUFFIX):
                ours, alone = by.get((name + suffix, "tessera", direction)), by.get((f"{name} neighborhood alone{suffix}", "tessera", direction))
                flex = by.get((name + suffix, "flex", direction))
                if ours and alone and flex:
                    notes.append(f"{name}{suffix} {direction}: {flex / ours:.2f}x flex, extra tokens and merge add "
                                 f"{ours - alone:.3f} ms to the neighborhood's {alone:.3f}")
        payload["notes"] = notes
        path.write_text(json.dumps(payload, indent=1) + "\n")
    if args.profile:
        return
    if not records:
        raise SystemExit(f"no case matched --only {args.only}")
    print_table(payload)
    for note in notes:
        print(note)
    print(f"results -> {path}")


if __name__ == "__main__":
    main()
