"""Launch configurations of the chunked linear-attention kernels, and a timed choice among them.

Every kernel has a short list of candidate ``LaunchConfig``s (``CANDIDATES``, first entry the default).
On a GPU, the first call for a key (kernel, number of heads, head dims, dtype, flags; never a length
or batch size) times every candidate with ``triton.testing.do_bench`` and keeps the fastest for the
rest of the process, like ``triton.autotune`` keyed on dims only. Lengths never enter the key, so the
choice is made at the first length seen. The default (first) candidate is used under the Triton
interpreter, when ``TESSERA_LINEAR_TUNE=0``, and for kernels with one candidate; the timing
synchronises the device, so set ``TESSERA_LINEAR_TUNE=0`` where a first call must not (CUDA graph
capture). ``OVERRIDES`` forces a configuration per kernel name (tests, sweeps); it bypasses the cache.
``preload`` takes the choices of an earlier timed run on the same GPU model instead of timing again.

Candidate lists follow fla 0.6's Hopper search spaces (``fla/ops/common/chunk_h.py``: BK, BV in
{32, 64}, 1-8 warps, 2-4 stages for the sequential state passes; ``chunk_o.py``: (128, 128, 8 warps,
3 stages), (64, 64, 4, 3), (32, 32, 2, 3) for the per-chunk output kernel), cut to a few entries to
bound compile time. The delta-rule backward follows fla's Hopper settings of the same steps:
``chunk_delta_h.py`` (state gradients: BV 32 / 64, 2 or 4 warps, 2-4 stages), ``chunk_o.py``
(``chunk_bwd_dv_local`` and ``chunk_bwd_dqkwg``: BK = BV = 128, 2 or 4 warps), ``wy_fast.py``
(``prepare_wy_repr_bwd``: BK = BV = 64). No kernel updates its inputs in place, so every candidate list
can be timed.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class LaunchConfig:
    """``block_k`` key channels and ``block_v`` value channels per program (0: not a knob of the
    kernel), ``num_warps`` warps per program, ``num_stages`` software-pipelining depth."""

    block_k: int
    block_v: int
    num_warps: int
    num_stages: int


C = LaunchConfig

# Sequential state passes (grid: key blocks x value blocks x sequences x heads): smaller blocks give
# more programs to hide the per-chunk latency of the recurrence.
_STATE = (C(64, 32, 4, 3), C(64, 64, 4, 3), C(32, 32, 2, 3), C(32, 32, 1, 3), C(32, 64, 4, 3), C(64, 64, 8, 2),
          C(32, 32, 4, 4))
# Simple GLA's state passes: also fla's 2-stage and 2-warp shapes (sm_90 compiles: 2 stages shorten the
# recurrence's loop body by 10-15% against 3; fla 0.6 picks among all of BK, BV in {32, 64}, 1-8 warps,
# 2-4 stages and was 13% faster than the best of _STATE on an H100).
_SIMPLE_STATE = _STATE + (C(64, 32, 4, 2), C(64, 32, 2, 2), C(32, 64, 2, 2), C(64, 64, 4, 2))
# Simple GLA's forward state pass: also the 8-warp, 2-stage and 4-stage shapes of fla's search space that the
# list above lacks (sm_90 loop bodies: 64 x 32 at 8 warps 2 stages is the shortest, 4 stages deepen the
# prefetch of k, v and the gate).
# 64 x 64 / 4 warps / 4 stages is fla's pick on an H200 and first here: 0.162 ms of kernel time against
# 0.193 for the best 3-stage shape (T = 16384, B = 2, H = 16, bf16; gpu_state_pass_ab.py).
_SIMPLE_STATE_FWD = (C(64, 64, 4, 4),) + _SIMPLE_STATE + (C(64, 32, 8, 2), C(32, 32, 4, 2), C(64, 32, 4, 4),
                                                          C(32, 64, 4, 4))
# The delta-rule state pass keeps the whole key dimension in one block (block_k unused).
_DELTA_STATE = (C(0, 32, 8, 2), C(0, 32, 4, 3), C(0, 64, 4, 3), C(0, 32, 2, 3), C(0, 16, 4, 3), C(0, 32, 4, 2))
# Its forward: also the 4-stage and 2-warp shapes of fla's search space for chunk_gated_delta_rule_fwd_h
# (BV 32 / 64, 2 or 4 warps, 2-4 stages) that the list above lacks; 4 stages won simple GLA's forward.
_DELTA_STATE_FWD = _DELTA_STATE + (C(0, 32, 4, 4), C(0, 32, 2, 4), C(0, 64, 2, 3), C(0, 64, 4, 2))

# The first candidates are the settings used before the timed choice; on an H200 (bf16, K = V = 128,
# T = 16384, one change at a time) simple GLA's output block_v 128 (vs 64) cut fwd 13% and dv / dqk
# with 3 stages (vs 2) cut fwd+bwd 12%. Whole-width blocks (block_k = K for dqk, block_k = block_v = 128
# for dv, as fla uses on Hopper) compute the chunk's [BT, BT] product and load v / do or q / k once per
# chunk instead of once per block; single-block dv / dqk tiles at 8 warps would convert their
# accumulators between layouts (or spill), so those run at 4 warps or with a value loop.
CANDIDATES: dict[str, tuple[LaunchConfig, ...]] = {
    "simple_gla.state": _SIMPLE_STATE_FWD,
    "simple_gla.output": (C(64, 128, 8, 2), C(128, 128, 8, 3), C(64, 64, 4, 3), C(32, 32, 2, 3), C(64, 128, 8, 3)),
    "simple_gla.state_grad": _SIMPLE_STATE + (C(64, 64, 4, 4), C(32, 64, 4, 4)),
    "simple_gla.dv": (C(64, 64, 8, 3), C(64, 64, 4, 3), C(64, 128, 8, 3), C(128, 128, 4, 3), C(64, 128, 4, 3)),
    "simple_gla.dqk": (C(64, 64, 8, 3), C(64, 64, 4, 3), C(64, 128, 8, 2), C(32, 64, 4, 3), C(128, 64, 8, 3),
                       C(128, 64, 8, 2), C(128, 32, 8, 3)),
    "gla.state": _STATE + (C(32, 64, 4, 4), C(64, 64, 4, 4)),
    "gla.output": (C(64, 64, 8, 2), C(64, 128, 8, 2), C(64, 64, 4, 3), C(32, 64, 4, 3)),
    "gla.state_grad": _STATE + (C(64, 32, 4, 4),),
    "gla.dv": (C(64, 64, 8, 2), C(64, 64, 4, 3), C(32, 64, 4, 3)),
    "gla.dqk": (C(64, 64, 8, 2), C(64, 64, 4, 3), C(32, 64, 4, 3)),
    # block_v 0: T alone, then W and U by "delta.wu" (fla's split: solve_tril, recompute_w_u_fwd).
    "delta.prepare": (C(0, 64, 8, 3), C(0, 64, 4, 3), C(0, 128, 8, 2), C(0, 64, 4, 2), C(0, 0, 4, 2), C(0, 0, 8, 2),
                      C(0, 0, 2, 2)),
    "delta.wu": (C(64, 64, 4, 3), C(64, 64, 8, 2), C(128, 128, 8, 2), C(64, 64, 2, 3)),
    "delta.state": _DELTA_STATE_FWD,
    "delta.output": (C(64, 64, 8, 3), C(128, 128, 8, 3), C(64, 128, 8, 2), C(32, 32, 2, 3), C(64, 128, 8, 3)),
    "delta.state_grad": (C(0, 32, 4, 2), C(0, 32, 4, 3), C(0, 64, 4, 3), C(0, 32, 2, 3), C(0, 64, 4, 2),
                         C(0, 32, 8, 2), C(0, 32, 4, 4)),
    "delta.attn_dv": (C(128, 128, 4, 3), C(128, 128, 4, 2), C(128, 128, 8, 2), C(64, 64, 8, 3)),
    "delta.dqk": (C(128, 64, 8, 2), C(128, 128, 8, 2), C(128, 64, 4, 3), C(64, 64, 4, 3), C(64, 64, 8, 3)),
    "delta.wy_grad": (C(64, 64, 4, 3), C(64, 64, 8, 2), C(128, 64, 8, 2), C(64, 64, 2, 3), C(32, 32, 4, 3)),
}


def block_size(n: int, limit: int) -> int:
    """The block of channels a kernel launches for ``n`` channels under a candidate's ``limit``: the next
    power of two of ``n``, at most ``limit``, at least 16."""
    return max(16, min(limit, 1 << max(0, n - 1).bit_length()))


def usable(kernel: str, K: int, V: int, cfg: LaunchConfig) -> bool:
    """Whether ``cfg`` may run ``kernel`` on key / value head dims ``K`` / ``V``.

    On sm_90 with Triton 3.6 the dq / dk kernels (simple GLA's, GLA's and the delta rule's) launched with a
    32-wide key block, 4 warps and 3 stages read shared memory out of bounds (compute-sanitizer) and fault or
    return wrong results at K x V = 32 x 64, 32 x 65, 128 x 65 and 64 x 129; they are right at 128 x 128
    and 128 x 64, where GLA's timed choice picks such a launch
    (``benchmarks/results/tuning/2026-11-30-h200-linear-candidates*.json``, ``gpu_candidate_check.py``).
    """
    if kernel.endswith(".dqk") and (cfg.num_warps, cfg.num_stages) == (4, 3) and block_size(K, cfg.block_k) == 32:
        return K >= 64 and V % 64 == 0
    return True


# Kernel name -> forced configuration; empty by default.
OVERRIDES: dict[str, LaunchConfig] = {}

# Kernel name -> the overrides under which it runs at all (tests and sweeps forcing one of its candidates).
PREREQUISITES: dict[str, dict[str, LaunchConfig]] = {"delta.wu": {"delta.prepare": C(0, 0, 4, 2)}}

# (kernel name, key) -> chosen configuration.
_CHOSEN: dict[tuple, LaunchConfig] = {}
# "kernel|key" -> a configuration chosen by an earlier timed run (``preload``).
_PRELOADED: dict[str, LaunchConfig] = {}


@contextlib.contextmanager
def forced(kernel: str, cfg: LaunchConfig):
    """Within the block, ``kernel`` runs ``cfg`` (and the kernels it needs run the configurations of
    ``PREREQUISITES``); the overrides from before the block are restored after it."""
    before = dict(OVERRIDES)
    OVERRIDES.update(PREREQUISITES.get(kernel, {}))
    OVERRIDES[kernel] = cfg
    try:
        yield
    finally:
        OVERRIDES.clear()
        OVERRIDES.update(before)


def _tuning_enabled() -> bool:
    return not _INTERPRETING and os.environ.get("TESSERA_LINEAR_TUNE", "1") != "0"


def _time_ms(launch: Callable[[LaunchConfig], object], cfg: LaunchConfig) -> float:
    """Median time of one launch with ``cfg`` in ms; ``inf`` if it fails to compile or run."""
    import triton.testing

    try:
        return triton.testing.do_bench(lambda: launch(cfg), warmup=5, rep=20, return_mode="median")
    except Exception:  # e.g. out of shared memory for this block shape
        return math.inf


def _timed_with_log(kernel: str, key: tuple, launch: Callable[[LaunchConfig], object], cfg: LaunchConfig) -> float:
    """``_time_ms``; with ``TESSERA_LINEAR_TUNE_LOG=1`` also prints the candidate, its time and the wall
    seconds it took (compile included) to stderr."""
    if os.environ.get("TESSERA_LINEAR_TUNE_LOG", "0") != "1":
        return _time_ms(launch, cfg)
    start = time.perf_counter()
    ms = _time_ms(launch, cfg)
    print(f"tune {kernel} {key} {cfg}: {ms:.4f} ms, {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return ms


def pick(kernel: str, key: tuple, launch: Optional[Callable[[LaunchConfig], object]]) -> LaunchConfig:
    """The configuration of ``kernel`` for ``key`` (heads, K, V, ...): the override, the default, or the
    fastest candidate (timed through ``launch(cfg)`` on the first call for the key; ``launch=None``: never
    timed), among the candidates ``usable`` on the key's head dims."""
    if kernel in OVERRIDES:
        return OVERRIDES[kernel]
    timed = launch is not None and _tuning_enabled()
    full_key = (kernel, key)
    if timed and full_key in _CHOSEN:  # every timed call after a key's first
        return _CHOSEN[full_key]
    candidates = [cfg for cfg in CANDIDATES[kernel] if usable(kernel, key[1], key[2], cfg)]
    if not timed or len(candidates) == 1:
        return candidates[0]
    if _PRELOADED.get(f"{kernel}|{key}") in candidates:
        _CHOSEN[full_key] = _PRELOADED[f"{kernel}|{key}"]
    else:
        times = [_timed_with_log(kernel, key, launch, cfg) for cfg in candidates]
        best = min(range(len(candidates)), key=lambda i: times[i])
        _CHOSEN[full_key] = candidates[best]
    return _CHOSEN[full_key]


def run(kernel: str, key: tuple, launch: Callable[[LaunchConfig], object]):
    """``launch(cfg)`` with the configuration ``pick`` returns; ``launch`` allocates its outputs, so
    the timed choice never accumulates into the caller's buffers."""
    return launch(pick(kernel, key, launch))


def chosen() -> dict[str, dict]:
    """The choices made so far, ``"kernel|key" -> config fields`` (for benchmark reports)."""
    return {f"{k}|{key}": vars(cfg) for (k, key), cfg in _CHOSEN.items()}


def preload(choices: dict[str, dict]) -> int:
    """Take earlier timed choices (``chosen()``'s format: a linear benchmark JSON's ``tuned`` block,
    from the same GPU model) instead of timing the candidates of those keys again, like an autotuning
    cache. Entries that name no current candidate are skipped. Returns how many were taken."""
    taken = 0
    for name, fields in choices.items():
        kernel = name.split("|", 1)[0]
        cfg = LaunchConfig(**fields)
        if cfg in CANDIDATES.get(kernel, ()):
            _PRELOADED[name] = cfg
            taken += 1
    return taken
