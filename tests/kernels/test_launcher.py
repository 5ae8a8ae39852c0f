"""The launch cache's key refines Triton's specialization, holds no tensor, and orders a launch's
arguments like Triton's binder (CPU: Triton's binder is built for an sm_90 target, no GPU)."""

from __future__ import annotations

import gc
import itertools
import types
import weakref

import pytest
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature
from triton.tools.tensor_descriptor import TensorDescriptor

from tessera.kernels.triton.launcher import Launcher, _Entry, specialization_key


@triton.jit
def _kernel(X, DESC, n, f, flag, maybe, m=3, C: tl.constexpr = 2):
    pass


pytestmark = pytest.mark.skipif(not isinstance(_kernel, JITFunction),
                                reason="kernels are interpreted (TRITON_INTERPRET=1): no binder")


def _triton_binder():
    return create_function_from_signature(_kernel.signature, _kernel.params,
                                          make_backend(GPUTarget("cuda", 90, 32)))


def _variants():
    """Launch arguments differing in each way Triton specializes on, and in ways it does not."""
    base = torch.zeros(4096, dtype=torch.float16)
    other = torch.zeros(4096, dtype=torch.bfloat16)
    pointers = [base[:64], base[1:65], base[8:72], other[:64], other[8:72]]
    square = base.view(64, 64)
    descriptors = [TensorDescriptor(square, [64, 64], [64, 1], [16, 16]),
                   TensorDescriptor(square, [64, 64], [64, 1], [32, 16]),
                   TensorDescriptor(square[16:], [48, 64], [64, 1], [16, 16])]
    ints = [1, 2, 16, 17, 32, 2 ** 31, 2 ** 31 + 16, True]
    floats = [1.0, 0.5]
    maybes = [None, base[:64]]
    kwargs = [{}, {"C": 3}, {"C": 2, "m": 1}, {"m": 16, "num_warps": 8}]
    for x, d, n, f, maybe, kw in itertools.product(pointers, descriptors, ints, floats, maybes, kwargs):
        yield (x, d, n, f, True, maybe), kw
    yield (base[:64], descriptors[0], 1.0, 0.5, True, None), {}   # a float where an int was


def test_equal_keys_imply_equal_triton_specialization():
    binder = _triton_binder()
    seen = {}
    for args, kwargs in _variants():
        options = {k: v for k, v in kwargs.items() if k not in _kernel.arg_names}
        params = {k: v for k, v in kwargs.items() if k in _kernel.arg_names}
        _, specialization, _ = binder(*args, **params, **options)
        triton_key = (repr(specialization), repr(sorted(options.items())))
        key = specialization_key(args, kwargs)
        assert seen.setdefault(key, triton_key) == triton_key, (args, kwargs)


def test_key_separates_alignment_dtype_and_value_types():
    base = torch.zeros(256, dtype=torch.float16)
    assert specialization_key((base[:8],), {}) == specialization_key((base[8:16],), {})
    assert specialization_key((base[:8],), {}) != specialization_key((base[1:9],), {})
    assert specialization_key((base[:8],), {}) != specialization_key((base.float()[:8],), {})
    keys = {specialization_key((value,), {}) for value in (1, True, 1.0)}
    assert len(keys) == 3
    assert specialization_key((2,), {"B": 1}) != specialization_key((2,), {"B": True})


def test_key_holds_no_tensor():
    t = torch.zeros(64)
    ref = weakref.ref(t)
    desc = TensorDescriptor(t.view(8, 8), [8, 8], [8, 1], [8, 8])
    key = specialization_key((t, desc), {"C": 1, "maybe": t, "DESC": desc})
    del t, desc
    gc.collect()
    assert ref() is None
    hash(key)
    base = torch.zeros(64, dtype=torch.float16)
    assert specialization_key((1,), {"maybe": base[:8]}) == specialization_key((1,), {"maybe": base[8:16]})
    assert specialization_key((1,), {"maybe": base[:8]}) != specialization_key((1,), {"maybe": base[1:9]})


def test_gluon_descriptors_key_by_dtype_block_and_layout_and_hold_no_tensor():
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    t = torch.zeros(64, 64, dtype=torch.bfloat16)
    ref = weakref.ref(t)

    def layout(block, swizzle=None):
        default = gl.NVMMASharedLayout.get_default_for(block, gl.bfloat16)
        return default if swizzle is None else gl.NVMMASharedLayout(swizzle, 16, 2)

    def desc(base, block, lay):
        return GluonDescriptor(base, list(base.shape), list(base.stride()), block, lay)
    one = specialization_key((desc(t, [16, 16], layout([16, 16])),), {})
    assert one == specialization_key((desc(t[16:], [16, 16], layout([16, 16])),), {})
    assert one != specialization_key((desc(t, [32, 16], layout([32, 16])),), {})
    assert one != specialization_key((desc(t, [16, 16], layout([16, 16], swizzle=64)),), {})
    assert one != specialization_key((desc(t.half(), [16, 16], layout([16, 16])),), {})
    del t
    gc.collect()
    assert ref() is None
    hash(one)


def test_entry_takes_tensor_keywords_per_launch_and_holds_none():
    """A tensor passed by keyword reaches each launch as that launch's tensor, and the cached
    entry keeps no reference to the first one."""
    compiled = _Recorded()
    x, first, second = torch.zeros(4), torch.zeros(8), torch.zeros(8)
    ref = weakref.ref(first)
    entry = _Entry(compiled, _kernel, (x, "desc", 4, 0.5, False), {"maybe": first, "C": 9})
    entry.launch((1,), 0, (x, "desc", 4, 0.5, False), {"maybe": first, "C": 9})
    entry.launch((1,), 0, (x, "desc", 4, 0.5, False), {"maybe": second, "C": 9})
    assert compiled.calls[0][9 + 5] is first and compiled.calls[1][9 + 5] is second
    compiled.calls.clear()
    del first
    gc.collect()
    assert ref() is None


class _Recorded:
    """Stands for a compiled kernel: records the arguments of ``run``."""
    function = packed_metadata = None

    def __init__(self):
        self.calls = []

    def run(self, *args):
        self.calls.append(args)


def test_entry_orders_arguments_like_the_signature():
    compiled = _Recorded()
    x = torch.zeros(4)
    entry = _Entry(compiled, _kernel, (x, "desc"), {"flag": False, "n": 4, "f": 0.5, "maybe": None,
                                                     "C": 9, "num_warps": 4})
    entry.launch((5,), 7, (x, "desc"), {})
    (call,) = compiled.calls
    assert call[:4] == (5, 1, 1, 7)
    assert call[9:] == (x, "desc", 4, 0.5, False, None, 3, 9)


def test_launcher_without_cuda_goes_through_triton():
    from tessera.bench.hopper_compile import LaunchRecorder
    launcher = Launcher(_kernel)
    with LaunchRecorder() as recorder:
        launcher[(1,)](torch.zeros(4), None, 1, 1.0, True, None)
        launcher[(1,)](torch.zeros(4), None, 1, 1.0, True, None)
    assert len(recorder.launches) == 2
    assert not launcher._entries


# ``_kernel``'s launch signature (slot 1 a descriptor).
_KERNEL_SIGNATURE = {0: "*fp32", 1: "tensordesc<fp16[16, 32]>", 2: "i32", 3: "fp32", 4: "i1",
                     5: "*fp32", 6: "i32", 7: "constexpr"}


def _descriptor_kernel(received: list, signature: dict = _KERNEL_SIGNATURE, metas=None):
    """A stand-in compiled kernel of launch ``signature`` (default ``_kernel``'s) whose C launch
    sits behind Triton's own descriptor wrapper (``metas``: its descriptors' tensor-map
    metadata, or None) and records what it receives."""
    from triton.backends.nvidia.driver import CudaLauncher, wrap_handle_tensordesc

    run = object.__new__(CudaLauncher)
    run.launch = wrap_handle_tensordesc(lambda *a: received.append(a), signature, metas)
    run.global_scratch_size = run.profile_scratch_size = 0
    run.global_scratch_align = run.profile_scratch_align = 1
    run.launch_cooperative_grid, run.launch_pdl, run.num_ctas = False, False, 1

    class Compiled:
        function, packed_metadata = 11, ("meta",)

    Compiled.run = run
    return Compiled


def test_descriptor_launch_passes_what_tritons_wrapper_passes():
    """``_DescriptorLaunch`` hands the C launch the same arguments as Triton's own descriptor
    wrapper (``wrap_handle_tensordesc`` inside ``CudaLauncher``), descriptors expanded in place."""
    from tessera.kernels.triton.launcher import _DescriptorLaunch

    received = []
    Compiled = _descriptor_kernel(received, {0: "*fp32", 1: "tensordesc<fp16[16, 32]>", 2: "i32",
                                             3: "tensordesc<fp16[1, 64]>", 4: "constexpr"})
    run = Compiled.run
    x = torch.zeros(64, 64, dtype=torch.float16)
    values = (torch.zeros(4), TensorDescriptor.from_tensor(x, [16, 32]), 5,
              TensorDescriptor(x, [64, 64], [64, 1], [1, 64]), 3)
    run(4, 2, 1, 99, Compiled.function, Compiled.packed_metadata, None, None, None, *values)
    direct = _DescriptorLaunch.of(Compiled)
    assert direct is not None
    direct((4, 2), 99, Compiled, values)
    through_triton, ours = received
    assert len(through_triton) == len(ours)
    assert all(a is b or a == b for a, b in zip(through_triton, ours))
    run.global_scratch_size = 8
    assert _DescriptorLaunch.of(Compiled) is None   # scratch memory: keep Triton's path


def test_tensor_maps_are_encoded_once_per_distinct_input(monkeypatch):
    """``tensor_map_args`` encodes a descriptor's tensor map once per distinct (metadata fields,
    base address, shape, strides, padding) and hands the same launch arguments back after;
    any change of those inputs, or the switch off, encodes again."""
    from tessera.kernels.triton import launcher

    encoded = []

    def fake_encode(desc, meta):
        encoded.append((desc.base.data_ptr(), tuple(desc.shape), meta and meta["swizzle"]))
        return [object(), *desc.shape, *desc.strides]

    monkeypatch.setattr(launcher, "make_tensordesc_arg", fake_encode)
    monkeypatch.setattr(launcher, "_TENSOR_MAPS", {})
    meta = {"swizzle": 128, "elem_size": 2, "elem_type": "fp16", "block_size": [16, 64],
            "fp4_padded": False}
    key = launcher._meta_key(meta)
    x = torch.zeros(64, 64, dtype=torch.float16)
    y = torch.zeros(64, 64, dtype=torch.float16)
    first = launcher.tensor_map_args(TensorDescriptor(x, [64, 64], [64, 1], [16, 64]), meta, key)
    again = launcher.tensor_map_args(TensorDescriptor(x, [64, 64], [64, 1], [16, 64]), meta, key)
    assert again is first and len(encoded) == 1
    launcher.tensor_map_args(TensorDescriptor(y, [64, 64], [64, 1], [16, 64]), meta, key)
    launcher.tensor_map_args(TensorDescriptor(x, [32, 64], [64, 1], [16, 64]), meta, key)
    launcher.tensor_map_args(TensorDescriptor(x, [32, 128], [128, 1], [16, 64]), meta, key)
    other = dict(meta, swizzle=64)
    launcher.tensor_map_args(TensorDescriptor(x, [64, 64], [64, 1], [16, 64]), other,
                             launcher._meta_key(other))
    assert len(encoded) == 5
    monkeypatch.setattr(launcher, "CACHE_TENSOR_MAPS", False)
    launcher.tensor_map_args(TensorDescriptor(x, [64, 64], [64, 1], [16, 64]), meta, key)
    assert len(encoded) == 6
    for _ in range(2):   # no metadata (no tensor map): passed through each time
        launcher.tensor_map_args(TensorDescriptor(x, [64, 64], [64, 1], [16, 64]), None, None)
    assert len(encoded) == 8


def _bound_launcher(monkeypatch, compiled, args, kwargs):
    """A ``Launcher`` of ``_kernel`` whose entry for ``args``/``kwargs`` is ``compiled``, as after
    a first launch on device 0 (no GPU: the device and stream lookups are stood in for)."""
    from tessera.kernels.triton import launcher as launcher_module

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launcher_module, "_current_raw_stream", lambda device: 99)
    launcher = Launcher(_kernel)
    launcher._direct = True
    launcher._entries[(0, specialization_key(args, kwargs))] = _Entry(compiled, _kernel, args, kwargs)
    return launcher


def test_bound_launch_passes_what_a_fresh_launch_passes(monkeypatch):
    """A ``BoundLaunch`` with new tensors in its live slots (a plain tensor, a descriptor's base)
    hands the C launch what Triton's descriptor wrapper hands it for a launch built afresh on
    those tensors, and holds none of the tensors it was bound with."""
    received = []
    compiled = _descriptor_kernel(received)
    x = torch.zeros(64, 64, dtype=torch.float16)
    first_out, first_in = torch.zeros(4), torch.zeros(64, 64, dtype=torch.float16)
    args = (first_out, TensorDescriptor(first_in, [64, 64], [64, 1], [16, 32]), 5, 0.5, True, x)
    launcher = _bound_launcher(monkeypatch, compiled, args, {"C": 7})
    bound = launcher.bind((4, 2), args, {"C": 7}, live=(0, 1))
    assert bound is not None and bound.usable()
    refs = [weakref.ref(first_out), weakref.ref(first_in)]
    del args, first_out, first_in
    gc.collect()
    assert all(ref() is None for ref in refs)

    out, inp = torch.zeros(4), torch.zeros(64, 64, dtype=torch.float16)
    bound(out, inp)
    fresh = (out, TensorDescriptor(inp, [64, 64], [64, 1], [16, 32]), 5, 0.5, True, x, 3, 7)
    compiled.run(4, 2, 1, 99, compiled.function, compiled.packed_metadata, None, None, None, *fresh)
    ours, through_triton = received
    assert len(ours) == len(through_triton)
    assert all(a is b or a == b for a, b in zip(ours, through_triton))
    assert any(a is inp for a in ours)   # no metadata: the descriptor's base is passed itself


def test_bound_launch_encodes_each_base_once_per_slot(monkeypatch):
    """With tensor-map metadata, a bound descriptor slot encodes its map once per base address
    (the shape and strides are the bound ones) and reuses it after; with the map cache off it
    encodes on every call."""
    from tessera.kernels.triton import launcher as launcher_module

    encoded = []

    def fake_encode(desc, meta):
        encoded.append(desc.base.data_ptr())
        return [("map", desc.base.data_ptr()), *desc.shape, *desc.strides]

    monkeypatch.setattr(launcher_module, "make_tensordesc_arg", fake_encode)
    meta = {"swizzle": 128, "elem_size": 2, "elem_type": "fp16", "block_size": [16, 32],
            "fp4_padded": False}
    received = []
    compiled = _descriptor_kernel(received, metas=[meta])
    a, b = (torch.zeros(64, 64, dtype=torch.float16) for _ in range(2))
    args = (torch.zeros(4), TensorDescriptor(a, [64, 64], [64, 1], [16, 32]), 5, 0.5, True, None)
    launcher = _bound_launcher(monkeypatch, compiled, args, {})
    bound = launcher.bind((1,), args, {}, live=(1,))
    before = len(encoded)
    for base in (a, b, a, b):
        bound(base)
    assert encoded[before:] == [a.data_ptr(), b.data_ptr()]
    assert [call[14] for call in received] == [("map", t.data_ptr()) for t in (a, b, a, b)]
    monkeypatch.setattr(launcher_module, "CACHE_TENSOR_MAPS", False)
    bound(a)
    assert encoded[before:] == [a.data_ptr(), b.data_ptr(), a.data_ptr()]


def test_bound_launches_answer_only_their_owners_and_switch(monkeypatch):
    """``BoundLaunches.get`` returns a remembered launch only for the owners it was bound with,
    while binding is on and no launch hook is set; a bound launch takes one tensor per live slot;
    ``bind`` refuses keyword live slots."""
    from tessera.kernels.triton import launcher as launcher_module

    received = []
    compiled = _descriptor_kernel(received)
    x = torch.zeros(64, 64, dtype=torch.float16)
    args = (torch.zeros(4), TensorDescriptor(x, [64, 64], [64, 1], [16, 32]), 5, 0.5, True, None)
    launcher = _bound_launcher(monkeypatch, compiled, args, {})
    owner, other = object(), object()
    cache = launcher_module.BoundLaunches()
    cache.remember("key", launcher, (1,), args, {}, live=(0,), owners=(owner,))
    assert cache.get("key", (owner,)) is not None
    assert cache.get("key", (other,)) is None
    assert cache.get("other key", (owner,)) is None
    with pytest.raises(ValueError, match="takes 1 tensors"):
        cache.get("key", (owner,))(x, x)
    monkeypatch.setattr(launcher_module, "_hooks_set", lambda: True)
    assert cache.get("key", (owner,)) is None
    monkeypatch.setattr(launcher_module, "_hooks_set", lambda: False)
    monkeypatch.setattr(launcher_module, "BIND_LAUNCHES", False)
    assert cache.get("key", (owner,)) is None
    with pytest.raises(ValueError, match="positional"):
        launcher.bind((1,), args, {}, live=(6,))


def test_plain_bound_launch_passes_what_the_keyed_launch_passes(monkeypatch):
    """A launch without descriptors (``kernel.run`` called directly, as ``row_dot``'s) binds to a
    ``BoundPlainLaunch``: new tensors in its live slots, every other argument (the tail of
    defaults and constexprs included) as the keyed launch passes them, on the current stream;
    it holds none of the tensors it was bound with, and a descriptor in a live slot gets no
    plain binding."""
    from tessera.kernels.triton.launcher import BoundPlainLaunch

    received = []

    class Compiled:
        function, packed_metadata = 11, ("meta",)

        @staticmethod
        def run(*args):
            received.append(args)

    first_out, first_in = torch.zeros(4), torch.zeros(8)
    args = (first_out, None, 5, 0.5, True, first_in)
    launcher = _bound_launcher(monkeypatch, Compiled, args, {"C": 7})
    assert launcher._entries[next(iter(launcher._entries))].descriptor_launch is None
    bound = launcher.bind((4, 2), args, {"C": 7}, live=(0, 5))
    assert isinstance(bound, BoundPlainLaunch) and bound.usable()
    refs = [weakref.ref(first_out), weakref.ref(first_in)]
    del args, first_out, first_in
    gc.collect()
    assert all(ref() is None for ref in refs)

    out, inp = torch.zeros(4), torch.zeros(8)
    bound(out, inp)
    launcher._launch((4, 2), types.SimpleNamespace(cuda_stream=99), (out, None, 5, 0.5, True, inp), {"C": 7})
    ours, keyed = received
    assert len(ours) == len(keyed) and ours[3] == 99
    assert all(a is b or a == b for a, b in zip(ours, keyed))
    with pytest.raises(ValueError, match="takes 2 tensors"):
        bound(out)
    x = torch.zeros(64, 64, dtype=torch.float16)
    with_descriptor = (torch.zeros(4), TensorDescriptor(x, [64, 64], [64, 1], [16, 32]), 5, 0.5, True, None)
    launcher = _bound_launcher(monkeypatch, Compiled, with_descriptor, {})
    assert launcher.bind((1,), with_descriptor, {}, live=(1,)) is None
