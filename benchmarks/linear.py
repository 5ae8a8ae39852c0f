"""Linear-attention benchmark: tessera vs fla vs SDPA (cuDNN), forward and forward+backward, bf16.

tessera runs its Triton kernels for every op (``backend="triton"`` for the delta rules, which ``"auto"``
does not pick yet).

Usage (on a CUDA machine): python benchmarks/linear.py --out DIR [--T 4096 16384 65536] [--sweep]
Writes DIR/<yyyy-mm-dd>-<device>-linear.json ({"device","torch","triton","date","records":[...]}) and prints
a table. Inputs are the same tensors for every implementation; times are medians of
triton.testing.do_bench. Shapes: B=2, H=16, D=K=V=128. fla is optional (records are null without it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import traceback
from typing import Optional

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from tessera.bench.environment import device_name
from tessera.bench.report import results_path
from tessera.linear import ops
from tessera.linear.triton import tuning

B, H, D = 2, 16, 128


DEVICE = "cuda"


def make_inputs(op: str, T: int, device=None, dtype=torch.bfloat16):
    device = device or DEVICE
    q = torch.randn(B, T, H, D, device=device, dtype=dtype)
    k = torch.randn(B, T, H, D, device=device, dtype=dtype)
    v = torch.randn(B, T, H, D, device=device, dtype=dtype)
    extra = {}
    if op in ("delta_rule", "gated_delta_rule"):
        k = F.normalize(k.float(), dim=-1).to(dtype)
        extra["beta"] = torch.rand(B, T, H, device=device, dtype=dtype).sigmoid()
    if op in ("simple_gla", "gated_delta_rule"):
        extra["g"] = F.logsigmoid(torch.randn(B, T, H, device=device, dtype=torch.float32))
    if op == "gla":
        extra["g"] = F.logsigmoid(torch.randn(B, T, H, D, device=device, dtype=torch.float32)).to(dtype)
    return q, k, v, extra


def tessera_fn(op):
    if op == "simple_gla":
        return lambda q, k, v, e: ops.simple_gla(q, k, v, e["g"])[0]
    if op == "lightning":
        return lambda q, k, v, e: ops.lightning_attn(q, k, v, layer_idx=0, num_layers=4)[0]
    if op == "gla":
        return lambda q, k, v, e: ops.gla(q, k, v, e["g"])[0]
    if op == "delta_rule":
        return lambda q, k, v, e: ops.delta_rule(q, k, v, e["beta"], backend="triton")[0]
    if op == "gated_delta_rule":
        return lambda q, k, v, e: ops.gated_delta_rule(q, k, v, e["g"], e["beta"], backend="triton")[0]
    raise ValueError(op)


def fla_fn(op):
    try:
        if op == "simple_gla":
            from fla.ops.simple_gla import chunk_simple_gla
            return lambda q, k, v, e: chunk_simple_gla(q, k, v, e["g"])[0]
        if op == "lightning":
            from fla.ops.lightning_attn import chunk_lightning_attn
            return lambda q, k, v, e: chunk_lightning_attn(q, k, v, layer_idx=0, num_layers=4)[0]
        if op == "gla":
            from fla.ops.gla import chunk_gla
            return lambda q, k, v, e: chunk_gla(q, k, v, e["g"])[0]
        if op == "delta_rule":
            from fla.ops.delta_rule import chunk_delta_rule
            return lambda q, k, v, e: chunk_delta_rule(q, k, v, e["beta"])[0]
        if op == "gated_delta_rule":
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule
            return lambda q, k, v, e: chunk_gated_delta_rule(q, k, v, e["g"], e["beta"])[0]
    except Exception as exc:  # fla missing or broken: reported as null records
        return repr(exc)
    raise ValueError(op)


GUARD_NOTE = ("fla's guard lifted (--fla-unguarded): fla refuses gated chunk_bwd_dqkwg on Triton 3.4-3.7.1 + "
              "Hopper because its results are wrong there; this times that backward, speed only")


def lift_fla_hopper_guard() -> bool:
    """Let fla run its gated backward on Triton < 3.7.1 + Hopper (it raises there, see GUARD_NOTE)."""
    try:
        import fla.ops.common.chunk_o as chunk_o
    except Exception:
        return False
    chunk_o.TRITON_ABOVE_3_7_1 = True
    return True


def sdpa_fn():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, k, v, e):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True).transpose(1, 2)
    return run


def make_step(fn, q, k, v, extra, direction):
    """``(step, leaves)``: one timed call of ``fn`` ("fwd": without autograd; "fwd+bwd": forward and
    backward, gradients reset inside) and the inputs it made require grad (release with ``release``)."""
    if direction == "fwd":
        def forward():
            with torch.no_grad():
                fn(q, k, v, extra)
        return forward, []
    leaves = [q, k, v] + [x for x in extra.values() if x.is_floating_point()]
    for x in leaves:
        x.requires_grad_(True)
    do = torch.randn_like(v)

    def step():
        for x in leaves:
            x.grad = None
        fn(q, k, v, extra).backward(do)
    return step, leaves


def release(leaves):
    for x in leaves:
        x.requires_grad_(False)
        x.grad = None


def time_fn(fn, q, k, v, extra, direction):
    step, leaves = make_step(fn, q, k, v, extra, direction)
    step()
    ms = do_bench(step, warmup=25, rep=150, return_mode="median")
    release(leaves)
    return ms


def _cpu_timer(fn, warmup=0, rep=0, return_mode="median"):
    import time
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def record(case, impl, direction, ms, T, note=None):
    r = {"suite": "linear", "case": case, "impl": impl, "direction": direction, "ms": ms,
         "useful_tflops": None, "tokens_per_s": None if ms is None else B * T / (ms * 1e-3), "tbps": None}
    if note:
        r["note"] = note[:300]
    return r


def measure(impl, fn, op, T, direction, records, case, note=None):
    if isinstance(fn, str):
        records.append(record(case, impl, direction, None, T, f"unavailable: {fn}"))
        return
    torch.manual_seed(0)
    q, k, v, extra = make_inputs(op, T)
    try:
        ms = time_fn(fn, q, k, v, extra, direction)
        records.append(record(case, impl, direction, ms, T, note))
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        records.append(record(case, impl, direction, None, T, msg))
        traceback.print_exc()
    finally:
        del q, k, v, extra
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def sweep_simple_gla(records, T=16384):
    """Time simple GLA (fwd, fwd+bwd) with each candidate configuration of its forward kernels forced
    (tuning.OVERRIDES); benchmarks/gpu_linear_sweep.py times the kernels alone."""
    T = T if DEVICE == "cuda" else 256
    for kernel in ("simple_gla.state", "simple_gla.output"):
        for cfg in tuning.CANDIDATES[kernel]:
            row = {}
            with tuning.forced(kernel, cfg):
                for direction in ("fwd", "fwd+bwd"):
                    tmp = []
                    measure("tessera", tessera_fn("simple_gla"), "simple_gla", T, direction, tmp, "sweep")
                    row[direction] = tmp[0]["ms"]
            print("sweep", kernel, cfg, row, flush=True)
            records.append({"suite": "linear-sweep", "case": f"simple_gla/T{T}", "kernel": kernel,
                            "config": vars(cfg), **row})


def preload_choices(path: str) -> Optional[str]:
    """Preload the timed choices of the results file ``path`` if they were timed on this GPU model; returns
    its name, or None (said on stdout) for another model, whose choices this run times afresh. Kernels
    named in ``LINEAR_RETUNE`` (space-separated, e.g. ``simple_gla.state delta.state``) are timed afresh."""
    with open(path) as f:
        earlier = json.load(f)
    here = device_name(torch.device(DEVICE))
    if earlier["device"] != here:
        print(f"{path}: skipped, its choices were timed on {earlier['device']}, this is {here}", flush=True)
        return None
    retune = set(os.environ.get("LINEAR_RETUNE", "").split())
    choices = {name: cfg for name, cfg in earlier["tuned"].items() if name.split("|", 1)[0] not in retune}
    print(f"{path}: {tuning.preload(choices)} launch choices preloaded", flush=True)
    return os.path.basename(path)


def write(path, records, tuned_from=()):
    out = {"device": device_name(torch.device(DEVICE)), "torch": torch.__version__, "triton": triton.__version__,
           "date": datetime.date.today().isoformat(), "tuned": tuning.chosen(), "tuned_from": list(tuned_from),
           "records": records}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--T", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--ops", nargs="+", default=["simple_gla", "lightning", "gla", "delta_rule", "gated_delta_rule"])
    p.add_argument("--directions", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--sweep-only", action="store_true", help="only the launch-setting sweep and simple_gla at T=16384")
    p.add_argument("--dry-run", action="store_true", help="CPU, plain timer: checks the script, not the kernels")
    p.add_argument("--tuned-from", nargs="+", default=[], metavar="JSON",
                   help="take the timed launch choices (the 'tuned' block) of earlier linear results from this "
                        "GPU model instead of timing every candidate again")
    p.add_argument("--fla-unguarded", action="store_true",
                   help="time fla's gated backward where fla refuses it (wrong results on Triton < 3.7.1 + Hopper)")
    args = p.parse_args()
    unguarded = args.fla_unguarded and lift_fla_hopper_guard()
    if args.dry_run:
        global DEVICE, do_bench
        DEVICE = "cpu"
        do_bench = _cpu_timer
    tuned_from = [name for name in map(preload_choices, args.tuned_from) if name]
    os.makedirs(args.out, exist_ok=True)
    path = str(results_path(args.out, torch.device(DEVICE), "linear", datetime.date.today().isoformat()))
    records = []
    if args.sweep:
        sweep_simple_gla(records)
    if args.sweep_only:
        args.ops, args.T = ["simple_gla", "lightning"], [16384]
    # SDPA first: it compiles nothing, so a run cut by its time limit still has the crossover baseline.
    cases = [("sdpa", T) for T in args.T] + [(op, T) for op in args.ops for T in args.T]
    for op, T in cases:
        for direction in args.directions:
            start = len(records)
            if op == "sdpa":
                measure("sdpa-cudnn", sdpa_fn(), "sdpa", T, direction, records, f"sdpa_causal/B{B}-H{H}-D{D}-T{T}")
            else:
                case = f"{op}/B{B}-H{H}-D{D}-T{T}"
                measure("tessera", tessera_fn(op), op, T, direction, records, case)
                gated_bwd = direction == "fwd+bwd" and op in ("simple_gla", "gla", "gated_delta_rule")
                measure("fla", fla_fn(op), op, T, direction, records, case,
                        GUARD_NOTE if unguarded and gated_bwd else None)
            for r in records[start:]:
                print(f"{r['case']:36s} {r['impl']:10s} {r['direction']:8s} {r['ms']}", flush=True)
            write(path, records, tuned_from)
    print(f"\nwrote {path}")
    print(f"{'case':40s} {'dir':8s} {'tessera ms':>11s} {'fla ms':>9s} {'ratio':>6s} {'sdpa ms':>8s}")
    by = {(r["case"], r["impl"], r["direction"]): r["ms"] for r in records if r["suite"] == "linear"}
    for r in records:
        if r["suite"] != "linear" or r["impl"] != "tessera":
            continue
        T = r["case"].split("-T")[-1]
        f_ms = by.get((r["case"], "fla", r["direction"]))
        s_ms = by.get((f"sdpa_causal/B{B}-H{H}-D{D}-T{T}", "sdpa-cudnn", r["direction"]))
        t_ms = r["ms"]
        ratio = f"{f_ms / t_ms:.2f}" if (f_ms and t_ms) else "-"
        fmt = lambda x: f"{x:.3f}" if x else "null"
        print(f"{r['case']:40s} {r['direction']:8s} {fmt(t_ms):>11s} {fmt(f_ms):>9s} {ratio:>6s} {fmt(s_ms):>8s}")


if __name__ == "__main__":
    main()
