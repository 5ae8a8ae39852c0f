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

``Launcher.bind`` goes one step further for a call site that launches one kernel many times
with the same arguments except a few tensors (the Gluon kernels' q, k, v, o): a ``BoundLaunch``
keeps the launch's expanded argument list and fills in only those tensors (and the tensor maps
of descriptors over them) per call; a ``BoundPlainLaunch`` does the same for a kernel that takes
no descriptors (``row_dot``).
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
# Off: call sites do not keep ``BoundLaunch``es (every launch takes the keyed path; A/B timing).
BIND_LAUNCHES = True


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


class BoundLaunch:
    """One launch of a compiled descriptor-taking kernel with every argument fixed except the
    tensors at a few positional slots (``Launcher.bind``): ``bound(*tensors)`` launches it on
    the current stream with those tensors in place, in slot order. A slot holding a tensor
    descriptor takes a tensor for its base; the descriptor's shape, strides, block, layout and
    padding stay the bound ones, so each tensor passed must have the shape, strides, dtype and
    16-byte alignment of the one it replaces (the caller's key guarantees it). Its tensor map is
    encoded once per base address and slot (a map holds an address, not the tensor). Holds no
    tensor of the bound launch's live slots."""

    __slots__ = ("raw", "function", "packed", "cooperative", "pdl", "grid", "device", "template",
                 "slots", "owners")

    def __init__(self, raw, function, packed, cooperative, pdl, grid, device, template, slots, owners):
        self.raw = raw
        self.function = function
        self.packed = packed
        self.cooperative = cooperative
        self.pdl = pdl
        self.grid = grid
        self.device = device
        self.template = template   # the expanded argument list, live slots emptied
        self.slots = slots         # ((start, stop, descriptor prototype or None, metadata, maps), ...)
        self.owners = owners       # objects the caller's key names by identity, kept alive with it

    def usable(self) -> bool:
        """Whether this launch may run now: binding on, no launch hooks, its device current."""
        return BIND_LAUNCHES and not _hooks_set() and torch.cuda.current_device() == self.device

    def __call__(self, *tensors) -> None:
        if len(tensors) != len(self.slots):
            raise ValueError(f"BoundLaunch: takes {len(self.slots)} tensors (its live slots), "
                             f"got {len(tensors)}")
        values = self.template.copy()
        for (start, stop, proto, meta, maps), t in zip(self.slots, tensors):
            if proto is None:
                values[start] = t
                continue
            ptr = t.data_ptr()
            expanded = maps.get(ptr) if maps is not None and CACHE_TENSOR_MAPS else None
            if expanded is None:
                desc = object.__new__(type(proto))
                desc.__dict__.update(proto.__dict__, base=t)
                expanded = make_tensordesc_arg(desc, meta)
                if maps is not None:
                    if len(maps) >= MAX_KEYS:
                        maps.clear()
                    maps[ptr] = expanded
            values[start:stop] = expanded
        x, y, z = self.grid
        self.raw(x, y, z, _current_raw_stream(self.device), self.function,
                 self.cooperative, self.pdl, None, None, self.packed, None, None, None, *values)


class BoundPlainLaunch:
    """``BoundLaunch`` for a compiled kernel that takes no tensor descriptors: ``bound(*tensors)``
    launches it on the current stream with ``tensors`` at its live slots (in slot order), each
    with the dtype and 16-byte alignment of the one it replaces (the caller's key guarantees
    it: the kernel is specialized on both)."""

    __slots__ = ("run", "function", "packed", "grid", "device", "template", "slots", "owners")

    def __init__(self, run, function, packed, grid, device, template, slots, owners):
        self.run = run
        self.function = function
        self.packed = packed
        self.grid = grid
        self.device = device
        self.template = template   # the argument list, live slots emptied
        self.slots = slots         # positions of the live tensors
        self.owners = owners

    usable = BoundLaunch.usable

    def __call__(self, *tensors) -> None:
        if len(tensors) != len(self.slots):
            raise ValueError(f"BoundPlainLaunch: takes {len(self.slots)} tensors (its live slots), "
                             f"got {len(tensors)}")
        values = self.template.copy()
        for slot, t in zip(self.slots, tensors):
            values[slot] = t
        x, y, z = self.grid
        self.run(x, y, z, _current_raw_stream(self.device), self.function, self.packed, None, None,
                 None, *values)


class BoundLaunches:
    """A call site's ``BoundLaunch``es: site key -> bound launch. The key names the launch's
    fixed arguments (shapes, strides, dtypes, options; objects such as plans by ``id``, listed
    as ``owners``, which are kept alive with the launch and checked by identity)."""

    def __init__(self):
        self._bound: dict = {}

    def get(self, key, owners: tuple = ()) -> Optional[BoundLaunch]:
        """The bound launch of ``key`` made with these ``owners`` when it may run now, else None."""
        bound = self._bound.get(key)
        if bound is None or not bound.usable() or any(a is not b for a, b in zip(bound.owners, owners)):
            return None
        return bound

    def remember(self, key, launcher: "Launcher", grid, args: tuple, kwargs: dict, live: tuple,
                 owners: tuple = ()) -> None:
        """Bind the launch just made (``launcher.bind``) under ``key``, when binding is on."""
        if not BIND_LAUNCHES:
            return
        bound = launcher.bind(grid, args, kwargs, live, owners)
        if bound is not None:
            if len(self._bound) >= MAX_KEYS:
                self._bound.clear()
            self._bound[key] = bound


def _current_raw_stream(device: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device)


def _prototype(desc):
    """A copy of descriptor ``desc`` without its base tensor."""
    proto = object.__new__(type(desc))
    proto.__dict__.update(desc.__dict__, base=None)
    return proto


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

    def bind(self, grid, args: tuple, kwargs: dict, live: tuple[int, ...], owners: tuple = ()
             ) -> Optional[BoundLaunch]:
        """A ``BoundLaunch`` of the launch ``self[grid](*args, **kwargs)`` made before on the
        current device, whose positional slots ``live`` (tensors or tensor descriptors) take new
        tensors per call (a ``BoundPlainLaunch`` for a kernel without descriptors); ``owners``
        are kept alive with it. None where that launch does not take the direct path (launch
        hooks, tensor keyword arguments, or not launched yet)."""
        if not set(live) <= set(range(len(args))):
            raise ValueError(f"Launcher.bind: live slots {sorted(live)} must be positional")
        if not self._direct or _hooks_set() or make_tensordesc_arg is None:
            return None
        device = torch.cuda.current_device()
        try:
            entry = self._entries.get((device, specialization_key(args, kwargs)))
        except TypeError:
            return None
        if entry is None or entry.live:
            return None
        grid3 = (grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1)
        if entry.descriptor_launch is None:
            return self._bind_plain(entry, grid3, device, args, live, owners)
        launch = entry.descriptor_launch
        values = list(args + entry.tail)
        places = {position: (meta, meta_key) for position, meta, meta_key in launch.places}
        template, starts = [], {}
        for position, value in enumerate(values):
            starts[position] = len(template)
            if position in places:
                meta, meta_key = places[position]
                template += tensor_map_args(value, meta, meta_key)
            else:
                template.append(value)
        slots = []
        for position in live:
            value = values[position]
            start = starts[position]
            if position in places:
                meta, meta_key = places[position]
                stop = start + len(tensor_map_args(value, meta, meta_key))
                maps = {} if meta_key is not None else None
                slots.append((start, stop, _prototype(value), meta, maps))
            elif isinstance(value, torch.Tensor):
                stop = start + 1
                slots.append((start, stop, None, None, None))
            else:
                raise ValueError(f"Launcher.bind: live slot {position} holds a "
                                 f"{type(value).__name__}, not a tensor or descriptor")
            template[start:stop] = [None] * (stop - start)
        kernel = entry.kernel
        return BoundLaunch(launch.raw, kernel.function, kernel.packed_metadata, launch.cooperative,
                           launch.pdl, grid3, device, template, tuple(slots), owners)

    @staticmethod
    def _bind_plain(entry: _Entry, grid3: tuple, device: int, args: tuple, live: tuple[int, ...],
                    owners: tuple) -> Optional["BoundPlainLaunch"]:
        """``bind`` of a launch through ``kernel.run``: its argument list with the ``live`` slots
        emptied; None unless every live slot holds a tensor (descriptors there need the direct
        descriptor path)."""
        template = list(args + entry.tail)
        if not all(isinstance(template[position], torch.Tensor) for position in live):
            return None
        for position in live:
            template[position] = None
        kernel = entry.kernel
        return BoundPlainLaunch(kernel.run, kernel.function, kernel.packed_metadata, grid3, device,
                                template, tuple(live), owners)

    def _through_triton(self, grid, stream, args: tuple, kwargs: dict):
        if stream is None:
            return self.kernel[grid](*args, **kwargs)
        with torch.cuda.stream(stream):
            return self.kernel[grid](*args, **kwargs)
