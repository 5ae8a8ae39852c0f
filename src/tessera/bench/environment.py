"""Where a benchmark ran: device, library versions, date."""

from __future__ import annotations

import datetime
import re

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def device_slug(device: torch.device) -> str:
    """Short file-name form of the device: 'h100', 'h200', 'cpu'."""
    name = device_name(device).lower()
    match = re.search(r"\b([a-z]\d{2,4})\b", name)
    return match.group(1) if device.type == "cuda" and match else re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def header(device: torch.device) -> dict:
    """The fields every results file starts with."""
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton_version(),
        "date": datetime.date.today().isoformat(),
    }
