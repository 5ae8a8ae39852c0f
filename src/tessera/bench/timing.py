"""Timing of device work: median over repeats, with warm-up, events on CUDA."""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], device: torch.device, warmup_ms: float = 25.0,
              rep_ms: float = 150.0) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls) when triton is
    importable, else CUDA events around each call. CPU: ``time.perf_counter`` around each call.
    """
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            return _median_cuda_events(fn, warmup_ms, rep_ms)
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    return _median_host_clock(fn, warmup_ms, rep_ms)


def host_seconds_per_call(fn: Callable[[], object], calls: int = 20) -> float:
    """Host seconds per call to queue ``fn()`` on a CUDA device: ``calls`` calls with no
    synchronisation in between, after one untimed call (compiles and tuning stay out)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = (time.perf_counter() - start) / calls
    torch.cuda.synchronize()
    return elapsed


def warm_up_gpu(device: torch.device, seconds: float = 2.0) -> None:
    """Keep the GPU busy with bf16 matrix products for ``seconds`` before the first measurement,
    so that the first case of a run is not timed while clocks ramp up from idle (on the H200 the
    first case of a fresh process measured up to 30% slower than the same call later). No-op off
    CUDA."""
    if device.type != "cuda":
        return
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            a @ a
        torch.cuda.synchronize(device)


def _median_host_clock(fn, warmup_ms: float, rep_ms: float) -> float:
    start = time.perf_counter()
    fn()
    first = (time.perf_counter() - start) * 1e3
    for _ in range(max(0, min(3, int(warmup_ms / max(first, 1e-3))))):
        fn()
    samples = []
    budget_end = time.perf_counter() + rep_ms / 1e3
    while len(samples) < 3 or (time.perf_counter() < budget_end and len(samples) < 100):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _median_cuda_events(fn, warmup_ms: float, rep_ms: float) -> float:
    fn()
    torch.cuda.synchronize()
    samples = []
    budget_end = time.perf_counter() + (warmup_ms + rep_ms) / 1e3
    while len(samples) < 5 or (time.perf_counter() < budget_end and len(samples) < 200):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end))
    return statistics.median(samples)


def cuda_kernel_ms(step: Callable[[], object], iters: int = 10, warmup: int = 3) -> dict[str, float]:
    """CUDA time per call of ``step`` spent in each kernel it launches (``torch.profiler``):
    ``{kernel name (first 90 characters): ms}``, summed over the kernel's launches in a step and
    averaged over ``iters`` steps, largest first. ``step`` must leave no state that changes the
    next call's work (reset gradients inside it)."""
    from torch.profiler import ProfilerActivity, profile
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    times = {}
    for event in prof.key_averages():
        total_us = getattr(event, "device_time_total", 0) or getattr(event, "cuda_time_total", 0)
        if total_us:
            times[event.key[:90]] = round(total_us / 1e3 / iters, 4)
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def graph_replay_ms(fn: Callable[[], object], replays: int = 50) -> float:
    """GPU ms per call of ``fn`` replayed from a CUDA graph: no host time in it (the eager
    ``median_ms`` of a call whose host path outlasts its kernels measures the host). Three warm-up
    calls on a side stream, one capture, ``replays`` back-to-back replays between two events (no
    L2 flush in between). Raises what the capture raises (work that cannot be captured)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / replays


def top_host_functions(step: Callable[[], object], calls: int = 20, top: int = 25) -> list[str]:
    """The ``top`` host functions of ``calls`` calls of ``step`` on a CUDA device by cumulative
    time (``cProfile``), per call: cumulative and own ms, calls per step, where."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        step()
    profiler.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():
        rows.append((cumtime, tottime, ncalls, f"{path.split('site-packages/')[-1].split('src/')[-1]}:{line}({name})"))
    rows.sort(reverse=True)
    return [f"cum {c / calls * 1e3:7.3f} ms  self {t / calls * 1e3:7.3f} ms  calls/step {n / calls:5.1f}  {where}"
            for c, t, n, where in rows[:top]]
