"""Two independent launches overlapped on a side CUDA stream (the backward's dk/dv and dq
kernels): the side stream starts after everything queued so far on the current stream, and the
current stream waits for it at ``join``, so callers see one ordered sequence of work. The overlap
fills each kernel's last, partly idle wave with the other kernel's programs.

Memory: tensors the side launches use need no ``record_stream``. Each is allocated on the
current (the caller's) stream, and the caching allocator hands its block out again only to work
queued on that stream after the tensor is freed. ``join`` runs before any of them can be freed
(call it in a ``finally`` of the launching function), so that work is ordered after the side
stream's.

``TESSERA_BWD_STREAMS=0`` turns the overlap off (everything on the current stream).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from .scoring import INTERPRETED

ENABLED = os.environ.get("TESSERA_BWD_STREAMS", "1") != "0"

# Per device: the side stream and the two events that order it (reused: a wait orders after the
# event's latest record at the time of the wait).
_SIDE: dict[torch.device, tuple[torch.cuda.Stream, torch.cuda.Event, torch.cuda.Event]] = {}


def possible(device: torch.device) -> bool:
    """Whether ``fork`` would give a side stream: CUDA, not interpreted, not inside a CUDA graph
    capture, overlap on."""
    return (ENABLED and not INTERPRETED and device.type == "cuda"
            and not torch.cuda.is_current_stream_capturing())


def fork(device: torch.device) -> Optional[torch.cuda.Stream]:
    """A side stream ordered after the current stream's queued work; None where there is nothing
    to overlap (``possible`` is False)."""
    if not possible(device):
        return None
    side = _SIDE.get(device)
    if side is None:
        side = _SIDE[device] = (torch.cuda.Stream(device), torch.cuda.Event(), torch.cuda.Event())
    stream, forked, _ = side
    forked.record(torch.cuda.current_stream(device))
    stream.wait_event(forked)
    return stream


def join(side: Optional[torch.cuda.Stream]) -> None:
    """Make the current stream wait for everything queued on ``side``."""
    if side is not None:
        _, _, joined = _SIDE[side.device]
        joined.record(side)
        torch.cuda.current_stream(side.device).wait_event(joined)
