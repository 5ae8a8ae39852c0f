"""tessera.natten under torch.compile against eager mode and FlexAttention -> one results JSON.

    python benchmarks/natten_compile.py --out DIR [--only SUBSTRING ...]

GPU only. For some of the N-D suite's cases (``bench.attention.natten_cases``; bf16, B = 1,
H = 16), one process times the forward and the forward+backward step (``median_ms``: CUDA
events, L2 flushed) of ``neighborhood_attention``: eager (case name as in the suite), compiled
with ``fullgraph=True`` (``" [torch.compile]"``) and compiled with ``mode="reduce-overhead"``
(CUDA graph replays, ``" [torch.compile reduce-overhead]"``), next to row-major FlexAttention as
the suite runs it (compiled ``flex_attention``, eager calls). The compiled steps are checked
equal to eager bit for bit first (``notes``). Then four stacked attention sublayers (qkv
projection, ``na2d`` 17 x 17 on 128 x 128, output projection; ``_model_records``) the same three
ways, where one compiled graph holds every layer. Writes ``<date>-<device>-natten-compile.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from tessera.bench.attention import FWD_BWD_FLOP_FACTOR, _Inputs, _impl_fn, _step, natten_cases, useful_pairs
from tessera.bench.report import results_path, write_results
from tessera.bench.timing import median_ms, warm_up_gpu
from tessera.natten import neighborhood_attention

CASES = ("2-D 128x128 k17", "2-D 128x128 k17 D=32", "3-D 16x48x48 k5x13x13",
         "3-D 16x48x48 blocked 4x8x8 D=64")
MODES = {" [torch.compile]": None, " [torch.compile reduce-overhead]": "reduce-overhead"}


def _attention(case):
    """``(q, k, v) -> o`` on the suite's ``[B, S, H, D]`` tensors, viewed on the case's grid."""
    na = case.na
    grid = tuple(na["grid"])
    shape = (case.batch, *grid, case.heads, case.head_dim)

    def attend(q, k, v):
        o = neighborhood_attention(q.view(shape), k.view(shape), v.view(shape), na["kernel"],
                                   na.get("dilation", 1), na.get("stride", 1), na_dim=len(grid))
        return o.reshape(q.shape)
    return attend


def _timed(fn, inp, direction: str, device) -> float:
    leaves = (inp.q, inp.k, inp.v)
    if direction == "fwd":
        inp.require_grad(False)

        def step():
            with torch.no_grad():
                fn(*leaves)
    else:
        inp.require_grad(True)

        def step():
            o = fn(*leaves)
            torch.autograd.grad(o, leaves, inp.do)
    return median_ms(step, device)


def _equal_to_eager(attend, compiled, inp) -> bool:
    inp.require_grad(True)
    leaves = (inp.q, inp.k, inp.v)
    outputs = []
    for fn in (attend, compiled):
        o = fn(*leaves)
        outputs.append([o.detach().clone(), *(g.clone() for g in torch.autograd.grad(o, leaves, inp.do))])
    return all(torch.equal(a, b) for a, b in zip(*outputs))


def _record(case, name, impl, direction, ms):
    flops = 4 * useful_pairs(case, case.pattern("cpu")) * case.batch * case.head_dim
    flops *= FWD_BWD_FLOP_FACTOR if direction == "fwd+bwd" else 1.0
    return {"suite": "natten-compile", "case": name, "impl": impl, "direction": direction, "ms": ms,
            "useful_tflops": flops / (ms * 1e-3) / 1e12 if ms else None, "tokens_per_s": None, "tbps": None}


class _Block(torch.nn.Module):
    """A vision transformer's attention sublayer: qkv projection, ``na2d``, output projection,
    residual, on ``[B, X, Y, heads * head_dim]`` activations."""

    def __init__(self, heads: int, head_dim: int, kernel: int):
        super().__init__()
        width = heads * head_dim
        self.heads, self.head_dim, self.kernel = heads, head_dim, kernel
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x):
        b, gx, gy, width = x.shape
        q, k, v = self.qkv(x).view(b, gx, gy, 3, self.heads, self.head_dim).unbind(3)
        o = neighborhood_attention(q, k, v, self.kernel, na_dim=2)
        return x + self.proj(o.reshape(b, gx, gy, width))


def _model_records(device, layers: int = 4, grid=(128, 128), heads: int = 16, kernel: int = 17):
    """fwd+bwd step times of ``layers`` ``_Block``s (bf16 parameters, batch 1) at head dims 32 and
    128, eager and compiled: a model's graph holds every layer, so torch.compile's per-call
    overhead is paid once per step, not once per attention."""
    records, notes = [], []
    for head_dim in (32, 128):
        name = f"{layers} blocks qkv + 2-D {grid[0]}x{grid[1]} k{kernel} + proj D={head_dim}"
        torch.manual_seed(0)
        model = torch.nn.Sequential(*(_Block(heads, head_dim, kernel) for _ in range(layers)))
        model = model.to(device, torch.bfloat16)
        x = torch.randn(1, *grid, heads * head_dim, device=device, dtype=torch.bfloat16)
        grad = torch.randn_like(x)
        times = {}
        for suffix, mode in {"": "eager", **MODES}.items():
            torch._dynamo.reset()
            fn = model if mode == "eager" else torch.compile(model, fullgraph=True, mode=mode)

            def step(fn=fn):
                fn(x).backward(grad)
            times[suffix] = median_ms(step, device)
            pairs = layers * heads * grid[0] * grid[1] * kernel * kernel
            flops = 4 * pairs * head_dim * FWD_BWD_FLOP_FACTOR
            records.append({"suite": "natten-compile", "case": name + suffix, "impl": "tessera",
                            "direction": "fwd+bwd", "ms": times[suffix],
                            "useful_tflops": flops / (times[suffix] * 1e-3) / 1e12,
                            "tokens_per_s": None, "tbps": None})
        notes.append(f"{name} fwd+bwd: eager {times['']:.3f} ms, " + ", ".join(
            f"{suffix.strip(' []')} {times[suffix]:.3f} ms ({times[''] / times[suffix]:.2f}x eager)"
            for suffix in MODES))
        print(notes[-1], flush=True)
    return records, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--no-model", action="store_true", help="skip the stacked blocks (_model_records)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/natten_compile.py needs a CUDA GPU")
    device = torch.device("cuda")
    warm_up_gpu(device)
    cases = [c for c in natten_cases() if c.name in CASES
             and (not args.only or any(part in c.name for part in args.only))]
    records, notes = [], []
    for case in cases:
        inp = _Inputs(case, device, torch.bfloat16)
        attend = _attention(case)
        times = {}
        for direction in ("fwd", "fwd+bwd"):
            times[("eager", direction)] = _timed(attend, inp, direction, device)
            records.append(_record(case, case.name, "tessera", direction, times[("eager", direction)]))
        for suffix, mode in MODES.items():
            torch._dynamo.reset()
            compiled = torch.compile(attend, fullgraph=True, mode=mode)
            equal = _equal_to_eager(attend, compiled, inp)
            notes.append(f"{case.name}{suffix}: forward and gradients equal to eager: {equal}")
            for direction in ("fwd", "fwd+bwd"):
                times[(suffix, direction)] = _timed(compiled, inp, direction, device)
                records.append(_record(case, case.name + suffix, "tessera", direction, times[(suffix, direction)]))
        flex = _impl_fn("flex", case, case.pattern(device), inp, device)
        for direction in ("fwd", "fwd+bwd"):
            ms = median_ms(_step(flex, inp, direction), device)
            records.append(_record(case, case.name, "flex", direction, ms))
            parts = [f"{case.name} {direction}: eager {times[('eager', direction)]:.3f} ms"]
            parts += [f"{suffix.strip(' []')} {times[(suffix, direction)]:.3f} ms "
                      f"({times[('eager', direction)] / times[(suffix, direction)]:.2f}x eager, "
                      f"{ms / times[(suffix, direction)]:.2f}x flex)" for suffix in MODES]
            parts.append(f"flex {ms:.3f} ms ({ms / times[('eager', direction)]:.2f}x for eager)")
            notes.append(", ".join(parts))
        for line in notes[-2:]:
            print(line, flush=True)
        _write(args.out, device, records, notes)
    if not args.no_model:
        more_records, more_notes = _model_records(device)
        records, notes = records + more_records, notes + more_notes
    print(f"results -> {_write(args.out, device, records, notes)}")


def _write(out: str, device, records: list, notes: list) -> Path:
    path = results_path(Path(out), device, "natten-compile", datetime.date.today().isoformat())
    payload = write_results(path, device, records)
    payload["notes"] = notes
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


if __name__ == "__main__":
    main()
