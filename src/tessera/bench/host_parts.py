"""Host time per part of a call, across threads (the autograd engine runs a CUDA backward on its own
thread, which ``cProfile`` in the calling thread never sees).

``host_ms_per_part(fn, calls=20)`` wraps the functions named in ``PARTS`` with wall-clock counters,
runs ``fn()`` ``calls`` times without synchronising (after one untimed call) and returns the mean
host milliseconds per call spent inside each part (inclusive: a part's time contains the parts it
calls). Kernel launches are split per kernel (``launch <kernel name>``).
"""

from __future__ import annotations

import importlib
import time
from collections import defaultdict
from typing import Callable

import torch

# (module, attribute path) of each timed part.
PARTS = (
    ("tessera.kernels.triton.backend", "_run_one"),
    ("tessera.kernels.triton.backend", "_forward"),
    ("tessera.kernels.triton.backend", "FlashAttention.backward"),
    ("tessera.kernels.triton.backend", "_configs"),
    ("tessera.kernels.triton.backend", "_plan"),
    ("tessera.kernels.triton.flash_fwd", "forward"),
    ("tessera.kernels.triton.flash_bwd", "backward"),
    ("tessera.kernels.triton.flash_bwd", "row_dot"),
    ("tessera.kernels.triton.flash_bwd", "row_operands"),
    ("tessera.kernels.triton.flash_fwd", "row_operands"),
    ("tessera.kernels.triton.flash_bwd", "col_launch"),
    ("tessera.kernels.triton.flash_bwd", "row_launch"),
    ("tessera.kernels.triton.streams", "fork"),
    ("tessera.kernels.triton.streams", "join"),
    ("tessera.natten", "_resolve_layout"),
    ("tessera.natten", "_build_call"),
)


def _wrap(totals: dict, name: str, fn: Callable) -> Callable:
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start
    return timed


def _launch_name(launcher) -> str:
    kernel = launcher.kernel
    return f"launch {getattr(getattr(kernel, 'fn', kernel), '__name__', repr(kernel))}"


def host_ms_per_part(fn: Callable[[], object], calls: int = 20) -> dict[str, float]:
    """Mean host ms per ``fn()`` call inside each part (module docstring); ``"call"``: the whole call."""
    from tessera.kernels.triton.launcher import Launcher

    totals: dict[str, float] = defaultdict(float)
    restore = []
    for module_name, path in PARTS:
        owner = importlib.import_module(module_name)
        *parents, attr = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        original = owner.__dict__[attr]
        inner = original.__func__ if isinstance(original, staticmethod) else original
        wrapped = _wrap(totals, path if module_name.endswith(("backend", "natten")) else
                        f"{module_name.rsplit('.', 1)[1]}.{path}", inner)
        setattr(owner, attr, staticmethod(wrapped) if isinstance(original, staticmethod) else wrapped)
        restore.append((owner, attr, original))
    launch = Launcher._launch

    def timed_launch(self, grid, stream, args, kwargs):
        start = time.perf_counter()
        try:
            return launch(self, grid, stream, args, kwargs)
        finally:
            totals[_launch_name(self)] += time.perf_counter() - start

    Launcher._launch = timed_launch
    try:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        totals.clear()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        totals["call"] = time.perf_counter() - start
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    finally:
        Launcher._launch = launch
        for owner, attr, original in restore:
            setattr(owner, attr, original)
    return {name: 1e3 * seconds / calls for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1])}
