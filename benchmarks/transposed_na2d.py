"""A 2-D neighborhood forward with queries as wgmma's N (the transposed products), as a plain
Triton prototype, timed against tessera's routed ``na2d`` and its dense forward in one run.

    python benchmarks/transposed_na2d.py [--dims 128 64] [--sets 4x4 4x8] [--out DIR]   (GPU)
    TRITON_INTERPRET=1 python benchmarks/transposed_na2d.py --check                     (CPU)

One program owns a QX x QY square of queries of one (batch, head) on the row-major grid
(``[B, X, Y, H, D]``, NATTEN's layout, no token permutation). The union of their clamped
windows lies in a box of (QX + KX - 1) x (QY + KY - 1) keys, read in chunks of 64 flattened box
positions by row gathers. Per chunk: ``S^T = K Q^T`` (64 keys x N = QX * QY queries), the
neighborhood mask, an online softmax down the key axis, ``O^T += V^T P^T``. For 17 x 17 windows
a 4 x 4 square computes 7 x 64 keys per query (0.645 of them useful) against 576 (0.50) for the
8 x 8 squares of the usual 64-query tiles. The records give ms, useful TFLOP/s and the fraction
of the ideal speedup over tessera's own dense forward (``backend="triton"``, the N-D suite's
dense baseline) timed in the same run. Dilation 1, stride 1, not causal, odd kernels; a
prototype, not routed.
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


@triton.jit
def _na2d_transposed(q_ptr, k_ptr, v_ptr, o_ptr, X, Y, H, qk_scale_log2,
                     stride_b, stride_x, stride_y, stride_h,
                     KX: tl.constexpr, KY: tl.constexpr, QX: tl.constexpr, QY: tl.constexpr,
                     D: tl.constexpr, STAGES: tl.constexpr):
    """Program ``(square, b * H + h)``; q, k, v, o share the strides (elements) given."""
    QN: tl.constexpr = QX * QY
    BOX_X: tl.constexpr = QX + KX - 1
    BOX_Y: tl.constexpr = QY + KY - 1
    CHUNKS: tl.constexpr = (BOX_X * BOX_Y + 63) // 64
    square = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    squares_y = Y // QY
    x0 = (square // squares_y) * QX
    y0 = (square % squares_y) * QY
    base = b.to(tl.int64) * stride_b + h * stride_h
    n = tl.arange(0, QN)
    qx = x0 + n // QY
    qy = y0 + n % QY
    cols = tl.arange(0, D)
    q_rows = base + qx * stride_x + qy * stride_y
    q = tl.load(q_ptr + q_rows[:, None] + cols[None, :])
    q_t = tl.trans(q)
    start_x = tl.minimum(tl.maximum(qx - KX // 2, 0), X - KX)
    start_y = tl.minimum(tl.maximum(qy - KY // 2, 0), Y - KY)
    box_x = tl.minimum(tl.maximum(x0 - KX // 2, 0), X - BOX_X)
    box_y = tl.minimum(tl.maximum(y0 - KY // 2, 0), Y - BOX_Y)
    slot = tl.arange(0, 64)
    acc = tl.zeros([D, QN], dtype=tl.float32)
    row_max = tl.full([QN], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([QN], dtype=tl.float32)
    for c in tl.range(0, CHUNKS, num_stages=STAGES):
        f = c * 64 + slot
        in_box = f < BOX_X * BOX_Y
        kx = box_x + f // BOX_Y
        ky = box_y + f % BOX_Y
        k_rows = base + kx * stride_x + ky * stride_y
        k = tl.load(k_ptr + k_rows[:, None] + cols[None, :], mask=in_box[:, None], other=0.0)
        v = tl.load(v_ptr + k_rows[:, None] + cols[None, :], mask=in_box[:, None], other=0.0)
        s_t = tl.dot(k, q_t) * qk_scale_log2
        inside = ((kx[:, None] >= start_x[None, :]) & (kx[:, None] < start_x[None, :] + KX)
                  & (ky[:, None] >= start_y[None, :]) & (ky[:, None] < start_y[None, :] + KY)
                  & in_box[:, None])
        s_t = tl.where(inside, s_t, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s_t, 0))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        alpha = tl.exp2(row_max - safe_max)
        p_t = tl.exp2(s_t - safe_max[None, :])
        row_sum = row_sum * alpha + tl.sum(p_t, 0)
        acc = tl.dot(tl.trans(v), p_t.to(v.dtype), acc * alpha[None, :])
        row_max = new_max
    out = tl.trans(acc / row_sum[None, :])
    tl.store(o_ptr + q_rows[:, None] + cols[None, :], out.to(o_ptr.dtype.element_ty))


def na2d_transposed(q, k, v, kernel, square=(4, 4), stages: int = 2, warps: int = 4) -> torch.Tensor:
    """o ``[B, X, Y, H, D]`` of 2-D neighborhood attention (odd ``kernel`` (kx, ky), dilation 1)
    over q, k, v ``[B, X, Y, H, D]`` with the same strides; X, Y multiples of ``square``."""
    batch, X, Y, heads, dim = q.shape
    qx, qy = square
    if X % qx or Y % qy or X < qx + kernel[0] - 1 or Y < qy + kernel[1] - 1:
        raise ValueError(f"grid {(X, Y)} must be a multiple of square {square} and hold its key box")
    if not (q.stride() == k.stride() == v.stride() and q.stride(-1) == 1):
        raise ValueError("q, k, v must share strides with a unit last stride")
    o = torch.empty_like(q)
    grid = ((X // qx) * (Y // qy), batch * heads)
    _na2d_transposed[grid](q, k, v, o, X, Y, heads, math.log2(math.e) / math.sqrt(dim), *q.stride()[:4],
                           KX=kernel[0], KY=kernel[1], QX=qx, QY=qy, D=dim, STAGES=stages, num_warps=warps)
    return o


def check(device: torch.device, dtype: torch.dtype, grid=(24, 24), kernel=(7, 5), dim=64) -> None:
    """Each square against tessera's float64 reference ``na2d`` (B = 2, H = 2); raises on a mismatch."""
    from tessera.natten import na2d
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, *grid, 2, dim, generator=gen).to(device, dtype) for _ in range(3))
    want = na2d(q.double().cpu(), k.double().cpu(), v.double().cpu(), kernel, backend="reference")
    for square in [(4, 4)] + ([(4, 8)] if grid[1] % 8 == 0 else []):
        err = rel_err(na2d_transposed(q, k, v, kernel, square).cpu(), want)
        print(f"check square {square} grid {grid} kernel {kernel}: rel err {err:.2e}")
        if not err < 1e-2:
            raise SystemExit(f"square {square} differs from the float64 reference: {err:.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--sets", nargs="+", default=["4x4", "4x8"])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--out", help="directory for the results JSON")
    parser.add_argument("--check", action="store_true", help="only the small float64 checks")
    args = parser.parse_args()
    if args.check:
        on_gpu = torch.cuda.is_available()
        check(torch.device("cuda" if on_gpu else "cpu"), torch.bfloat16 if on_gpu else torch.float16)
        return
    import tessera
    from tessera.bench.report import write_results
    from tessera.bench.timing import median_ms, warm_up_gpu
    from tessera.natten import na2d
    device = torch.device("cuda")
    warm_up_gpu(device)
    check(device, torch.bfloat16)
    check(device, torch.bfloat16, grid=(40, 48), kernel=(17, 17), dim=128)
    grid, kernel, heads = (128, 128), (17, 17), 16
    tokens, window = math.prod(grid), math.prod(kernel)
    records = []
    for dim in args.dims:
        q, k, v = (torch.randn(1, *grid, heads, dim, device=device, dtype=torch.bfloat16) for _ in range(3))
        flat = [t.view(1, tokens, heads, dim) for t in (q, k, v)]
        dense_ms = median_ms(lambda: tessera.attention(*flat, backend="triton"), device)
        ideal_ms = dense_ms * window / tokens
        useful = 4.0 * tokens * window * dim * heads
        routed = na2d(q, k, v, kernel)
        rows = [(f"own dense (backend triton) S={tokens} H=16 D={dim}", dense_ms,
                 4.0 * tokens ** 2 * dim * heads / dense_ms / 1e9),
                (f"routed na2d 128x128 k17 D={dim}", median_ms(lambda: na2d(q, k, v, kernel), device), None)]
        for spec in args.sets:
            square = tuple(int(s) for s in spec.split("x"))
            err = rel_err(na2d_transposed(q, k, v, kernel, square), routed)
            for stages in args.stages:
                ms = median_ms(lambda: na2d_transposed(q, k, v, kernel, square, stages), device)
                rows.append((f"transposed {spec} queries 128x128 k17 D={dim}, {stages} stages, "
                             f"rel diff to routed {err:.1e}", ms, None))
        for case, ms, tflops in rows:
            record = {"suite": "transposed-na2d", "case": case, "impl": "tessera", "direction": "fwd", "ms": ms,
                      "useful_tflops": tflops if tflops is not None else useful / ms / 1e9}
            if tflops is None:
                record["fraction_of_ideal"] = ideal_ms / ms
            records.append(record)
            print(f"RESULT {case}: {ms:.4f} ms" + (f", {ideal_ms / ms:.3f} of ideal" if tflops is None else ""),
                  flush=True)
    if args.out:
        path = Path(args.out) / f"{datetime.date.today().isoformat()}-transposed-na2d.json"
        write_results(path, device, records)
        print("wrote", path)


if __name__ == "__main__":
    main()
