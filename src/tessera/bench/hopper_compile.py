"""Ahead-of-time compilation of Triton kernel launches for Hopper (sm_90) on a machine without a GPU.

An op runs on small CPU tensors inside ``LaunchRecorder`` (no kernel executes: each launch is recorded
as ``(fn, args, kwargs)``); ``compile_distinct`` then compiles each distinct kernel of the recorded
launches once, with its constexprs, argument types and launch options, and ``resources`` reads
registers and spills from the result.
Used by ``benchmarks/compile_check.py``, ``benchmarks/linear_compile_check.py`` and the linear
kernels' compile test. ``as_launched`` compiles one launch through Triton's own argument binder
instead (every specialization a GPU launch makes); ``routed_as_on_hopper`` records the launches a
tessera call makes on a Hopper GPU, and ``programs_per_sm`` reads the occupancy of a compiled
kernel (the Gluon kernels' compile check and test). ``stubbed_launches``, under it, also stubs
the launches of ``benchmarks/cpu_host_path.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import tempfile
from collections import Counter
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from triton.tools.tensor_descriptor import TensorDescriptor

HOPPER = GPUTarget("cuda", 90, 32)
# Shared memory one block may use on Hopper (227 KB).
SHARED_LIMIT = 232448
_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
           torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}


class LaunchRecorder:
    """Context in which ``kernel[grid](...)`` records ``(fn, args, kwargs)`` in ``.launches`` instead
    of launching."""

    def __init__(self):
        self.launches = []

    def __enter__(self):
        self._getitem = JITFunction.__getitem__
        launches = self.launches
        JITFunction.__getitem__ = lambda fn, grid: (lambda *args, **kwargs: launches.append((fn, args, kwargs)))
        return self

    def __exit__(self, *exc):
        JITFunction.__getitem__ = self._getitem


def jit_function(kernel) -> JITFunction:
    """The ``JITFunction`` under ``triton.autotune`` / ``triton.heuristics`` wrappers."""
    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def launch_source(fn: JITFunction, args: tuple, kwargs: dict):
    """``(ASTSource, launch options, key)`` of one recorded launch: tensors stand for 16-byte aligned
    pointers of their dtype, ints for i32 (i64 beyond its range; 1 as a constant and multiples of
    16 marked divisible, as Triton's launch specializes them), None and constexprs for constants;
    ``key`` is equal for launches that compile to the same kernel."""
    names = fn.arg_names
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    options = {k: v for k, v in kwargs.items() if k not in names}
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(names, fn.params)):
        value = bound.get(name, param.default)
        if param.is_constexpr or value is None:
            signature[name] = "constexpr"
            constexprs[(i,)] = value
        elif isinstance(value, TensorDescriptor):
            block = ",".join(str(b) for b in value.block_shape)
            signature[name] = f"tensordesc<{_DTYPES[value.base.dtype]}[{block}]>"
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            # As Triton's launch specializes ints: 1 becomes a constant, multiples of 16 carry
            # their divisibility (vectorized addressing), unless the kernel opts out.
            signature[name] = "i64" if abs(value) >= 2 ** 31 else "i32"
            if not param.do_not_specialize:
                if value == 1:
                    signature[name] = "constexpr"
                    constexprs[(i,)] = 1
                elif value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {name} of type {type(value).__name__}")
    key = (fn.__name__, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
           repr(sorted(attrs.items())), repr(sorted(options.items())))
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), options, key


def compile_distinct(launches, seen: set):
    """For each recorded launch whose kernel is not in ``seen`` yet (keys of ``launch_source``, added
    as they come): ``(fn, launch options, sm_90 kernel or None, compile error or None)``."""
    for fn, args, kwargs in launches:
        src, options, key = launch_source(fn, args, kwargs)
        if key in seen:
            continue
        seen.add(key)
        try:
            yield fn, options, triton.compile(src, target=HOPPER, options=options), None
        except Exception as exc:  # the caller reports every failing variant
            yield fn, options, None, exc


class _HopperStandIn:
    """Triton's active driver as far as ``JITFunction.run(..., warmup=True)`` asks: device 0, no
    stream, an sm_90 target."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return HOPPER

    def get_active_torch_device(self):
        return torch.device("cpu")


def as_launched(fn: JITFunction, args: tuple, kwargs: dict):
    """``fn`` (a Triton or Gluon JIT function) compiled for sm_90 exactly as its launch with ``args``
    and ``kwargs`` (CPU tensors standing for the GPU's) compiles on a Hopper GPU: Triton's own binder
    specializes every argument (ints equal to 1 or divisible by 16, pointer alignment, descriptors),
    so registers and SASS are the cubin's the GPU caches. Nothing runs; a GPU is not needed. A
    hand-made signature can hide what the GPU compiles: the Gluon forward of the 2-D kernel-17
    suite case at D = 128 took 175 registers on the GPU (two programs per SM) where a signature
    without the specializations showed 151."""
    from triton.runtime import driver
    previous = driver._active
    driver.set_active(_HopperStandIn())
    try:
        return fn.run(*args, grid=(1,), warmup=True, **kwargs)
    finally:
        driver.set_active(previous)


@contextlib.contextmanager
def stubbed_launches(as_hopper: bool = True, record: bool = True):
    """Context in which tessera's Triton backend takes CPU tensors and runs nothing: every launch
    through a ``launcher.Launcher`` is appended to the yielded list as ``(jit function, args,
    kwargs)`` (dropped when not ``record``, so host timings keep no tensors alive) and outputs are
    garbage. The backend takes the tensors as interpreted (``backend.INTERPRETED``: no TMA
    descriptors) unless ``as_hopper``: then the routes see sm_90 (``forward_route.on_hopper``) and
    calls get the GPU's tile configs, so the Gluon paths run up to their launches, descriptors
    included."""
    from ..kernels.triton import backend, forward_route, launcher
    launches = []
    configs = backend._configs

    def gpu_configs(spec, q, k, v):
        return configs(dataclasses.replace(spec, interpret=False), q, k, v)

    def launch(self, grid, stream, args, kwargs):
        if record:
            launches.append((self.kernel, args, kwargs))

    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(launcher.Launcher, "_launch", launch))
        patches.enter_context(mock.patch.object(backend, "INTERPRETED", True))
        if as_hopper:
            patches.enter_context(mock.patch.object(backend, "_configs", gpu_configs))
            patches.enter_context(mock.patch.object(forward_route, "on_hopper", lambda t: True))
        yield launches


def routed_as_on_hopper():
    """``stubbed_launches`` as on a Hopper GPU, recording: with ``as_launched`` it gives the
    kernels a call runs on the GPU, as the GPU compiles them."""
    return stubbed_launches(as_hopper=True, record=True)


def programs_per_sm(kernel) -> int:
    """How many programs of the compiled ``kernel`` an H100 / H200 SM holds at once: the least of
    its registers (65,536 per SM, allocated per warp in 256s), shared memory (228 KB per SM, 1 KB
    reserved per program) and threads (2,048 per SM)."""
    registers, _stack = resources(kernel)
    warps = kernel.metadata.num_warps
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = 65536 // (per_warp * warps)
    by_shared = 228 * 1024 // (kernel.metadata.shared + 1024)
    return min(by_registers, by_shared, 2048 // (32 * warps))


def _cubin_tool(tool: str, kernel, *flags: str) -> str:
    """stdout of Triton's bundled CUDA ``tool`` run on the kernel's cubin."""
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([path, *flags, f.name], capture_output=True, text=True).stdout


def sass(kernel, line_info: bool = True) -> str:
    """The compiled kernel's SASS (nvdisasm), with its source lines when ``line_info``."""
    return _cubin_tool("nvdisasm", kernel, "-c", *(("-g",) if line_info else ()))


def sass_loops(text: str) -> list[tuple[str, int, int, Counter]]:
    """The innermost loops of nvdisasm output ``text`` (``sass``): for each backward branch whose
    span holds no other, ``(target label, first and last instruction index, opcode counts)``,
    opcodes without predicates and modifiers, in program order."""
    labels: dict[str, int] = {}
    instructions: list[str] = []
    for line in text.splitlines():
        label = re.match(r"^\s*(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        op = re.search(r"/\*[0-9a-f]{4}\*/\s+(.*?);", line)
        if op:
            instructions.append(op.group(1).strip())
    spans = []
    for end, text_ in enumerate(instructions):
        target = re.search(r"BRA\s+`\((\.L_x_\d+)\)", text_)
        if target and labels.get(target.group(1), end) < end:
            spans.append((target.group(1), labels[target.group(1)], end))
    loops = []
    for label, start, end in spans:
        if any(start <= s2 and e2 <= end and (s2, e2) != (start, end) for _, s2, e2 in spans):
            continue
        ops = Counter(i.split()[1 if i.startswith("@") else 0].split(".")[0]
                      for i in instructions[start:end + 1])
        loops.append((label, start, end, ops))
    return loops


def resources(kernel) -> tuple[int, int]:
    """``(registers per thread, stack bytes per thread)`` of a compiled kernel (the stack frame is
    local memory holding spilled registers), read by cuobjdump from its cubin; -1 when unread."""
    out = _cubin_tool("cuobjdump", kernel, "-res-usage")
    regs, stack = re.search(r"REG:(\d+)", out), re.search(r"STACK:(\d+)", out)
    return int(regs.group(1)) if regs else -1, int(stack.group(1)) if stack else -1
