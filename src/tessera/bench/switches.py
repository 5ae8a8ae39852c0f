"""Module switches of ``tessera.kernels.triton`` (booleans such as ``flash_fwd.TMA_ENABLED``) set
by name, so that one benchmark process can time a kernel path with a switch on and off."""

from __future__ import annotations

import importlib
import itertools
from typing import Iterator


def _module_and_attr(name: str):
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        raise ValueError(f"switch {name!r}: expected MODULE.ATTR")
    module = importlib.import_module(f"tessera.kernels.triton.{module_name}")
    if not isinstance(getattr(module, attr, None), bool):
        raise ValueError(f"switch {name!r}: no boolean {attr} in {module.__name__}")
    return module, attr


def get_switch(name: str) -> bool:
    """The value of ``tessera.kernels.triton.<MODULE>.<ATTR>`` for ``name = "MODULE.ATTR"``."""
    module, attr = _module_and_attr(name)
    return getattr(module, attr)


def set_switch(name: str, value: bool) -> None:
    """Set ``tessera.kernels.triton.<MODULE>.<ATTR>`` for ``name = "MODULE.ATTR"``; the
    attribute must exist and be a boolean (a typo fails here, not as a silently unused
    attribute)."""
    module, attr = _module_and_attr(name)
    setattr(module, attr, value)


def settings(names: list[str]) -> Iterator[dict[str, bool]]:
    """Every on/off combination of the switches ``names`` (all on first), each set before it is
    yielded; the switches are back at their values from before after the last."""
    before = {name: get_switch(name) for name in names}
    try:
        for values in itertools.product((True, False), repeat=len(names)):
            setting = dict(zip(names, values))
            for name, value in setting.items():
                set_switch(name, value)
            yield setting
    finally:
        for name, value in before.items():
            set_switch(name, value)
