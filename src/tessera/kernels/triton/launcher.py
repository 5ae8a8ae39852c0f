"""Kernel launches with a cheap host path on repeat calls.

``Launcher(kernel)[grid](*args, stream=None, **kwargs)`` launches like ``kernel[grid](*args,
**kwargs)`` (on ``stream`` when given, else on the current stream). Triton's own launch path binds
and specializes every argument, builds a cache key and launch metadata on each call: 65-135 us of
host time for a launch of ~90 arguments on the H200 host (``benchmarks/gpu_launch_cost.py``), more
than some of the kernels take.
Here the first launch of each *specialization key* goes through Triton (which compiles or finds
the kernel and returns it); later launches with the same key call the compiled kernel directly.

The key is a superset of what Triton specializes on, so two launches with one key always run the
same compiled kernel Triton would pick: the current device; the type of every argument; for a
tensor its dtype and whether its address is 16-byte aligned; for a tensor descriptor (Triton's
or Gluon's) its dtype, block shape, padding and shared layout (the base is always 16-byte
aligned); for any other argument its value; and every keyword argument (constexprs, launch
options) with its type. Launch hooks (profilers), the interpreter, or a machine without CUDA
send every launch through Triton.
"""

from __future__ import annotations

from typing import Optional

import torch
from triton import knobs
try:  # Triton's own descriptor expansion (3.4+); without it descriptor launches keep Triton's path
    from triton.backends.nvidia.driver import make_tensordesc_arg
except ImportError:  # pragma: no cover - depends on the Triton version
    make_tensordesc_arg = None
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor
try:  # Gluon kernels take Gluon's descriptor class (a shared-memory layout besides the block)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor
    DESCRIPTORS: tuple = (TensorDescriptor, GluonTensorDescriptor)
except ImportError:  # pragma: no cover - depends on the Triton version
    DESCRIPTORS = (TensorDescriptor,)

# Distinct keys kept per kernel before the cache starts over (one entry per key is a few tuples).
MAX_KEYS = 4096
# Off: every descriptor launch encodes its CUDA tensor maps again (for A/B timing).
CACHE_TENSOR_MAPS = True


def _arg_key(arg):
    if isinstance(arg, torch.Tensor):
        return arg.dtype, not arg.data_ptr() & 15
    if isinstance(arg, DESCRIPTORS):
        return arg.base.dtype, tuple(arg.block_shape), arg.padding, getattr(arg, "layout", None)
    return arg


# Argument types of a launch -> the positions of its tensors and tensor descriptors.
_SPECIAL_SLOTS: dict[tuple, tuple[int, ...]] = {}


def _special_slots(types: tuple) -> tuple[int, ...]:
    slots = _SPECIAL_SLOTS.get(types)
    if slots is None:
        if len(_SPECIAL_SLOTS) >= MAX_KEYS:
            _SPECIAL_SLOTS.clear()
        slots = _SPECIAL_SLOTS[types] = tuple(
            i for i, t in enumerate(types) if issubclass(t, (torch.Tensor, *DESCRIPTORS)))
    return slots


def _values_key(values: tuple, types: tuple) -> tuple:
    """``values`` with each tensor and descriptor (positions found once per tuple of ``types``)
    replaced by its ``_arg_key``; every other value is its own key."""
    slots = _special_slots(types)
    if not slots:
        return values
    keyed = list(values)
    for i in slots:
        keyed[i] = _arg_key(keyed[i])
    return tuple(keyed)


def specialization_key(args: tuple, kwargs: dict) -> tuple:
    """Hashable key of one launch's positional and keyword arguments (see the module docstring);
    no tensor is held."""
    types = tuple(map(type, args))
    kw_values = tuple(kwargs.values())
    kw_types = tuple(map(type, kw_values))
    return (types, _values_key(args, types), tuple(kwargs), kw_types, _values_key(kw_values, kw_types))


def _hooks_set() -> bool:
    runtime = knobs.runtime
    return any(hook is not None and getattr(hook, "calls", True)
               for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook))


def _meta_key(meta) -> Optional[tuple]:
    """The fields of a descriptor's launch metadata that its tensor map encodes (None: no map)."""
    if meta is None:
        return None
    return (meta["swizzle"], meta["elem_size"], meta["elem_type"], tuple(meta["block_size"]),
            meta["fp4_padded"])


# (metadata fields, base address, shape, strides, padding) -> a descriptor's launch arguments.
_TENSOR_MAPS: dict[tuple, list] = {}


def tensor_map_args(desc, meta, meta_key: Optional[tuple]) -> list:
    """``make_tensordesc_arg(desc, meta)``: a descriptor's launch arguments (its encoded CUDA
    tensor map, shape and strides), reused for a later descriptor with the same base address,
    shape, strides, padding and metadata fields (``meta_key``), every input of the encoding
    (``cuTensorMapEncodeTiled``, one call per descriptor per launch otherwise). The map holds an
    address, not the tensor: a new tensor at a freed one's address, with its shape and strides,
    has the same map."""
    if meta_key is None or not CACHE_TENSOR_MAPS:
        return make_tensordesc_arg(desc, meta)
    key = (meta_key, desc.base.data_ptr(), tuple(desc.shape), tuple(desc.strides), desc.padding)
    args = _TENSOR_MAPS.get(key)
    if args is None:
        if len(_TENSOR_MAPS) >= MAX_KEYS:
            _TENSOR_MAPS.clear()
        args = _TENSOR_MAPS[key] = make_tensordesc_arg(desc, meta)
    return args


class _DescriptorLaunch:
    """The C launch of a compiled kernel that takes tensor descriptors, called directly.

    Triton wraps such a kernel's C launch (``wrap_handle_tensordesc``) in a Python pass over every
    argument that expands each descriptor into its CUDA tensor map, shape and strides: several
    microseconds per launch for ~100 arguments. This expands the descriptors alone, at their known
    positions, with Triton's own ``make_tensordesc_arg`` (through ``tensor_map_args``, which
    reuses encoded maps), and calls the same C launch. ``of``
    returns None where the launch is not that wrapper or needs scratch memory (then the caller
    keeps ``kernel.run``)."""

    __slots__ = ("raw", "places", "cooperative", "pdl")

    def __init__(self, raw, places, cooperative, pdl):
        self.raw = raw
        self.places = places            # ((argument position, metadata, its key), ...), last first
        self.cooperative = cooperative
        self.pdl = pdl

    @classmethod
    def of(cls, kernel) -> Optional["_DescriptorLaunch"]:
        if make_tensordesc_arg is None:
            return None
        run = kernel.run
        wrapper = getattr(run, "launch", None)
        code = getattr(wrapper, "__code__", None)
        needed = {"launcher", "tensordesc_indices", "tensordesc_meta"}
        if (code is None or code.co_name != "inner" or not needed <= set(code.co_freevars)
                or getattr(run, "global_scratch_size", 1) or getattr(run, "profile_scratch_size", 1)):
            return None
        cells = {name: cell.cell_contents for name, cell in zip(code.co_freevars, wrapper.__closure__)}
        positions = sorted(cells["tensordesc_indices"])
        metas = list(cells["tensordesc_meta"] or [None] * len(positions))
        if len(metas) != len(positions):
            return None
        places = tuple(reversed(tuple((position, meta, _meta_key(meta))
                                      for position, meta in zip(positions, metas))))
        return cls(cells["launcher"], places, run.launch_cooperative_grid, run.launch_pdl)

    def __call__(self, grid, stream: int, kernel, values: tuple) -> None:
        expanded = list(values)
        for position, meta, meta_key in self.places:
            expanded[position:position + 1] = tensor_map_args(expanded[position], meta, meta_key)
        self.raw(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream,
                 kernel.function, self.cooperative, self.pdl, None, None, kernel.packed_metadata,
                 None, None, None, *expanded)


class _Entry:
    """A compiled kernel and how to order one launch's arguments for it. The values of the
    parameters after the positional ones (from keyword arguments or defaults) are fixed per
    specialization key, which holds every keyword argument: they are taken once, except tensors
    and descriptors (the key holds only their dtype and alignment), taken per launch."""

    __slots__ = ("kernel", "tail", "live", "descriptor_launch")

    def __init__(self, kernel, fn: JITFunction, args: tuple, kwargs: dict):
        self.kernel = kernel
        params = fn.params[len(args):]
        self.live = tuple((i, p.name) for i, p in enumerate(params)
                          if isinstance(kwargs.get(p.name), (torch.Tensor, *DESCRIPTORS)))
        live_names = {name for _, name in self.live}
        self.tail = tuple(None if p.name in live_names else kwargs[p.name] if p.name in kwargs else p.default
                          for p in params)
        self.descriptor_launch = _DescriptorLaunch.of(kernel)

    def launch(self, grid, stream: int, args: tuple, kwargs: dict) -> None:
        kernel = self.kernel
        tail = self.tail
        if self.live:
            tail = list(tail)
            for i, name in self.live:
                tail[i] = kwargs[name]
            tail = tuple(tail)
        values = args + tail
        if self.descriptor_launch is not None:
            self.descriptor_launch(grid, stream, kernel, values)
            return
        kernel.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream,
                   kernel.function, kernel.packed_metadata, None, None, None, *values)


class Launcher:
    """``kernel[grid]`` with a per-key cache of compiled kernels (module docstring)."""

    _shared: dict = {}

    @classmethod
    def of(cls, kernel) -> "Launcher":
        """The one ``Launcher`` of ``kernel`` (created on first use)."""
        launcher = cls._shared.get(kernel)
        if launcher is None:
            launcher = cls._shared[kernel] = cls(kernel)
        return launcher

    def __init__(self, kernel):
        self.kernel = kernel
        self._direct: Optional[bool] = None
        self._entries: dict[tuple, _Entry] = {}

    def __getitem__(self, grid):
        def launch(*args, stream: Optional[torch.cuda.Stream] = None, **kwargs):
            return self._launch(grid, stream, args, kwargs)
        return launch

    def _launch(self, grid, stream, args: tuple, kwargs: dict):
        if self._direct is None:
            self._direct = isinstance(self.kernel, JITFunction) and torch.cuda.is_available()
        if not self._direct or _hooks_set():
            return self._through_triton(grid, stream, args, kwargs)
        device = torch.cuda.current_device()
        key = (device, specialization_key(args, kwargs))
        try:
            entry = self._entries.get(key)
        except TypeError:  # an unhashable argument value
            return self._through_triton(grid, stream, args, kwargs)
        if entry is None:
            kernel = self._through_triton(grid, stream, args, kwargs)
            if kernel is not None:
                if len(self._entries) >= MAX_KEYS:
                    self._entries.clear()
                self._entries[key] = _Entry(kernel, self.kernel, args, kwargs)
            return kernel
        raw = stream.cuda_stream if stream is not None else torch._C._cuda_getCurrentRawStream(device)
        entry.launch(grid, raw, args, kwargs)
        return entry.kernel

    def _through_triton(self, grid, stream, args: tuple, kwargs: dict):
        if stream is None:
            return self.kernel[grid](*args, **kwargs)
        with torch.cuda.stream(stream):
            return self.kernel[grid](*args, **kwargs)
