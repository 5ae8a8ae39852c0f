"""Chunked linear-attention forwards as one launch: the sequential state pass and the chunk outputs overlap.

The output of chunk ``c`` needs only the state entering it (and, for the delta rule, the values written
in it), but as two launches every output waits for the whole state pass, a latency-bound chain of one
step per chunk on a few programs per head. Here one launch holds both. Programs take tickets from an
atomic counter in the order they start; the first tickets run the state pass and, after storing each
chunk's state, bump a per-(chunk, head) count (barrier, then release); the others compute outputs,
earliest chunks first, once that count shows every state program of their head past the chunk
(acquire). A program only waits for programs with smaller tickets, which have started and never wait
themselves, so every wait ends. Equal-length batches only, and only when every state program fits on
its own multiprocessor beside the output programs (``wanted``): otherwise the state programs would
run in waves while outputs wait.

Off by default: not yet timed on a GPU. TESSERA_LINEAR_OVERLAP=1 turns it on for simple GLA and the
delta rules, and so does a configuration forced for one of its kernels (``tuning.OVERRIDES``).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ...kernels.triton.launcher import Launcher
from . import tuning
from .delta_rule import _delta_state_step
from .simple_gla import (_INTERPRETING, CHUNK, PackedChunks, _block, _initial_state, _key, _output_chunk, _state,
                         _state_dtype, _state_step)

OVERLAP_FORWARD = os.environ.get("TESSERA_LINEAR_OVERLAP", "0") == "1"

# Value block of the output part: simple GLA's and the delta rule's timed output tiles on an H200.
_OUTPUT_BV = 128
_OUTPUT_BK = 64


@triton.jit
def _counted_state_step(k, v, w, u0, u, gc, h, sync, b_h, i_t, i_n, T, per_seq, i_h, H, k0, v0,
                        K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        DELTA: tl.constexpr, USE_G: tl.constexpr, IEEE: tl.constexpr):
    """One step of the state pass of sequence ``i_n`` (simple GLA's, or with ``DELTA`` the delta rule's,
    which also stores the written values ``u``), then count chunk ``i_t`` as stored: the barrier orders
    every thread's stores before the release."""
    if DELTA:
        b_h = _delta_state_step(k, w, u0, u, gc, h, b_h, i_t, i_n * T, T, i_n * per_seq, i_h, H, v0,
                                K, V, BT, BK, BV, USE_G, IEEE)
    else:
        b_h = _state_step(k, v, gc, h, b_h, i_t, i_n * T, T, i_n * per_seq, i_h, H, k0, v0,
                          K, V, BT, BK, BV, USE_G, IEEE)
    tl.debug_barrier()
    tl.atomic_add(sync + 1 + (i_n * per_seq + i_t) * H + i_h, 1, sem="release", scope="gpu")
    return b_h


@triton.jit(do_not_specialize=["T"])
def _overlapped_forward_kernel(q, k, v, w, u0, u, gc, h, o, h0, ht, sync, scale, T, N, n_state,
                               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                               BK: tl.constexpr, BV: tl.constexpr, BK_O: tl.constexpr, BV_O: tl.constexpr,
                               DELTA: tl.constexpr, USE_G: tl.constexpr, USE_H0: tl.constexpr,
                               STORE_HT: tl.constexpr, IEEE: tl.constexpr, WHILE_LOOP: tl.constexpr):
    """State pass and outputs of ``N`` sequences of ``T`` tokens (module docstring). Tickets below
    ``n_state``: the state pass of one (sequence, head, key block of ``BK``, value block of ``BV``);
    counts in ``sync[1 + chunk * H + head]``. Other tickets: the output of one (chunk, head, value block
    of ``BV_O``; key blocks of ``BK_O``) from ``v``, or with ``DELTA`` from the written values ``u``."""
    ticket = tl.atomic_add(sync, 1)
    NK = tl.cdiv(K, BK)
    NV = tl.cdiv(V, BV)
    per_seq = tl.cdiv(T, BT)
    if ticket < n_state:
        i_k = ticket % NK
        i_v = ticket // NK % NV
        i_nh = ticket // (NK * NV)
        i_n = i_nh // H
        i_h = i_nh % H
        k0 = i_k * BK
        v0 = i_v * BV
        b_h = _initial_state(h0, i_n, i_h, H, K, V, k0, v0, BK, BV, USE_H0)
        if WHILE_LOOP:
            i_t = 0
            while i_t < per_seq:
                b_h = _counted_state_step(k, v, w, u0, u, gc, h, sync, b_h, i_t, i_n, T, per_seq, i_h, H, k0, v0,
                                          K, V, BT, BK, BV, DELTA, USE_G, IEEE)
                i_t += 1
        else:
            for i_t in range(0, per_seq):
                b_h = _counted_state_step(k, v, w, u0, u, gc, h, sync, b_h, i_t, i_n, T, per_seq, i_h, H, k0, v0,
                                          K, V, BT, BK, BV, DELTA, USE_G, IEEE)
        if STORE_HT:
            tl.store(_state(ht, i_n, i_h, H, K, V, k0, v0, BK, BV), b_h, boundary_check=(0, 1))
    else:
        NVO = tl.cdiv(V, BV_O)
        job = ticket - n_state
        i_v = job % NVO
        i_h = job // NVO % H
        i_n = job // (NVO * H) % N
        i_t = job // (NVO * H * N)
        i_c = i_n * per_seq + i_t
        while tl.atomic_add(sync + 1 + i_c * H + i_h, 0, sem="acquire", scope="gpu") < NK * NV:
            pass
        if DELTA:
            _output_chunk(q, k, u, gc, h, o, scale, i_n * T, T, i_t, i_c, i_h, H, i_v * BV_O, K, V, BT, BK_O, BV_O,
                          USE_G, IEEE)
        else:
            _output_chunk(q, k, v, gc, h, o, scale, i_n * T, T, i_t, i_c, i_h, H, i_v * BV_O, K, V, BT, BK_O, BV_O,
                          USE_G, IEEE)


def _multiprocessors(device: torch.device) -> Optional[int]:
    """Streaming multiprocessors of a CUDA ``device``; None off CUDA (the interpreter runs programs in turn)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else None


def wanted(kernel: str, packed: PackedChunks, heads: int, key_blocks: int, v_dim: int, device: torch.device) -> bool:
    """Whether a forward runs as one launch (``kernel``: its tuning name): turned on (``OVERLAP_FORWARD``, or a
    configuration forced for ``kernel``), equal-length sequences, and the state programs of every candidate
    (``key_blocks`` per head, value blocks of at least 32) at most one per multiprocessor."""
    if not (OVERLAP_FORWARD or kernel in tuning.OVERRIDES) or packed.varlen:
        return False
    sms = _multiprocessors(device)
    return sms is None or packed.num_sequences * heads * key_blocks * triton.cdiv(v_dim, 32) <= sms


def _launch(q, k, v, w, u0, u, gc, h, o, initial_state, ht, scale, packed: PackedChunks, BK: int, BV: int,
            delta: bool, cfg) -> None:
    """One ``_overlapped_forward_kernel`` launch filling ``h``, ``o``, ``ht`` (and ``u`` with ``delta``):
    state programs over key blocks of ``BK`` and value blocks of ``BV``, then the output programs."""
    TT, H, K = q.shape
    V = h.shape[-1]
    N = packed.num_sequences
    BV_O = _block(V, _OUTPUT_BV)
    n_state = triton.cdiv(K, BK) * triton.cdiv(V, BV) * N * H
    n_output = triton.cdiv(V, BV_O) * packed.num_chunks * H
    sync = torch.zeros(1 + packed.num_chunks * H, dtype=torch.int32, device=q.device)
    Launcher.of(_overlapped_forward_kernel)[(n_state + n_output,)](
        q, k, v, w, u0, u, gc, h, o, initial_state, ht, sync, scale, packed.T, N, n_state, H,
        K=K, V=V, BT=CHUNK, BK=BK, BV=BV, BK_O=_block(K, _OUTPUT_BK), BV_O=BV_O, DELTA=delta,
        USE_G=gc is not None, USE_H0=initial_state is not None, STORE_HT=ht is not None,
        IEEE=q.dtype == torch.float32, WHILE_LOOP=_INTERPRETING, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)


def _outputs(q, k, V: int, packed: PackedChunks, output_final_state: bool):
    """``(h, o, ht)`` buffers of a forward (states in the input dtype for bf16, else float32)."""
    TT, H, K = q.shape
    h = torch.empty(packed.num_chunks, H, K, V, dtype=_state_dtype(k.dtype), device=k.device)
    o = torch.empty(TT, H, V, dtype=q.dtype, device=q.device)
    ht = (torch.empty(packed.num_sequences, H, K, V, dtype=torch.float32, device=k.device)
          if output_final_state else None)
    return h, o, ht


def simple_gla_states_and_output(q, k, v, gc, initial_state, output_final_state, scale, packed: PackedChunks):
    """``simple_gla.chunk_states`` and ``chunk_output`` in one launch: ``(o, h, final_state)``."""
    K, V = q.shape[-1], v.shape[-1]

    def launch(cfg):
        h, o, ht = _outputs(q, k, V, packed, output_final_state)
        _launch(q, k, v, None, None, None, gc, h, o, initial_state, ht, scale, packed, _block(K, cfg.block_k),
                _block(V, cfg.block_v), False, cfg)
        return o, h, ht
    return tuning.run("simple_gla.overlapped", _key(q, v, gc is not None), launch)


def delta_states_and_output(q, k, w, u0, gc, initial_state, output_final_state, scale, packed: PackedChunks):
    """``delta_rule.delta_states`` and the output in one launch: ``(o, h, u, final_state)`` with ``u`` the
    written values (the whole key dimension in one block, as the two-launch state pass)."""
    K, V = q.shape[-1], u0.shape[-1]

    def launch(cfg):
        h, o, ht = _outputs(q, k, V, packed, output_final_state)
        u = torch.empty_like(u0)
        _launch(q, k, None, w, u0, u, gc, h, o, initial_state, ht, scale, packed, _block(K, 256),
                _block(V, cfg.block_v), True, cfg)
        return o, h, u, ht
    return tuning.run("delta.overlapped", _key(q, u0, gc is not None), launch)
