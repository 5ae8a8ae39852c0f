"""Host time per part of a call, across threads (the autograd engine runs a CUDA backward on its own
thread, which ``cProfile`` in the calling thread never sees).

``host_ms_per_part(fn, calls=20)`` wraps named functions with wall-clock counters, runs ``fn()``
``calls`` times without synchronising (after one untimed call) and returns the mean host
milliseconds per call spent inside each part (inclusive: a part's time contains the parts it calls)
and in the whole call (``"call"``). The parts are ``PARTS`` unless ``targets`` names others; with
``split_launches`` kernel launches are also split per kernel (``launch <kernel name>``).
"""

from __future__ import annotations

import importlib
import time
from typing import Callable, Optional, Sequence

import torch

# (module, attribute path) of each default part.
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


def default_targets() -> list[tuple[object, str, str]]:
    """``(owner, attribute, label)`` of each of ``PARTS``; labels drop the module path for the backend
    and natten modules, keep the module's last name otherwise (``flash_bwd.backward``)."""
    targets = []
    for module_name, path in PARTS:
        owner = importlib.import_module(module_name)
        *parents, attr = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        short = module_name.rsplit(".", 1)[1]
        targets.append((owner, attr, path if short in ("backend", "natten") else f"{short}.{path}"))
    return targets


def _timed(totals: dict, label: str, fn: Callable) -> Callable:
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start
    return timed


def _timed_launch(totals: dict, launch: Callable) -> Callable:
    def timed(self, grid, stream, args, kwargs):
        kernel = getattr(self.kernel, "fn", self.kernel)
        label = f"launch {getattr(kernel, '__name__', repr(kernel))}"
        start = time.perf_counter()
        try:
            return launch(self, grid, stream, args, kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - start
    return timed


def host_ms_per_part(fn: Callable[[], object], calls: int = 20,
                     targets: Optional[Sequence[tuple[object, str, str]]] = None,
                     split_launches: bool = True) -> dict[str, float]:
    """Mean host ms per ``fn()`` call inside each part, largest first (module docstring); ``targets``:
    ``(owner, attribute, label)`` triples (default ``default_targets()``)."""
    from tessera.kernels.triton.launcher import Launcher

    targets = default_targets() if targets is None else list(targets)
    totals = {label: 0.0 for _, _, label in targets}
    restore = []
    for owner, attr, label in targets:
        original = owner.__dict__[attr]
        inner = original.__func__ if isinstance(original, staticmethod) else original
        wrapped = _timed(totals, label, inner)
        setattr(owner, attr, staticmethod(wrapped) if isinstance(original, staticmethod) else wrapped)
        restore.append((owner, attr, original))
    if split_launches:
        restore.append((Launcher, "_launch", Launcher.__dict__["_launch"]))
        Launcher._launch = _timed_launch(totals, Launcher.__dict__["_launch"])
    try:
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        for label in totals:
            totals[label] = 0.0
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        totals["call"] = time.perf_counter() - start
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    finally:
        for owner, attr, original in reversed(restore):
            setattr(owner, attr, original)
    return {label: 1e3 * seconds / calls for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1])}
