"""Linear-attention kernels on one GPU: tessera vs fla, per-kernel breakdowns, forward config sweep.

tessera and fla side by side, each forward kernel timed alone, and every candidate launch
configuration of tessera's forward kernels. GPU only (--dry-run checks the script on CPU).

Shapes: B=2, H=16, K=V=128, bf16; T in --T (default 4096 16384); sweeps and breakdowns at the largest T.
Times are medians of triton.testing.do_bench on the same input tensors for both libraries.

Rows, in priority order (a run cut short by --budget or a kill keeps everything measured before); --parts
picks which run (default all: compare, simple-gla-breakdown, sweep, delta-breakdown):
  1. part="compare": the first op (simple_gla), forward, impl tessera and fla, at the largest T;
  2. part="breakdown": the forward of simple_gla split into its kernels, tessera and fla;
  3. part="sweep": every candidate configuration (tuning.CANDIDATES, forced through tuning.OVERRIDES)
     of tessera's forward kernels (simple_gla / gla / delta state passes and output kernels), each kernel
     timed alone;
  4. part="compare": the other ops' forward at the largest T, then fwd+bwd of every op, then both
     directions at the other T (each followed by an impl="ratio" row: fla ms / tessera ms);
  5. part="breakdown" of the simple_gla backward (tessera);
  6. part="breakdown", op="delta_rule" (ungated, --parts delta-breakdown): each kernel timed alone, in
     this order, every block after a stage="setup" row; "group" names what tessera and fla rows compare:
     a. fwd, tessera: delta.prepare (group prepare: T = (I + M)^-1, W and U in one kernel), delta.state
        (state), delta.output (output), delta_rule_forward (total);
     b. fwd, fla: chunk_scaled_dot_kkt_fwd, solve_tril, recompute_w_u_fwd (group prepare: their sum is
        tessera's delta.prepare), prepare_wy_repr_fwd (prepare-call: the three as one call),
        chunk_gated_delta_rule_fwd_h (state), chunk_fwd_o (output), chunk_delta_rule_fwd (total);
     c. bwd, tessera, on the saved tensors of one forward: delta.attn_dv (attn_dv: A^T do),
        delta.state_grad (state_grad: dh and du), delta.dqk (dqk: dq, partial dk, dW), delta.wy_grad
        (wy_grad), delta_rule_backward (total);
     d. bwd, fla, on the A of one forward: recompute_w_u_fwd and chunk_gated_delta_rule_fwd_h (recompute:
        fla recomputes W, U, the states and the new values that tessera saves), chunk_bwd_dv_local
        (attn_dv), chunk_gated_delta_rule_bwd_dhu (state_grad), chunk_bwd_dqkwg (dqk),
        prepare_wy_repr_bwd and dk.add_(dk2) (wy_grad), chunk_delta_rule_bwd (total).
     A stage whose input comes from a failed earlier stage gets a row with that reason.
The first tessera call per kernel times its candidates (tuning.py) and the first fla call runs fla's
autotuning; both are compile-heavy, so compare rows warm up once before timing (breakdown rows: do_bench's
first call).
fla 0.6 refuses the gated backward (chunk_bwd_dqkwg) on Triton 3.4-3.7.0 + Hopper (its issue #640);
that refusal is recorded, then the backward is timed with the check bypassed (impl "fla-unchecked":
speed only, its gradients may be wrong). The delta-rule breakdown is ungated, so it is not affected.

Usage (GPU machine; fla from the carried wheels):
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/gpu_linear_sweep.py --out $OUT
  # the delta-rule breakdowns alone (about 200 s):
  PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/gpu_linear_sweep.py --out $OUT \
      --parts delta-breakdown --ops delta_rule --T 16384 --no-sweep --budget 190
Writes OUT/gpu_linear_sweep.json ({"device", "torch", "triton", "fla", "date", "tuned", "rows"}) after
every row and prints one line per row, then summaries (compare; the delta-rule breakdown summed by group).
--check: parse arguments, import, exit (works without a GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import time
import traceback

import torch
import torch.nn.functional as F

B, H, D = 2, 16, 128
CASE_TIMEOUT_S = 150
DEVICE = "cuda"
PARTS = {"compare": "tessera vs fla, whole op, every op and T",
         "simple-gla-breakdown": "simple_gla forward (tessera, fla) and backward (tessera) per kernel",
         "sweep": "every launch configuration of tessera's forward kernels",
         "delta-breakdown": "delta_rule forward and backward per kernel, tessera and fla"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory for gpu_linear_sweep.json")
    p.add_argument("--T", type=int, nargs="+", default=[4096, 16384], help="sequence lengths")
    p.add_argument("--ops", nargs="+", default=["simple_gla", "gla", "delta_rule"],
                   choices=["simple_gla", "gla", "delta_rule"])
    p.add_argument("--budget", type=float, default=255.0,
                   help="seconds; rows not started by then are recorded as skipped, a row running then is cut"
                        " 15 s later")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS),
                   help="parts to run (default: all): " + "; ".join(f"{k}: {v}" for k, v in PARTS.items()))
    p.add_argument("--no-sweep", action="store_true", help="skip the launch-configuration sweep (same as leaving"
                   " 'sweep' out of --parts)")
    p.add_argument("--no-fla", action="store_true", help="tessera rows only")
    p.add_argument("--sweep-kernels", nargs="+", default=None, metavar="KERNEL",
                   help="sweep only these tuning names (default: every forward kernel with candidates)")
    p.add_argument("--sweep-space", choices=["candidates", "fla"], default="candidates",
                   help="configurations swept: tessera's candidates, or (state passes with a key block) fla"
                        " 0.6's whole chunk_fwd_h space: block_k, block_v in {32, 64}, 1-8 warps, 2-4 stages")
    p.add_argument("--tuned-from", nargs="+", default=[], metavar="JSON",
                   help="linear results files from this GPU model whose timed launch choices to reuse"
                        " (benchmarks/linear.py --tuned-from)")
    p.add_argument("--check", action="store_true", help="parse arguments, import, exit")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, Triton interpreter, tiny shapes, one call per timing: checks the script, not speed")
    return p.parse_args(argv)


class Report:
    """Rows plus run metadata, rewritten to ``path`` after every row."""

    def __init__(self, path: str, meta: dict):
        self.path = path
        self.meta = meta
        self.rows: list[dict] = []
        self.t0 = time.time()

    def add(self, row: dict):
        row["elapsed_s"] = round(time.time() - self.t0, 1)
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.write()

    def write(self):
        from tessera.linear.triton import tuning
        out = dict(self.meta, tuned=tuning.chosen(), rows=self.rows)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, self.path)


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout("case over its time limit (per-case limit or the budget)")


def guarded(report: Report, budget: float, base: dict, fn):
    """Run ``fn() -> dict`` (the measured fields) under a per-case alarm and the global budget; add one
    row ``base | result`` (or ``base | {"ms": None, "note": why}``)."""
    left = budget - (time.time() - report.t0)
    if left <= 0:
        report.add(dict(base, ms=None, note="skipped: time budget"))
        return None
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(max(10, min(CASE_TIMEOUT_S, left + 15))))
    try:
        result = fn()
        report.add(dict(base, **result))
        return result
    except Exception as exc:  # every failure becomes a row
        traceback.print_exc()
        report.add(dict(base, ms=None, note=f"{type(exc).__name__}: {str(exc)[:400]}"))
        return None
    finally:
        signal.alarm(0)
        try:
            if DEVICE == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        except Exception:  # a sticky CUDA error: later rows record it
            traceback.print_exc()


def bench(fn) -> float:
    """Median ms of ``fn()`` (GPU); one timed call under --dry-run."""
    if DEVICE != "cuda":
        fn()
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    from triton.testing import do_bench
    return do_bench(fn, warmup=10, rep=60, return_mode="median")


def make_inputs(op: str, T: int) -> dict:
    """Inputs ``[B, T, H, D]`` bf16 (gates float32 log-decays, beta in (0, 1), delta-rule keys L2-normalised)."""
    torch.manual_seed(0)
    dev, dt = DEVICE, (torch.bfloat16 if DEVICE == "cuda" else torch.float32)
    x = {n: torch.randn(B, T, H, D, device=dev, dtype=dt) for n in ("q", "k", "v")}
    if op == "simple_gla":
        x["g"] = F.logsigmoid(torch.randn(B, T, H, device=dev))
    elif op == "gla":
        x["g"] = F.logsigmoid(torch.randn(B, T, H, D, device=dev)).to(dt)
    else:
        x["k"] = F.normalize(x["k"].float(), dim=-1).to(dt)
        x["beta"] = torch.rand(B, T, H, device=dev, dtype=dt).sigmoid()
    return x


def tessera_call(op: str):
    from tessera.linear import ops
    if op == "simple_gla":
        return lambda x: ops.simple_gla(x["q"], x["k"], x["v"], x["g"], backend="triton")[0]
    if op == "gla":
        return lambda x: ops.gla(x["q"], x["k"], x["v"], x["g"], backend="triton")[0]
    return lambda x: ops.delta_rule(x["q"], x["k"], x["v"], x["beta"], backend="triton")[0]


def fla_call(op: str):
    if op == "simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla
        return lambda x: chunk_simple_gla(x["q"], x["k"], x["v"], x["g"])[0]
    if op == "gla":
        from fla.ops.gla import chunk_gla
        return lambda x: chunk_gla(x["q"], x["k"], x["v"], x["g"])[0]
    from fla.ops.delta_rule import chunk_delta_rule
    return lambda x: chunk_delta_rule(x["q"], x["k"], x["v"], x["beta"])[0]


def time_direction(call, x: dict, direction: str) -> float:
    """Median ms of the forward (no autograd) or of forward + backward of ``call(x)``."""
    if direction == "fwd":
        with torch.no_grad():
            call(x)
            return bench(lambda: call(x))
    leaves = [t for t in x.values() if t.is_floating_point()]
    for t in leaves:
        t.requires_grad_(True)
    do = torch.randn_like(x["v"])

    def step():
        for t in leaves:
            t.grad = None
        call(x).backward(do)
    try:
        step()
        return bench(step)
    finally:
        for t in leaves:
            t.requires_grad_(False)
            t.grad = None


def run_unchecked(fn):
    """``fn()`` with fla's Hopper + Triton 3.4-3.7.0 refusal of the gated chunk_bwd_dqkwg (issue #640)
    lifted; the check is restored afterwards, so later fla rows are checked again."""
    import fla.ops.common.chunk_o as chunk_o
    saved = chunk_o.TRITON_ABOVE_3_7_1
    chunk_o.TRITON_ABOVE_3_7_1 = True
    try:
        return fn()
    finally:
        chunk_o.TRITON_ABOVE_3_7_1 = saved


def compare(report, budget, op: str, T: int, direction: str, with_fla: bool = True):
    """One tessera row and one fla row (or a refusal row and an fla-unchecked row), then their ratio."""
    base = {"part": "compare", "op": op, "T": T, "direction": direction}
    x = make_inputs(op, T)
    tokens = B * T

    def measure(call):
        ms = time_direction(call, x, direction)
        return {"ms": ms, "tokens_per_s": tokens / (ms * 1e-3)}
    mine = guarded(report, budget, dict(base, impl="tessera"), lambda: measure(tessera_call(op)))
    if not with_fla:
        return
    theirs = guarded(report, budget, dict(base, impl="fla"), lambda: measure(fla_call(op)))
    refused = theirs is None and "#640" in (report.rows[-1].get("note") or "")
    if refused:
        theirs = guarded(report, budget, dict(base, impl="fla-unchecked"),
                         lambda: run_unchecked(lambda: measure(fla_call(op))))
    if mine and theirs:
        report.add(dict(base, impl="ratio", tessera_over_fla_speed=theirs["ms"] / mine["ms"]))


def packed_inputs(op: str, T: int):
    """Packed ``[B*T, H, D]`` views, float32 gate and the chunk bookkeeping of tessera's kernels."""
    from tessera.linear.triton import simple_gla as sg
    x = make_inputs(op, T)
    flat = {n: t.reshape(B * T, H, -1) for n, t in x.items() if t.dim() == 4}
    if "g" in x:
        flat["g"] = x["g"].float().reshape(B * T, H, -1).squeeze(-1).contiguous()
    if "beta" in x:
        flat["beta"] = x["beta"].float().reshape(B * T, H).contiguous()
    return x, flat, sg.packed_chunks(B, T, sg.CHUNK, torch.device(DEVICE))


def forward_stages(op: str, flat: dict, packed) -> dict:
    """Stage name -> zero-argument launcher of one kernel of tessera's forward (inputs precomputed)."""
    from tessera.linear.triton import delta_rule as dr
    from tessera.linear.triton import gla
    from tessera.linear.triton import simple_gla as sg
    q, k, v = flat["q"], flat["k"], flat["v"]
    scale = D ** -0.5
    if op == "simple_gla":
        gc = sg.chunk_local_cumsum(flat["g"], packed)
        h, _ = sg.chunk_states(k, v, gc, None, False, packed)
        return {"cumsum": lambda: sg.chunk_local_cumsum(flat["g"], packed),
                "simple_gla.state": lambda: sg.chunk_states(k, v, gc, None, False, packed),
                "simple_gla.output": lambda: sg.chunk_output(q, k, v, gc, h, scale, packed)}
    if op == "gla":
        gc = gla.gla_local_cumsum(flat["g"], packed)
        h, _ = gla.gla_states(k, v, gc, None, False, packed)
        return {"cumsum": lambda: gla.gla_local_cumsum(flat["g"], packed),
                "gla.state": lambda: gla.gla_states(k, v, gc, None, False, packed),
                "gla.output": lambda: gla.gla_output(q, k, v, gc, h, scale, packed)}
    _, w, u0 = dr.delta_prepare(k, v, flat["beta"], None, packed)
    h, u, _ = dr.delta_states(k, w, u0, None, None, False, packed)
    return {"delta.prepare": lambda: dr.delta_prepare(k, v, flat["beta"], None, packed),
            "delta.state": lambda: dr.delta_states(k, w, u0, None, None, False, packed),
            "delta.output": lambda: sg.chunk_output(q, k, u, None, h, scale, packed, kernel="delta.output")}


def fla_simple_gla_stages(x: dict) -> dict:
    """fla 0.6's simple_gla forward kernels: chunk_local_cumsum, chunk_fwd_h, chunk_fwd_o."""
    from fla.ops.common.chunk_h import chunk_fwd_h
    from fla.ops.common.chunk_o import chunk_fwd_o
    from fla.ops.utils import chunk_local_cumsum
    from fla.ops.utils.constant import RCP_LN2
    q, k, v, g = x["q"], x["k"], x["v"], x["g"]
    gc = chunk_local_cumsum(g, chunk_size=64, scale=RCP_LN2)
    h, _ = chunk_fwd_h(k=k, v=v, g=gc, g_gamma=None, gk=None, gv=None, h0=None, output_final_state=False,
                       chunk_size=64, states_in_fp32=False)
    return {"cumsum": lambda: chunk_local_cumsum(g, chunk_size=64, scale=RCP_LN2),
            "chunk_fwd_h": lambda: chunk_fwd_h(k=k, v=v, g=gc, g_gamma=None, gk=None, gv=None, h0=None,
                                               output_final_state=False, chunk_size=64, states_in_fp32=False),
            "chunk_fwd_o": lambda: chunk_fwd_o(q=q, k=k, v=v, g=gc, g_gamma=None, h=h, scale=D ** -0.5,
                                               chunk_size=64)}


def breakdown_forward(report, budget, T: int, with_fla: bool = True):
    """Each forward kernel of simple_gla timed alone, tessera (tuned choice) and fla."""
    base = {"part": "breakdown", "op": "simple_gla", "T": T, "direction": "fwd"}
    holder = {}

    def prepare():
        holder["x"], flat, packed = packed_inputs("simple_gla", T)
        holder["stages"] = forward_stages("simple_gla", flat, packed)
        return {"ms": None, "note": "inputs ready"}
    if guarded(report, budget, dict(base, impl="tessera", stage="setup"), prepare) is None:
        return
    with torch.no_grad():
        for stage, fn in holder["stages"].items():
            guarded(report, budget, dict(base, impl="tessera", stage=stage), lambda fn=fn: {"ms": bench(fn)})
        if not with_fla:
            return
        fla_stages = {}

        def prepare_fla():
            fla_stages.update(fla_simple_gla_stages(holder["x"]))
            return {"ms": None, "note": "inputs ready"}
        if guarded(report, budget, dict(base, impl="fla", stage="setup"), prepare_fla) is not None:
            for stage, fn in fla_stages.items():
                guarded(report, budget, dict(base, impl="fla", stage=stage), lambda fn=fn: {"ms": bench(fn)})
            guarded(report, budget, dict(base, impl="fla", stage="chosen-configs"), fla_chosen_configs)


def fla_chosen_configs() -> dict:
    """The configurations fla's autotuning picked for its simple_gla forward kernels (a row's note)."""
    from fla.ops.common import chunk_h, chunk_o
    picked = {}
    for name, kernel in (("chunk_fwd_h", chunk_h.chunk_fwd_kernel_h), ("chunk_fwd_o", chunk_o.chunk_fwd_kernel_o)):
        while kernel is not None and not hasattr(kernel, "best_config"):
            kernel = getattr(kernel, "fn", None)
        best = getattr(kernel, "best_config", None)
        picked[name] = None if best is None else {"kwargs": dict(best.kwargs), "num_warps": best.num_warps,
                                                  "num_stages": best.num_stages}
    return {"ms": None, "note": json.dumps(picked)}


def fla_state_space() -> list:
    """fla 0.6's autotuning space of ``chunk_fwd_kernel_h`` as tessera launch configurations."""
    from tessera.linear.triton.tuning import LaunchConfig
    return [LaunchConfig(bk, bv, warps, stages) for bk in (32, 64) for bv in (32, 64) for warps in (1, 2, 4, 8)
            for stages in (2, 3, 4)]


def sweep_forward(report, budget, op: str, T: int, kernels=None, space: str = "candidates"):
    """Every candidate configuration (``space="fla"``: fla's state-pass space for state passes with a key
    block) of ``op``'s forward state and output kernels (or of ``kernels``), each kernel timed alone."""
    from tessera.linear.triton import tuning
    holder = {}

    def prepare():
        _, flat, packed = packed_inputs(op, T)
        holder["stages"] = forward_stages(op, flat, packed)
        return {"ms": None, "note": "inputs ready"}
    base = {"part": "sweep", "op": op, "T": T}
    if guarded(report, budget, dict(base, kernel="setup"), prepare) is None:
        return
    with torch.no_grad():
        for kernel, fn in holder["stages"].items():
            if kernel not in tuning.CANDIDATES or len(tuning.CANDIDATES[kernel]) == 1:
                continue
            if kernels is not None and kernel not in kernels:
                continue
            configs = tuning.CANDIDATES[kernel]
            if space == "fla" and kernel.endswith(".state") and configs[0].block_k:
                configs = fla_state_space()
            for cfg in configs:
                def measure(kernel=kernel, cfg=cfg, fn=fn):
                    with tuning.forced(kernel, cfg):
                        return {"ms": bench(fn)}
                guarded(report, budget, dict(base, kernel=kernel, config=vars(cfg)), measure)


def breakdown_backward(report, budget, T: int):
    """Each backward kernel of simple_gla (tessera, tuned choices) timed alone."""
    from tessera.linear.triton import simple_gla as sg
    base = {"part": "breakdown", "op": "simple_gla", "T": T, "direction": "bwd", "impl": "tessera"}
    holder = {}

    def prepare():
        _, flat, packed = packed_inputs("simple_gla", T)
        q, k, v, g = flat["q"], flat["k"], flat["v"], flat["g"]
        _, h, _, gc = sg.simple_gla_forward(q, k, v, g, D ** -0.5, None, False, packed)
        do = torch.randn_like(v)
        in_pass = not sg.STATE_DOT_IN_DQK
        dh, _, hdh = sg.chunk_state_grads(q, do, gc, h, None, D ** -0.5, False, packed, state_dot=in_pass)
        holder["stages"] = {
            "simple_gla.state_grad": lambda: sg.chunk_state_grads(q, do, gc, h, None, D ** -0.5, False, packed,
                                                                  state_dot=in_pass),
            "simple_gla.dv": lambda: sg.chunk_dv(q, k, gc, do, dh, D ** -0.5, packed),
            "simple_gla.dqk": lambda: sg.chunk_dqk(q, k, v, gc, h, do, dh, hdh, D ** -0.5, packed)}
        return {"ms": None, "note": "inputs ready"}
    if guarded(report, budget, dict(base, stage="setup"), prepare) is None:
        return
    for stage, fn in holder["stages"].items():
        guarded(report, budget, dict(base, stage=stage), lambda fn=fn: {"ms": bench(fn)})


class Saved(dict):
    """Outputs of earlier stages, by name; a missing one (its stage failed) raises a readable error."""

    def __missing__(self, name):
        raise RuntimeError(f"needs {name!r} from an earlier stage that failed or did not run")


def time_stages(report, budget, base: dict, stages: list):
    """One row per ``(stage, group, step, reset)``, in order: median ms of ``step()`` alone. ``step`` stores
    what later stages read in a shared ``Saved``; ``reset`` (or None) restores an input that ``step``
    changes in place, is timed alone, and its time is subtracted (``ms_gross``, ``reset_ms``)."""
    for stage, group, step, reset in stages:
        def measure(step=step, reset=reset):
            if reset is None:
                return {"ms": bench(step)}

            def gross():
                reset()
                step()
            gross_ms, reset_ms = bench(gross), bench(reset)
            return {"ms": gross_ms - reset_ms, "ms_gross": gross_ms, "reset_ms": reset_ms}
        guarded(report, budget, dict(base, stage=stage, group=group), measure)


def tessera_delta_forward_stages(flat: dict, packed) -> list:
    """tessera's delta-rule forward (ungated): ``delta.prepare`` (T = (I + M)^-1, W, U in one kernel),
    ``delta.state``, ``delta.output``, each alone on precomputed inputs, then the whole
    ``delta_rule_forward``."""
    from tessera.linear.triton import delta_rule as dr
    launch = forward_stages("delta_rule", flat, packed)
    q, k, v, beta = flat["q"], flat["k"], flat["v"], flat["beta"]
    return [("delta.prepare", "prepare", launch["delta.prepare"], None),
            ("delta.state", "state", launch["delta.state"], None),
            ("delta.output", "output", launch["delta.output"], None),
            ("delta_rule_forward", "total",
             lambda: dr.delta_rule_forward(q, k, v, beta, None, D ** -0.5, None, False, packed), None)]


def fla_delta_forward_stages(x: dict) -> list:
    """fla 0.6's chunk_delta_rule forward: chunk_scaled_dot_kkt_fwd (beta K K^T), solve_tril ((I + A)^-1),
    recompute_w_u_fwd (W, U): together group "prepare", like tessera's delta.prepare; then the three as
    one prepare_wy_repr_fwd call (group "prepare-call"), chunk_gated_delta_rule_fwd_h (states and new
    values), chunk_fwd_o, and the whole chunk_delta_rule_fwd."""
    from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_fwd_h
    from fla.ops.common.chunk_o import chunk_fwd_o
    from fla.ops.common.chunk_scaled_dot_kkt import chunk_scaled_dot_kkt_fwd
    from fla.ops.delta_rule.chunk import chunk_delta_rule_fwd
    from fla.ops.delta_rule.wy_fast import prepare_wy_repr_fwd, recompute_w_u_fwd
    from fla.ops.utils.solve_tril import solve_tril
    q, k, v, beta = x["q"], x["k"], x["v"], x["beta"]
    scale, s = D ** -0.5, Saved()

    def kkt():
        s["A_kkt"] = chunk_scaled_dot_kkt_fwd(k=k, beta=beta, cu_seqlens=None, chunk_size=64,
                                              output_dtype=torch.float32)

    def tril():
        s["A"] = solve_tril(A=s["A_kkt"], cu_seqlens=None, output_dtype=k.dtype)

    def w_u():
        s["w"], s["u"] = recompute_w_u_fwd(k=k, v=v, beta=beta, A=s["A"], cu_seqlens=None)

    def state():
        s["h"], s["v_new"], _ = chunk_gated_delta_rule_fwd_h(k=k, w=s["w"], u=s["u"], g=None, initial_state=None,
                                                             output_final_state=False, cu_seqlens=None,
                                                             chunk_size=64)
    return [("chunk_scaled_dot_kkt_fwd", "prepare", kkt, None),
            ("solve_tril", "prepare", tril, None),
            ("recompute_w_u_fwd", "prepare", w_u, None),
            ("prepare_wy_repr_fwd", "prepare-call",
             lambda: prepare_wy_repr_fwd(k=k, v=v, beta=beta, cu_seqlens=None, chunk_size=64), None),
            ("chunk_gated_delta_rule_fwd_h", "state", state, None),
            ("chunk_fwd_o", "output",
             lambda: chunk_fwd_o(q=q, k=k, v=s["v_new"], h=s["h"], g=None, scale=scale, cu_seqlens=None,
                                 chunk_size=64), None),
            ("chunk_delta_rule_fwd", "total",
             lambda: chunk_delta_rule_fwd(q=q, k=k, v=v, beta=beta, scale=scale, initial_state=None,
                                          output_final_state=False, cu_seqlens=None), None)]


def tessera_delta_backward_stages(flat: dict, packed) -> list:
    """tessera's delta-rule backward (ungated) on the saved tensors of one ``delta_rule_forward``: the
    functions ``delta_rule_backward`` calls, each alone (``delta.attn_dv``: ``du_attn = A^T do``;
    ``delta.state_grad``: ``dh`` and ``du``; ``delta.dqk``: ``dq``, partial ``dk``, ``dW``; ``delta.wy_grad``),
    then the whole ``delta_rule_backward``."""
    from tessera.linear.triton import delta_rule as dr
    q, k, v, beta = flat["q"], flat["k"], flat["v"], flat["beta"]
    scale = D ** -0.5
    _, _, saved = dr.delta_rule_forward(q, k, v, beta, None, scale, None, False, packed)
    Tinv, w, u, h, _ = saved
    do = torch.randn_like(v)
    s = Saved()

    def attn_dv():
        s["du_attn"] = dr.chunk_dv(q, k, None, do, None, scale, packed, kernel="delta.attn_dv")

    def state_grad():
        s["dh"], _, s["hdh"], s["du"] = dr.delta_state_grads(q, k, w, None, do, h, s["du_attn"], None, scale, False,
                                                             packed)

    def dqk():
        s["dq"], s["dk_partial"], s["dw"], s["dg_partial"] = dr.delta_dqk(q, k, u, None, h, do, s["du"], s["dh"],
                                                                          s["hdh"], scale, packed)
    return [("delta.attn_dv", "attn_dv", attn_dv, None),
            ("delta.state_grad", "state_grad", state_grad, None),
            ("delta.dqk", "dqk", dqk, None),
            ("delta.wy_grad", "wy_grad",
             lambda: dr.delta_wy_grads(k, v, beta, None, Tinv, s["du"], s["dw"], s["dk_partial"], s["dg_partial"],
                                       packed), None),
            ("delta_rule_backward", "total",
             lambda: dr.delta_rule_backward(q, k, v, beta, saved, do, None, scale, False, packed), None)]


def fla_delta_backward_stages(x: dict) -> list:
    """fla 0.6's chunk_delta_rule backward on the ``A`` of one forward: recompute_w_u_fwd and
    chunk_gated_delta_rule_fwd_h (group "recompute": fla recomputes W, U, the states and the new values,
    tessera saves them), chunk_bwd_dv_local, chunk_gated_delta_rule_bwd_dhu, chunk_bwd_dqkwg,
    prepare_wy_repr_bwd and its ``dk += dk2``, each alone, then the whole chunk_delta_rule_bwd."""
    from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_bwd_dhu, chunk_gated_delta_rule_fwd_h
    from fla.ops.common.chunk_o import chunk_bwd_dqkwg, chunk_bwd_dv_local
    from fla.ops.delta_rule.chunk import chunk_delta_rule_bwd
    from fla.ops.delta_rule.wy_fast import prepare_wy_repr_bwd, prepare_wy_repr_fwd, recompute_w_u_fwd
    q, k, v, beta = x["q"], x["k"], x["v"], x["beta"]
    scale = D ** -0.5
    _, _, A = prepare_wy_repr_fwd(k=k, v=v, beta=beta, cu_seqlens=None, chunk_size=64)
    do = torch.randn_like(v)
    s = Saved()

    def w_u():
        s["w"], s["u"] = recompute_w_u_fwd(k=k, v=v, beta=beta, A=A, cu_seqlens=None)

    def states():
        s["h"], s["v_new"], _ = chunk_gated_delta_rule_fwd_h(k=k, w=s["w"], u=s["u"], g=None, initial_state=None,
                                                             output_final_state=False, cu_seqlens=None,
                                                             chunk_size=64)

    def dv_local():
        s["dv"] = chunk_bwd_dv_local(q=q, k=k, do=do, g=None, scale=scale, cu_seqlens=None, chunk_size=64)

    def dhu():
        s["dh"], _, s["dv2"] = chunk_gated_delta_rule_bwd_dhu(q=q, k=k, w=s["w"], g=None, h0=None, dht=None, do=do,
                                                              dv=s["dv"], scale=scale, cu_seqlens=None,
                                                              chunk_size=64)

    def dqkwg():
        s["dq"], s["dk"], s["dw"], _ = chunk_bwd_dqkwg(q=q, k=k, v=s["v_new"], h=s["h"], w=s["w"], dv=s["dv2"],
                                                       do=do, dh=s["dh"], g=None, scale=scale, cu_seqlens=None,
                                                       chunk_size=64)

    def wy_bwd():
        s["dk2"], _, _ = prepare_wy_repr_bwd(k=k, v=v, beta=beta, A=A, dw=s["dw"], du=s["dv2"], cu_seqlens=None)
    return [("recompute_w_u_fwd", "recompute", w_u, None),
            ("chunk_gated_delta_rule_fwd_h", "recompute", states, None),
            ("chunk_bwd_dv_local", "attn_dv", dv_local, None),
            ("chunk_gated_delta_rule_bwd_dhu", "state_grad", dhu, None),
            ("chunk_bwd_dqkwg", "dqk", dqkwg, None),
            ("prepare_wy_repr_bwd", "wy_grad", wy_bwd, None),
            ("dk.add_(dk2)", "wy_grad", lambda: s["dk"].add_(s["dk2"]), None),
            ("chunk_delta_rule_bwd", "total",
             lambda: chunk_delta_rule_bwd(q=q, k=k, v=v, beta=beta, A=A, scale=scale, initial_state=None, do=do,
                                          dht=None, cu_seqlens=None), None)]


def breakdown_delta(report, budget, T: int, with_fla: bool = True):
    """The delta rule (ungated) split into its kernels, each timed alone: tessera forward, fla forward,
    tessera backward, fla backward (each preceded by a ``stage="setup"`` row)."""
    holder = {}

    def inputs():
        holder["x"], holder["flat"], holder["packed"] = packed_inputs("delta_rule", T)
    plan = [("fwd", "tessera", lambda: tessera_delta_forward_stages(holder["flat"], holder["packed"])),
            ("fwd", "fla", lambda: fla_delta_forward_stages(holder["x"])),
            ("bwd", "tessera", lambda: tessera_delta_backward_stages(holder["flat"], holder["packed"])),
            ("bwd", "fla", lambda: fla_delta_backward_stages(holder["x"]))]
    for direction, impl, make in plan:
        if impl == "fla" and not with_fla:
            continue
        base = {"part": "breakdown", "op": "delta_rule", "T": T, "direction": direction, "impl": impl}
        stages = []

        def prepare(make=make):
            if "x" not in holder:
                inputs()
            with torch.no_grad():
                stages.extend(make())
            return {"ms": None, "note": "inputs ready"}
        if guarded(report, budget, dict(base, stage="setup"), prepare) is not None:
            with torch.no_grad():
                time_stages(report, budget, base, stages)


def print_breakdown_summary(rows: list):
    """The delta-rule breakdown by group: tessera ms and fla ms per (direction, group), summed over the
    group's stages; groups in first-seen order."""
    by = {}
    for r in rows:
        if r["part"] == "breakdown" and r["op"] == "delta_rule" and r.get("group") and r.get("ms") is not None:
            cell = by.setdefault((r["T"], r["direction"], r["group"]), {})
            cell[r["impl"]] = cell.get(r["impl"], 0.0) + r["ms"]
    if not by:
        return
    print(f"delta_rule breakdown\n{'T':>6s} {'dir':4s} {'group':13s} {'tessera':>9s} {'fla':>9s}")
    fmt = lambda x: f"{x:.3f}" if x is not None else "-"
    for (T, direction, group), ms in by.items():
        print(f"{T:6d} {direction:4s} {group:13s} {fmt(ms.get('tessera')):>9s} {fmt(ms.get('fla')):>9s}")


def print_summary(rows: list):
    """One line per (op, T, direction): tessera ms, fla ms, fla / tessera (``*``: fla-unchecked)."""
    by = {}
    for r in rows:
        if r["part"] == "compare" and r.get("ms"):
            by.setdefault((r["op"], r["T"], r["direction"]), {})[r["impl"]] = r["ms"]
    print(f"{'op':12s} {'T':>6s} {'dir':8s} {'tessera':>9s} {'fla':>9s} {'fla/tes':>8s}")
    for (op, T, direction), ms in by.items():
        fla_ms, tag = ms.get("fla"), ""
        if not fla_ms and ms.get("fla-unchecked"):
            fla_ms, tag = ms["fla-unchecked"], "*"
        ratio = f"{fla_ms / ms['tessera']:.2f}{tag}" if fla_ms and ms.get("tessera") else "-"
        fmt = lambda x: f"{x:.3f}" if x else "-"
        print(f"{op:12s} {T:6d} {direction:8s} {fmt(ms.get('tessera')):>9s} {fmt(fla_ms):>9s} {ratio:>8s}")


def metadata() -> dict:
    import triton
    try:
        import fla
        fla_version = getattr(fla, "__version__", "unknown")
    except Exception as exc:
        fla_version = f"unavailable: {type(exc).__name__}: {exc}"
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (dry run)"
    return {"device": device, "torch": torch.__version__, "triton": triton.__version__,
            "fla": fla_version, "date": datetime.date.today().isoformat(), "shape": {"B": B, "H": H, "D": D},
            "dtype": "bfloat16"}


def dry_run_setup(args):
    """CPU under the Triton interpreter with tiny shapes (set before triton is imported)."""
    global DEVICE, B, H, D
    os.environ["TRITON_INTERPRET"] = "1"
    DEVICE, B, H, D = "cpu", 1, 2, 32
    args.T = [64, 130]


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        dry_run_setup(args)
    from tessera.linear.triton import tuning  # noqa: F401  (import check)
    if args.check:
        print("ok: arguments parsed, tessera.linear.triton imported", vars(args))
        return 0
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU (or --dry-run)", file=sys.stderr)
        return 1
    if args.tuned_from:
        import linear
        linear.DEVICE = DEVICE
        for path in args.tuned_from:
            linear.preload_choices(path)
    os.makedirs(args.out, exist_ok=True)
    report = Report(os.path.join(args.out, "gpu_linear_sweep.json"), metadata())
    big, others = max(args.T), sorted(set(args.T) - {max(args.T)})
    fla = not args.no_fla
    parts = set(args.parts) - ({"sweep"} if args.no_sweep else set())
    first, rest = args.ops[0], args.ops[1:]
    if "compare" in parts:
        compare(report, args.budget, first, big, "fwd", fla)
    if "simple-gla-breakdown" in parts and "simple_gla" in args.ops:
        breakdown_forward(report, args.budget, big, fla)
    if "sweep" in parts:
        for op in args.ops:
            sweep_forward(report, args.budget, op, big, args.sweep_kernels, args.sweep_space)
    if "compare" in parts:
        for op in rest:
            compare(report, args.budget, op, big, "fwd", fla)
        for op in args.ops:
            compare(report, args.budget, op, big, "fwd+bwd", fla)
        for T in others:
            for op in args.ops:
                for direction in ("fwd", "fwd+bwd"):
                    compare(report, args.budget, op, T, direction, fla)
    if "simple-gla-breakdown" in parts and "simple_gla" in args.ops:
        breakdown_backward(report, args.budget, big)
    if "delta-breakdown" in parts and "delta_rule" in args.ops:
        breakdown_delta(report, args.budget, big, fla)
    report.write()
    print_summary(report.rows)
    print_breakdown_summary(report.rows)
    print(f"wrote {report.path} in {time.time() - report.t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
