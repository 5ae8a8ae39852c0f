"""What a forward with queries as wgmma's N (the transposed products) could reach on the 2-D
neighborhood case, measured with a plain Triton kernel against the usual orientation.

    python benchmarks/transposed_products.py [--dims 128 64] [--out DIR]     (GPU; --check: CPU)

The 2-D suite case (128 x 128 tokens, kernel 17 x 17, B = 1, H = 16, bf16) gives each query
289 keys. A program that owns a query set computes that set times the union of its windows:
- usual orientation (``S = Q K^T``, queries as wgmma's M): 64 queries, an 8 x 8 square, union
  24 x 24 = 576 keys = 9 chunks of 64: 289 / 576 = 0.50 of its pairs useful;
- transposed (``S^T = K Q^T``, ``O^T += V^T P^T``, queries as N): a 4 x 4 square (N = 16) has a
  union of 20 x 20 = 400 keys, 7 chunks of 64 (448): 0.645; 4 x 8 (N = 32): 20 x 24 = 480, 8
  chunks (512): 0.56.
The forward's accumulator is D x N there, so the key chunks are free per set; the price is a
small N (less reuse of each K and V element read from shared memory) and P^T through shared memory.

Each program here loads its query set once and loops over its chunks (contiguous key rows that
overlap those of neighbouring sets, so most copies hit L2 as the real kernel's do), with or
without an online softmax (no mask: the mask's arithmetic is the same in both orientations). The
records give the time, TFLOP/s over computed and useful pairs, and the fraction of the ideal
speedup this loop alone would give over tessera's own dense forward (``backend="triton"``, the
N-D suite's dense baseline) timed in the same run (``dense_ms * 289 / 16384 / ms``), before a
mask and the box addressing are paid for (``transposed_na2d.py`` pays them).
``--check`` runs each variant at a small size against a float64 reference (also on CPU under
``TRITON_INTERPRET=1``, in float16).
"""

from __future__ import annotations

import argparse
import datetime
import math
from pathlib import Path

import torch
import triton
import triton.language as tl

from tessera.bench.error_rule import rel_err

GRID_TOKENS = 128 * 128
WINDOW = 17 * 17
HEADS = 16
# name -> (queries per set, key chunks per set, transposed)
VARIANTS = {
    "usual 8x8 queries, 9 chunks": (64, 9, False),
    "transposed 8x8 queries, 9 chunks": (64, 9, True),
    "transposed 4x8 queries, 8 chunks": (32, 8, True),
    "transposed 4x4 queries, 7 chunks": (16, 7, True),
}


@triton.jit
def _chunk_loop(q_ptr, k_ptr, v_ptr, o_ptr, seq, lead, qk_scale_log2,
                QN: tl.constexpr, D: tl.constexpr, CHUNKS: tl.constexpr, TRANSPOSED: tl.constexpr,
                SOFTMAX: tl.constexpr, STAGES: tl.constexpr):
    """One program: query set ``program_id(0)`` (``QN`` rows) of head ``program_id(1)`` over
    ``CHUNKS`` chunks of 64 key rows starting near the set (``lead`` rows before it, clamped).
    q, k, v, o: ``[H, seq, D]`` contiguous. Without ``SOFTMAX`` the logits are the weights."""
    set_id = tl.program_id(0)
    head = tl.program_id(1)
    head_base = head.to(tl.int64) * seq * D
    query_rows = set_id * QN + tl.arange(0, QN)
    cols = tl.arange(0, D)
    chunk_rows = tl.arange(0, 64)
    q = tl.load(q_ptr + head_base + query_rows[:, None] * D + cols[None, :])
    first_key = tl.minimum(tl.maximum(set_id * QN - lead, 0), seq - CHUNKS * 64)
    key_base = head_base + first_key.to(tl.int64) * D
    if TRANSPOSED:
        q_t = tl.trans(q)
        acc = tl.zeros([D, QN], dtype=tl.float32)
        row_max = tl.full([QN], float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros([QN], dtype=tl.float32)
        for c in tl.range(0, CHUNKS, num_stages=STAGES):
            offsets = key_base + (c * 64 + chunk_rows)[:, None] * D + cols[None, :]
            k = tl.load(k_ptr + offsets)
            v = tl.load(v_ptr + offsets)
            s_t = tl.dot(k, q_t)
            if SOFTMAX:
                s_t = s_t * qk_scale_log2
                new_max = tl.maximum(row_max, tl.max(s_t, 0))
                alpha = tl.exp2(row_max - new_max)
                p_t = tl.exp2(s_t - new_max[None, :])
                row_sum = row_sum * alpha + tl.sum(p_t, 0)
                acc = acc * alpha[None, :]
                row_max = new_max
            else:
                p_t = s_t
            acc = tl.dot(tl.trans(v), p_t.to(v.dtype), acc)
        if SOFTMAX:
            acc = acc / row_sum[None, :]
        out = tl.trans(acc)
    else:
        acc = tl.zeros([QN, D], dtype=tl.float32)
        row_max = tl.full([QN], float("-inf"), dtype=tl.float32)
        row_sum = tl.zeros([QN], dtype=tl.float32)
        for c in tl.range(0, CHUNKS, num_stages=STAGES):
            offsets = key_base + (c * 64 + chunk_rows)[:, None] * D + cols[None, :]
            k = tl.load(k_ptr + offsets)
            v = tl.load(v_ptr + offsets)
            s = tl.dot(q, tl.trans(k))
            if SOFTMAX:
                s = s * qk_scale_log2
                new_max = tl.maximum(row_max, tl.max(s, 1))
                alpha = tl.exp2(row_max - new_max)
                p = tl.exp2(s - new_max[:, None])
                row_sum = row_sum * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None]
                row_max = new_max
            else:
                p = s
            acc = tl.dot(p.to(v.dtype), v, acc)
        if SOFTMAX:
            acc = acc / row_sum[:, None]
        out = acc
    tl.store(o_ptr + head_base + query_rows[:, None] * D + cols[None, :], out.to(o_ptr.dtype.element_ty))


def run_loop(q, k, v, queries: int, chunks: int, transposed: bool, softmax: bool, stages: int = 3,
             warps: int = 4) -> torch.Tensor:
    """o ``[H, S, D]`` of ``_chunk_loop`` over q, k, v ``[H, S, D]`` (S a multiple of ``queries``)."""
    heads, seq, dim = q.shape
    o = torch.empty_like(q)
    lead = (chunks * 64 - queries) // 2
    _chunk_loop[(seq // queries, heads)](q, k, v, o, seq, lead, math.log2(math.e) / math.sqrt(dim),
                                         QN=queries, D=dim, CHUNKS=chunks, TRANSPOSED=transposed,
                                         SOFTMAX=softmax, STAGES=stages, num_warps=warps)
    return o


def reference_loop(q, k, v, queries: int, chunks: int, softmax: bool) -> torch.Tensor:
    """float64 ``run_loop``: each set over its chunk rows, with or without the softmax."""
    heads, seq, dim = q.shape
    q64, k64, v64 = (t.double() for t in (q, k, v))
    out = torch.empty_like(q64)
    lead = (chunks * 64 - queries) // 2
    for s in range(seq // queries):
        first = min(max(s * queries - lead, 0), seq - chunks * 64)
        rows = slice(s * queries, (s + 1) * queries)
        keys = slice(first, first + chunks * 64)
        logits = q64[:, rows] @ k64[:, keys].transpose(1, 2)
        if softmax:
            logits = torch.softmax(logits / math.sqrt(dim), dim=-1)
        else:
            logits = logits.to(q.dtype).double()
        out[:, rows] = logits @ v64[:, keys]
    return out


def check(device: torch.device, dtype: torch.dtype) -> None:
    """Every variant at H = 2, S = 1024, D = 64, 4 chunks per set against ``reference_loop``;
    raises on a mismatch."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, 1024, 64, generator=gen).to(device, dtype) for _ in range(3))
    for name, (queries, _, transposed) in VARIANTS.items():
        for softmax in (True, False):
            got = run_loop(q, k, v, queries, 4, transposed, softmax, stages=2)
            err = rel_err(got, reference_loop(q, k, v, queries, 4, softmax))
            print(f"check {name} softmax={softmax}: rel err {err:.2e}")
            if not err < (2e-2 if softmax else 3e-2):
                raise SystemExit(f"{name} (softmax={softmax}) differs from float64: {err:.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--out", help="directory for transposed-products.json")
    parser.add_argument("--check", action="store_true", help="only the small float64 checks")
    args = parser.parse_args()
    if args.check:
        on_gpu = torch.cuda.is_available()
        check(torch.device("cuda" if on_gpu else "cpu"), torch.bfloat16 if on_gpu else torch.float16)
        return
    import tessera
    from tessera.bench.report import write_results
    from tessera.bench.timing import median_ms, warm_up_gpu
    device = torch.device("cuda")
    warm_up_gpu(device)
    check(device, torch.bfloat16)
    records = []
    for dim in args.dims:
        q, k, v = (torch.randn(HEADS, GRID_TOKENS, dim, device=device, dtype=torch.bfloat16) for _ in range(3))
        dense_q, dense_k, dense_v = (t.transpose(0, 1).unsqueeze(0).contiguous() for t in (q, k, v))
        dense_ms = median_ms(lambda: tessera.attention(dense_q, dense_k, dense_v, backend="triton"), device)
        ideal_ms = dense_ms * WINDOW / GRID_TOKENS
        useful = 4.0 * GRID_TOKENS * WINDOW * dim * HEADS
        records.append({"suite": "transposed-products",
                        "case": f"own dense (backend triton) S={GRID_TOKENS} H=16 D={dim}",
                        "impl": "tessera", "direction": "fwd", "ms": dense_ms,
                        "useful_tflops": 4.0 * GRID_TOKENS ** 2 * dim * HEADS / dense_ms / 1e9})
        print(f"D={dim} own dense {dense_ms:.4f} ms, ideal 2-D k17 {ideal_ms:.4f} ms, "
              f"0.6 of ideal {ideal_ms / 0.6:.4f} ms", flush=True)
        for name, (queries, chunks, transposed) in VARIANTS.items():
            computed = 4.0 * GRID_TOKENS * chunks * 64 * dim * HEADS
            for softmax in (False, True):
                for stages in args.stages:
                    ms = median_ms(lambda: run_loop(q, k, v, queries, chunks, transposed, softmax, stages), device)
                    record = {"suite": "transposed-products",
                              "case": f"{name}, {'softmax' if softmax else 'products alone'}, D={dim}, "
                                      f"{stages} stages",
                              "impl": "tessera", "direction": "fwd", "ms": ms, "useful_tflops": useful / ms / 1e9,
                              "computed_tflops": computed / ms / 1e9, "useful_pair_share": WINDOW / (chunks * 64),
                              "fraction_of_ideal_bound": ideal_ms / ms}
                    records.append(record)
                    print(f"RESULT {record['case']}: {ms:.4f} ms, computed {record['computed_tflops']:.0f} "
                          f"TFLOP/s, bound {record['fraction_of_ideal_bound']:.3f} of ideal", flush=True)
    if args.out:
        path = Path(args.out) / f"{datetime.date.today().isoformat()}-transposed-products.json"
        write_results(path, device, records)
        print("wrote", path)


if __name__ == "__main__":
    main()
