"""Two independent launches overlapped on a side CUDA stream (the backward's dk/dv and dq
kernels): the side stream starts after everything queued so far on the current stream, and the
current stream waits for it at ``join``, so callers see one ordered sequence of work. The overlap
fills each kernel's last, partly idle wave with the other kernel's programs.

``TESSERA_BWD_STREAMS=0`` turns the overlap off (everything on the current stream).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from .scoring import INTERPRETED

ENABLED = os.environ.get("TESSERA_BWD_STREAMS", "1") != "0"

_SIDE: dict[torch.device, torch.cuda.Stream] = {}


def fork(*tensors: torch.Tensor) -> Optional[torch.cuda.Stream]:
    """A side stream ordered after the current stream's queued work, with ``tensors`` (those the
    side launches read or write) recorded on it so their memory outlives its work; None where
    there is nothing to overlap (CPU, interpreter, CUDA graph capture, overlap off)."""
    device = tensors[0].device
    if not ENABLED or INTERPRETED or device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return None
    side = _SIDE.get(device)
    if side is None:
        side = _SIDE[device] = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    for t in tensors:
        if t is not None and t.device.type == "cuda":
            t.record_stream(side)
    return side


def on(side: Optional[torch.cuda.Stream]):
    """Context that makes ``side`` current (no-op for None)."""
    return torch.cuda.stream(side) if side is not None else contextlib.nullcontext()


def join(side: Optional[torch.cuda.Stream]) -> None:
    """Make the current stream wait for everything queued on ``side``."""
    if side is not None:
        torch.cuda.current_stream(side.device).wait_stream(side)
