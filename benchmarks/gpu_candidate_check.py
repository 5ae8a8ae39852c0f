"""Every launch candidate of the linear kernels (``tuning.CANDIDATES``) on head dims other than the
benchmarks' 128 x 128, on a CUDA GPU: does it compile, run without a fault, and match float64?

A timed choice launches every usable candidate (``tuning.usable``) of a kernel for each new (heads, K, V,
dtype, gate) key, so one candidate that faults on some head dims (an illegal memory access poisons the
CUDA context) breaks every later call of the process. Each case forces one candidate (``tuning.OVERRIDES``) for one op
call, forward and backward, bf16 (``--dtype``), B = 2, T = 300, H = 2, against the op's float64 torch
form.

Cases run in worker processes; a worker that faults is replaced and the case it was running is
recorded as ``fault``. Output: ``<out>/<date>-<device>-linear-candidates.json`` with one record per
case: kernel, config, K, V, gated, status (``ok``, ``wrong``, ``no-compile``, ``fault``), the largest
relative error against float64, and the error text.

    python benchmarks/gpu_candidate_check.py --out DIR [--workers 8] [--kernels simple_gla.dqk ...]
                                             [--shapes 32x65 128x65 ...] [--budget S]
                                             [--dtype float16] [--no-delta-padding]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time

DEFAULT_SHAPES = ("32x65", "128x65", "32x64", "64x129")
TOLERANCE = {"bfloat16": 2e-2, "float16": 2e-2, "float32": 1e-4}
UNPADDED_ENV = "TESSERA_CHECK_DELTA_UNPADDED"
ORDER = ("simple_gla", "gla", "delta")  # BASED and linear_attention run simple GLA's kernels: checked first


def cases(kernels, shapes, dtype="bfloat16"):
    """One case per usable candidate of each kernel (all, or those named) and ``KxV`` shape. GLA and the
    delta rules run gated; simple GLA runs gated at odd V and ungated at even V, so both of its kernel
    variants are checked; BASED's branch, ungated at odd V, is covered by its tuned GPU test in tests/nn."""
    from tessera.linear.triton import tuning
    out = []
    for kernel, candidates in sorted(tuning.CANDIDATES.items(), key=lambda kc: ORDER.index(kc[0].split(".")[0])):
        if kernels and kernel not in kernels:
            continue
        for cfg in candidates:
            for shape in shapes:
                K, V = map(int, shape.split("x"))
                if not tuning.usable(kernel, K, V, cfg):
                    continue
                out.append({"kernel": kernel, "config": list(vars(cfg).values()), "K": K, "V": V, "dtype": dtype,
                            "gated": kernel.split(".")[0] != "simple_gla" or V % 2 == 1})
    return out


def run_case(case) -> dict:
    """One op call (forward and backward) with the case's candidate forced; its status and error."""
    import torch
    import torch.nn.functional as F
    from tessera.linear import ops
    from tessera.linear.testing import errors_against_float64
    from tessera.linear.triton import tuning

    if os.environ.get(UNPADDED_ENV) == "1":
        ops._DELTA_TRITON_MIN_DIM = 0  # the delta rules' kernels at the head dims given, without zero-padding
    torch.manual_seed(len(case["kernel"]) * 1000 + case["K"] * 7 + case["V"])
    B, T, H, K, V = 2, 300, 2, case["K"], case["V"]
    dev = os.environ.get("TESSERA_CHECK_DEVICE", "cuda")  # "cpu" with TRITON_INTERPRET=1 checks this script
    op = case["kernel"].split(".")[0]
    leaves = {"q": torch.randn(B, T, H, K, device=dev), "k": torch.randn(B, T, H, K, device=dev),
              "v": torch.randn(B, T, H, V, device=dev), "h0": torch.randn(B, H, K, V, device=dev)}
    if op == "gla":
        leaves["g"] = F.logsigmoid(torch.randn(B, T, H, K, device=dev) + 2)
    elif op == "delta":
        leaves["k"] = F.normalize(leaves["k"], dim=-1)
        leaves["h0"] = 0.1 * leaves["h0"]
        leaves["beta"] = torch.rand(B, T, H, device=dev)
    if op != "gla" and case["gated"]:
        leaves["g"] = F.logsigmoid(torch.randn(B, T, H, device=dev) + 3)

    def call(x, backend):
        kw = dict(initial_state=x["h0"], output_final_state=True, backend=backend)
        if op == "simple_gla":
            return ops.simple_gla(x["q"], x["k"], x["v"], x.get("g"), **kw)
        if op == "gla":
            return ops.gla(x["q"], x["k"], x["v"], x["g"], **kw)
        return ops.gated_delta_rule(x["q"], x["k"], x["v"], x.get("g"), x["beta"], **kw)

    dtype = getattr(torch, case.get("dtype", "bfloat16"))
    low = {n: (x.to(dtype) if n in ("q", "k", "v") else x).requires_grad_(True) for n, x in leaves.items()}
    with tuning.forced(case["kernel"], tuning.LaunchConfig(*case["config"])):
        errors = errors_against_float64(lambda x: call(x, "triton"), lambda x: call(x, "torch"), low)
    worst = math.nan if any(map(math.isnan, errors.values())) else max(errors.values())  # max() skips NaN
    return {"status": "ok" if worst < TOLERANCE[case.get("dtype", "bfloat16")] else "wrong", "error": worst,
            "text": None}


def worker(path: str, ids: list[int]) -> None:
    """Run the cases ``ids`` of the JSON list at ``path``, one ``RESULT`` line each; exit on a CUDA fault."""
    with open(path) as f:
        all_cases = json.load(f)
    for i in ids:
        try:
            result = run_case(all_cases[i])
        except Exception as e:  # noqa: BLE001 - every failure is recorded
            text = f"{type(e).__name__}: {e}"[:300]
            cuda_fault = "CUDA" in text or "illegal" in text
            status = "fault" if cuda_fault else "no-compile" if "OutOfResources" in text or "shared" in text else "error"
            result = {"status": status, "error": None, "text": text}
            print("RESULT " + json.dumps({"id": i, **result}), flush=True)
            if cuda_fault:
                sys.exit(3)
            continue
        print("RESULT " + json.dumps({"id": i, **result}), flush=True)


def chain(path: str, ids: list[int], results: dict, deadline: float) -> None:
    """Run ``ids`` in worker processes, replacing a worker that dies; a case it never reported is a fault.
    Cases not reached by ``deadline`` (``time.monotonic()``) stay unrecorded."""
    while ids and time.monotonic() < deadline:
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", path, ",".join(map(str, ids))],
                                  capture_output=True, text=True, timeout=deadline - time.monotonic())
            stdout, stderr, died = proc.stdout, proc.stderr, proc.returncode not in (0, 3)
        except subprocess.TimeoutExpired as e:
            stdout, stderr, died = (e.stdout or b"").decode(), "", False
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                record = json.loads(line[7:])
                results[record.pop("id")] = record
        rest = [i for i in ids if i not in results]
        if rest and died:  # it never reported the case it was running
            results[rest[0]] = {"status": "fault", "error": None, "text": stderr[-300:]}
            rest = rest[1:]
        ids = rest


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/tuning")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--kernels", nargs="*", default=[])
    p.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="KxV head dims")
    p.add_argument("--budget", type=float, default=400, help="seconds; later cases are recorded as not-run")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--no-delta-padding", action="store_true",
                   help="run the delta rules' kernels at K, V < 64 as given (ops pads them to 64 otherwise)")
    p.add_argument("--worker", nargs=2, metavar=("CASES_JSON", "IDS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        os.environ["TESSERA_LINEAR_TUNE"] = "0"  # the other kernels run their first candidate, untimed
        worker(args.worker[0], [int(i) for i in args.worker[1].split(",")])
        return
    import torch
    from tessera.bench.environment import device_slug, header
    if args.no_delta_padding:
        os.environ[UNPADDED_ENV] = "1"  # read by the workers

    all_cases = cases(args.kernels, args.shapes, args.dtype)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "candidate-cases.json")
    with open(path, "w") as f:
        json.dump(all_cases, f)
    results: dict[int, dict] = {}
    deadline = time.monotonic() + args.budget
    threads = [threading.Thread(target=chain, args=(path, list(range(w, len(all_cases), args.workers)), results,
                                                    deadline))
               for w in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.remove(path)
    records = [{**c, **results.get(i, {"status": "not-run", "error": None, "text": None})}
               for i, c in enumerate(all_cases)]
    out = {**header(torch.device("cuda")), "delta_padding": not args.no_delta_padding, "records": records}
    name = f"{out['date']}-{device_slug(torch.device('cuda'))}-linear-candidates.json"
    with open(os.path.join(args.out, name), "w") as f:
        json.dump(out, f, indent=1)
    for r in records:
        if r["status"] != "ok":
            print(r["kernel"], r["config"], f"{r['K']}x{r['V']}", "gated" if r["gated"] else "", r["status"],
                  r["error"], (r["text"] or "")[:120])
    counts = {s: sum(r["status"] == s for r in records) for s in {r["status"] for r in records}}
    print("cases:", len(records), counts, "->", name)


if __name__ == "__main__":
    main()
