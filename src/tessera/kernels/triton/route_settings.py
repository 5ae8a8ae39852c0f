"""A counter of changes to the kernel routes' settings, for caches of settled routes.

A prepared call (``backend.prepare``) settles which kernels run its forward and backward once
and keeps the answer: the routes read module-level settings (``forward_route.GLUON_ENABLED``,
``backward_route.DQ_VARIANT``, ``flash_bwd.OVERLAP_MIN_WORK``, ...) that benchmarks and tests
assign to time or test another path. ``watch(module)`` makes every assignment to (or deletion
of) an attribute of ``module`` advance ``generation()``; a settled route is kept only while the
generation it was settled under is current. Mutating a setting in place (``d[key] = value`` on a
module's dict) is not seen: the routes' dict-valued settings are replaced, never mutated, except
``tuning.OVERRIDES``, which the prepared run checks itself.
"""

from __future__ import annotations

import types

_GENERATION = [0]


class _WatchedModule(types.ModuleType):
    """A module whose attribute assignments and deletions advance the generation."""

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        _GENERATION[0] += 1

    def __delattr__(self, name):
        super().__delattr__(name)
        _GENERATION[0] += 1


def watch(module: types.ModuleType) -> None:
    """Advance ``generation()`` on every later attribute assignment or deletion on ``module``."""
    if type(module) is types.ModuleType:
        module.__class__ = _WatchedModule


def generation() -> int:
    """The number of watched-setting changes so far."""
    return _GENERATION[0]
