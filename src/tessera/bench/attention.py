"""The attention benchmark suite: tessera against SDPA (cuDNN, flash) and FlexAttention.

Every implementation of a case runs on the same inputs in the same process. A record follows the
shared results format: ``{"suite", "case", "impl", "direction", "ms", "useful_tflops",
"tokens_per_s", "tbps"}``; ``useful_tflops`` counts only allowed (query, key) pairs:
``4 * B * H * pairs * D`` forward, 3.5x that forward+backward.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .timing import graph_replay_ms, median_ms, warm_up_gpu

# Case-name suffix of the records timed by CUDA graph replay (``run_case(graph=True)``).
GRAPH_SUFFIX = " [cuda graph]"

FWD_BWD_FLOP_FACTOR = 3.5


@dataclass
class Case:
    """One benchmark problem. ``pattern(device)`` builds the tessera Pattern (None = dense)."""

    name: str
    batch: int
    heads: int
    seq: int
    head_dim: int
    pattern: Optional[Callable[[torch.device], object]] = None
    causal: bool = False
    score: str = "softmax"
    low_rank: int = 0
    impls: tuple[str, ...] = ("tessera", "flex")
    auto_row: bool = False
    tags: dict = field(default_factory=dict)
    # N-D neighborhood cases: {"grid", "kernel", "dilation", "stride", "layout"}; tessera runs
    # tessera.natten on [B, *grid, H, D] views (its token permutation timed too), "flex" the
    # row-major pattern, "flex-tiled" the same pattern in tessera's tiled token order.
    na: Optional[dict] = None
    # tessera without tessera.attention's neighborhood route (``unrouted_attention``): the
    # pattern's row-major tile map on the block-sparse kernels.
    unrouted: bool = False
    # SDPA rows: the case's window partition ``(grid, groups)``, where ``groups(grid)`` is the
    # int64 ``[windows, tokens per window]`` token index of each window: q, k and v are cut into
    # windows once, outside the timed call (as a model that partitions its tokens before the qkv
    # projection holds them), and SDPA runs dense on each window.
    windows: Optional[tuple] = None


def _causal_window(left: int):
    from ..patterns import Causal, Window
    return lambda device: Window(left, 0) & Causal()


def _strided():
    from ..patterns import Strided
    return lambda device: Strided(block=128, local_blocks=8, stride=8, causal=True)


def _power():
    from ..patterns import Power
    return lambda device: Power(local=256, causal=True)


def _random_blocks(seq: int, density: float, heads: int):
    from ..patterns.blocksparse import BlockSparse
    return lambda device: BlockSparse.random(seq, density, block=128, num_heads=heads, seed=0, device=device)


def _baseline(seq: int, batch: int, heads: int, dim: int, impls: tuple[str, ...]) -> Case:
    """Dense non-causal run at a sparse case's shape: the reference point for its speedup over
    dense cuDNN and for its sparse efficiency (useful TFLOP/s over tessera's own dense TFLOP/s)."""
    return Case(f"dense baseline S={seq} B={batch} H={heads}", batch, heads, seq, dim, impls=impls)


def gpu_cases() -> list[Case]:
    """The H100 suite of the kernel issue: bf16, D = 128, H = 16. Sparse cases first, then their
    dense baselines, then the dense comparisons and score variants."""
    dense_impls = ("tessera", "sdpa-cudnn", "sdpa-flash", "flex")
    cases = []
    for seq in (16384, 65536):
        cases.append(Case(f"causal window 1024 S={seq}", 1, 16, seq, 128, pattern=_causal_window(1024)))
    for density in (0.1, 0.3):
        cases.append(Case(f"random blocks {int(density * 100)}% S=16384", 1, 16, 16384, 128,
                          pattern=_random_blocks(16384, density, 16)))
    cases.append(Case("strided (S2) S=32768", 1, 16, 32768, 128, pattern=_strided()))
    cases.append(Case("power local 256 S=32768", 1, 16, 32768, 128, pattern=_power()))
    cases += [_baseline(seq, 1, 16, 128, ("sdpa-cudnn", "tessera")) for seq in (16384, 32768, 65536)]
    for seq, batch in ((16384, 2), (4096, 8)):
        cases.append(Case(f"dense S={seq} B={batch}", batch, 16, seq, 128, impls=dense_impls, auto_row=True))
        cases.append(Case(f"causal S={seq} B={batch}", batch, 16, seq, 128, causal=True,
                          impls=dense_impls, auto_row=True))
    cases.append(Case("sigmoid S=16384", 1, 16, 16384, 128, score="sigmoid", impls=("tessera", "reference")))
    cases.append(Case("low-rank bias R=8 S=16384", 1, 16, 16384, 128, low_rank=8, impls=("tessera", "flex")))
    return cases


def _na_case(name: str, grid, kernel, dim: int = 128, dilation=1, stride=1, layout="auto",
             impls=("tessera", "flex", "flex-tiled")) -> Case:
    from ..patterns import Neighborhood
    seq = math.prod(grid)
    return Case(name, 1, 16, seq, dim, pattern=lambda device: Neighborhood(grid, kernel, dilation, stride),
                impls=impls, na={"grid": grid, "kernel": kernel, "dilation": dilation, "stride": stride,
                                 "layout": layout})


def natten_cases() -> list[Case]:
    """The N-D issue's suite: bf16, H = 16, B = 1; tessera in tiled order (and once row-major)
    against FlexAttention row-major and in the same tiled order, with dense baselines."""
    main = [
        _na_case("2-D 128x128 k17", (128, 128), (17, 17)),
        _na_case("2-D 128x128 k17 dil2", (128, 128), (17, 17), dilation=2),
        _na_case("3-D 16x48x48 k5x13x13", (16, 48, 48), (5, 13, 13)),
        _na_case("3-D 16x48x48 blocked 4x8x8", (16, 48, 48), (4, 8, 8), stride=(4, 8, 8)),
        _na_case("1-D 32768 window 2048", (32768,), (2048,)),
    ]
    more = [
        _na_case("2-D 128x128 k17 D=64", (128, 128), (17, 17), dim=64),
        _na_case("3-D 16x48x48 k5x13x13 D=64", (16, 48, 48), (5, 13, 13), dim=64),
        _na_case("3-D 16x48x48 blocked 4x8x8 D=64", (16, 48, 48), (4, 8, 8), stride=(4, 8, 8), dim=64),
        _na_case("1-D 32768 window 2048 D=64", (32768,), (2048,), dim=64),
        _na_case("2-D 128x128 k17 row-major", (128, 128), (17, 17), layout="row-major", impls=("tessera",)),
        # Head dim 32: Swin's and DiNAT's heads.
        _na_case("2-D 128x128 k17 D=32", (128, 128), (17, 17), dim=32),
        _na_case("3-D 16x48x48 k5x13x13 D=32", (16, 48, 48), (5, 13, 13), dim=32),
    ]
    # Grids no 64-token tile shape divides (a 1600 x 1600 image in 16 x 16 patches; an 81-frame
    # 480 x 832 video in a 4 x 16 x 16 latent): padded up to whole tiles, and row-major as before.
    padded = [
        _na_case("2-D 100x100 k17 padded", (100, 100), (17, 17), impls=("tessera", "flex")),
        _na_case("2-D 100x100 k17 row-major", (100, 100), (17, 17), layout="row-major", impls=("tessera",)),
        _na_case("3-D 21x30x52 k5x13x13 padded", (21, 30, 52), (5, 13, 13), impls=("tessera", "flex")),
        _na_case("3-D 21x30x52 k5x13x13 row-major", (21, 30, 52), (5, 13, 13), layout="row-major",
                 impls=("tessera",)),
    ]

    def baselines(cases):
        return [Case(f"dense baseline S={seq} B=1 H=16 D={dim}", 1, 16, seq, dim, impls=("sdpa-cudnn", "tessera"))
                for seq, dim in sorted({(c.seq, c.head_dim) for c in cases})]

    # The D = 128 cases and their baselines first (a run cut short keeps those), then D = 64
    # and D = 32, then the padded grids.
    return (main + baselines(main) + more + baselines([c for c in more if c.head_dim != 128])
            + padded + baselines(padded))


def swin_windows(window):
    """``groups(grid)`` of non-overlapping ``window`` boxes (Swin, MaxViT block attention)."""
    def groups(grid):
        idx = torch.arange(math.prod(grid)).view(*grid)
        for a, w in enumerate(window):
            idx = idx.unflatten(2 * a, (grid[a] // w, w))
        n = len(grid)
        return idx.permute(*range(0, 2 * n, 2), *range(1, 2 * n, 2)).reshape(-1, math.prod(window))
    return groups


def maxvit_grid_windows(grid_size):
    """``groups(grid)`` of MaxViT grid attention: the ``grid_size`` tokens per axis at one offset
    inside their cells."""
    def groups(grid):
        idx = torch.arange(math.prod(grid)).view(*grid)
        for a, g in enumerate(grid_size):
            idx = idx.unflatten(2 * a, (g, grid[a] // g))
        n = len(grid)
        return idx.permute(*range(1, 2 * n, 2), *range(0, 2 * n, 2)).reshape(-1, math.prod(grid_size))
    return groups


def _vision_case(name, grid, batch, heads, dim, pattern, windows=None, unrouted_row=False,
                 impls=("tessera", "flex")) -> list[Case]:
    seq = math.prod(grid)
    cases = [Case(name, batch, heads, seq, dim, pattern=lambda device: pattern, impls=impls)]
    if unrouted_row:
        cases.append(Case(f"{name} row-major", batch, heads, seq, dim, pattern=lambda device: pattern,
                          impls=("tessera",), unrouted=True))
    if windows is not None:
        cases.append(Case(f"{name} sdpa on windows", batch, heads, seq, dim, pattern=lambda device: pattern,
                          impls=("sdpa-cudnn", "sdpa-flash"), windows=(grid, windows)))
    return cases


def vision_cases() -> list[Case]:
    """Vision and video patterns as models run them (bf16): a SwinV2 stage (64 x 64 tokens,
    windows 8 x 8, D = 32), shifted Swin-T windows (56 x 56 and 28 x 28, 7 x 7), a MaxViT-T stage
    (56 x 56, blocks and grid 7 x 7, D = 32), HaloNet, CSWin and criss-cross at 64 x 64, and Radial attention over a 16 x 48 x 48 video latent
    (D = 128). tessera against FlexAttention on the same mask (row-major), SDPA on the windows
    where the pattern is one (the windows cut outside the timed call), tessera's row-major tile
    map where ``tessera.attention`` routes the pattern (natten's path, or a tiled token order),
    and dense baselines at each shape."""
    from ..patterns.vision import CSWin, CrissCross, Halo, MaxViTBlock, MaxViTGrid, Radial, Swin
    cases = []
    cases += _vision_case("Swin 64x64 w8", (64, 64), 32, 4, 32, Swin((64, 64), 8),
                          windows=swin_windows((8, 8)), unrouted_row=True)
    cases += _vision_case("Swin 64x64 w8 shifted", (64, 64), 32, 4, 32, Swin((64, 64), 8, shifted=True),
                          unrouted_row=True)
    cases += _vision_case("Swin 56x56 w7 shifted", (56, 56), 64, 2, 32, Swin((56, 56), 7, shifted=True),
                          unrouted_row=True)
    cases += _vision_case("Swin 28x28 w7 shifted", (28, 28), 64, 6, 32, Swin((28, 28), 7, shifted=True),
                          unrouted_row=True)
    cases += _vision_case("MaxViT block 56x56 b7", (56, 56), 64, 2, 32, MaxViTBlock((56, 56), 7),
                          windows=swin_windows((7, 7)), unrouted_row=True)
    cases += _vision_case("MaxViT grid 56x56 g7", (56, 56), 64, 2, 32, MaxViTGrid((56, 56), 7),
                          windows=maxvit_grid_windows((7, 7)), unrouted_row=True)
    cases += _vision_case("Halo 64x64 b8 h3", (64, 64), 32, 4, 32, Halo((64, 64), 8, 3), unrouted_row=True)
    cases += _vision_case("CSWin 64x64 s8", (64, 64), 32, 4, 32, CSWin((64, 64), 8, 4), unrouted_row=True)
    cases += _vision_case("criss-cross 64x64", (64, 64), 32, 4, 32, CrissCross((64, 64)), unrouted_row=True)
    cases += _vision_case("Radial 16x48x48", (16, 48, 48), 1, 16, 128, Radial((16, 48, 48)))
    shapes = sorted({(c.seq, c.batch, c.heads, c.head_dim) for c in cases})
    return cases + [Case(f"dense baseline S={seq} B={batch} H={heads} D={dim}", batch, heads, seq, dim,
                         impls=("sdpa-cudnn", "tessera")) for seq, batch, heads, dim in shapes]


def cpu_cases() -> list[Case]:
    """A small suite that finishes in well under a minute on a laptop CPU (float32). SDPA cannot
    run the sparse patterns, so those rows compare with the dense baseline at the same shape."""
    impls = ("tessera", "sdpa-flash")
    return [
        Case("dense S=1024", 1, 4, 1024, 64, impls=impls),
        Case("causal S=1024", 1, 4, 1024, 64, causal=True, impls=impls),
        Case("causal window 128 S=2048", 1, 4, 2048, 64, pattern=_causal_window(128), impls=("tessera",)),
        Case("power local 256 S=2048", 1, 4, 2048, 64, pattern=_power(), impls=("tessera",)),
        Case("strided (S2) S=2048", 1, 4, 2048, 64, pattern=_strided(), impls=("tessera",)),
        _baseline(2048, 1, 4, 64, impls),
    ]


def useful_pairs(case: Case, pattern) -> float:
    """Allowed (query, key) pairs summed over heads, for one batch element."""
    from ..patterns import Neighborhood
    if isinstance(pattern, Neighborhood) and not any(pattern.causal):
        return case.heads * case.seq * math.prod(pattern.kernel)    # NATTEN: every query sees prod(kernel)
    if pattern is None:
        full = case.seq * case.seq
        return case.heads * (full if not case.causal else case.seq * (case.seq + 1) / 2)
    return pattern.density(case.seq, case.seq, case.heads) * case.seq * case.seq * case.heads


class _Inputs:
    def __init__(self, case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0):
        gen = torch.Generator(device=device).manual_seed(seed)
        shape = (case.batch, case.seq, case.heads, case.head_dim)
        self.q, self.k, self.v = (torch.randn(shape, device=device, dtype=dtype, generator=gen)
                                  for _ in range(3))
        self.do = torch.randn(shape, device=device, dtype=dtype, generator=gen)
        self.u = self.w = None
        if case.low_rank:
            lr = (case.batch, case.heads, case.seq, case.low_rank)
            self.u = torch.randn(lr, device=device, dtype=dtype, generator=gen) / math.sqrt(case.low_rank)
            self.w = torch.randn(lr, device=device, dtype=dtype, generator=gen)

    def grad_leaves(self):
        return [t for t in (self.q, self.k, self.v) if t.requires_grad]

    def require_grad(self, flag: bool):
        for t in (self.q, self.k, self.v):
            t.requires_grad_(flag)


def _tessera_fn(case, pattern, inp, backend):
    import tessera
    if case.na is not None:
        return _natten_fn(case, inp, backend)
    bias = tessera.bias.LowRank(inp.u, inp.w) if case.low_rank else None
    attend = tessera.api.unrouted_attention if case.unrouted else tessera.attention

    def run():
        o = attend(inp.q, inp.k, inp.v, pattern=pattern, causal=case.causal, score=case.score, bias=bias,
                   backend=backend)
        return o[0] if case.unrouted else o
    return run


def _natten_fn(case, inp, backend):
    from ..natten import neighborhood_attention
    na = case.na
    grid = tuple(na["grid"])
    shape = (case.batch, *grid, case.heads, case.head_dim)

    def run():
        o = neighborhood_attention(inp.q.view(shape), inp.k.view(shape), inp.v.view(shape), na["kernel"],
                                   na.get("dilation", 1), na.get("stride", 1), na_dim=len(grid),
                                   layout=na.get("layout", "auto"), backend=backend)
        return o.reshape(inp.q.shape)
    return run


def tiled_problem(case: Case, device: torch.device):
    """The case's Neighborhood as tessera's "auto" layout runs it on a GPU: ``(pattern, groups)``,
    the pattern in its tiled token order over ``case.seq // groups`` tokens, where each batch entry
    becomes ``groups`` entries (its dilation groups, ``tessera.natten.dilation_groups``; 1 when the
    grid is not split), or for a grid that no tile shape divides, the ``PaddedNeighborhood`` in
    tiles of the padded grid (``layout.size`` tokens; groups 1)."""
    from ..natten import _auto_layout, _build_call_plan, _group_plan, dilation_groups
    from ..patterns import Neighborhood, Permuted
    na = case.na
    pattern = Neighborhood(na["grid"], na["kernel"], na.get("dilation", 1), na.get("stride", 1))
    if dilation_groups(pattern.grid, pattern.dilation) is not None:
        sub_pattern, order, _key = _group_plan(pattern.grid, pattern.kernel, pattern.dilation,
                                               pattern.stride, pattern.causal, "cuda")
        if not isinstance(sub_pattern, Permuted):
            raise ValueError(f"no tile shape divides the dilation groups' grid {order.sub_grid} for {case.name!r}")
        return sub_pattern, order.groups
    layout = _auto_layout(pattern.grid, pattern.kernel, pattern.dilation, pattern.stride, pattern.causal)
    if layout is not None:
        return Permuted(pattern, layout), 1
    plan = _build_call_plan(pattern.grid, pattern.kernel, pattern.dilation, pattern.stride, pattern.causal,
                            "auto", torch.device("cuda"))
    if plan.padded is None:
        raise ValueError(f"no tile shape divides or pads grid {pattern.grid} for {case.name!r}")
    return plan.grid_order, 1


def dense_share(case: Case, groups: int, seq: int) -> float:
    """The whole problem's dense attention (``case.seq ** 2`` pairs) over the dense attention of
    ``groups`` runs of ``seq`` tokens each (``tiled_problem``'s pattern): ``groups`` for dilation
    groups (each a ``1 / groups ** 2`` share), below 1 for a grid padded up to ``seq`` tokens. A
    tile-map speedup over ``seq`` tokens times this is the speedup over the whole problem's dense."""
    return case.seq ** 2 / (groups * seq ** 2)


def _sdpa_fn(case, pattern, inp, which):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    backend = {"sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-flash": SDPBackend.FLASH_ATTENTION}[which]
    if case.windows is not None:
        return _sdpa_windows_fn(case, inp, backend)
    if pattern is not None or case.score != "softmax" or case.low_rank:
        raise ValueError(f"{which} runs dense or causal softmax only; case {case.name!r} needs more")

    def run():
        with sdpa_kernel(backend):
            o = sdpa(inp.q.transpose(1, 2), inp.k.transpose(1, 2), inp.v.transpose(1, 2), is_causal=case.causal)
        return o.transpose(1, 2)
    return run


def _sdpa_windows_fn(case, inp, backend):
    """SDPA over each window of ``case.windows``: q, k, v ``[B, S, H, D]`` cut once into
    ``[B * windows, H, tokens per window, D]`` leaves (``run.leaves``) outside the timed call."""
    from torch.nn.attention import sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    grid, groups = case.windows
    index = groups(grid).to(inp.q.device)

    def cut(t):
        w = t[:, index]                                     # [B, windows, n, H, D]
        return w.flatten(0, 1).transpose(1, 2).contiguous().detach()
    parts = [cut(t) for t in (inp.q, inp.k, inp.v)]

    def run():
        for part, t in zip(parts, (inp.q, inp.k, inp.v)):
            part.requires_grad_(t.requires_grad)
        with sdpa_kernel(backend):
            return sdpa(*parts)
    run.leaves = parts
    return run


def _compiled_flex():
    """A freshly compiled flex_attention. Every case compiles anew (new shapes, masks and score
    mods), so the compile cache is reset first: past torch._dynamo's recompile limit FlexAttention
    silently falls back to an unfused eager version that materializes S x S scores, and timing
    that would misstate its speed."""
    from torch.nn.attention.flex_attention import flex_attention
    torch._dynamo.reset()
    return torch.compile(flex_attention, dynamic=False)


def _flex_fn(case, pattern, inp, groups: int = 1):
    """FlexAttention on the case's inputs; with ``groups`` > 1 on them viewed as ``groups`` times
    the batch of ``case.seq // groups`` tokens each (``tiled_problem``; output in that shape)."""
    flex = _compiled_flex()
    block_mask = None
    seq = case.seq // groups
    if pattern is not None or case.causal:
        from ..patterns import Causal, to_flex
        full = pattern if pattern is not None else Causal()
        if pattern is not None and case.causal:
            full = pattern & Causal()
        _, block_mask = to_flex(full, seq, seq, num_heads=case.heads, block_size=128,
                                device=inp.q.device)
    score_mod = None
    if case.low_rank:
        u, w, rank = inp.u, inp.w, case.low_rank

        def score_mod(score, b, h, q_idx, kv_idx):
            bias = u[b, h, q_idx, 0] * w[b, h, kv_idx, 0]
            for r in range(1, rank):
                bias = bias + u[b, h, q_idx, r] * w[b, h, kv_idx, r]
            return score + bias

    def run():
        q, k, v = (t.view(case.batch * groups, seq, *t.shape[2:]).transpose(1, 2) for t in (inp.q, inp.k, inp.v))
        return flex(q, k, v, score_mod=score_mod, block_mask=block_mask).transpose(1, 2)
    return run


def _impl_fn(impl: str, case: Case, pattern, inp, device: torch.device):
    if impl == "tessera":
        return _tessera_fn(case, pattern, inp, "triton" if device.type == "cuda" else "reference")
    if impl == "reference":
        return _tessera_fn(case, pattern, inp, "reference")
    if impl.startswith("sdpa"):
        return _sdpa_fn(case, pattern, inp, impl)
    if impl == "flex":
        return _flex_fn(case, pattern, inp)
    if impl == "flex-tiled":
        pattern, groups = tiled_problem(case, device)
        return _flex_fn(case, pattern, inp, groups)
    raise ValueError(f"impl must be tessera, reference, sdpa-cudnn, sdpa-flash, flex or flex-tiled, got {impl!r}")


def _record(case_name, impl, direction, ms, flops):
    return {"suite": "attention", "case": case_name, "impl": impl, "direction": direction,
            "ms": ms, "useful_tflops": (flops / (ms * 1e-3) / 1e12) if ms else None,
            "tokens_per_s": None, "tbps": None}


def _measure(fn, inp: _Inputs, direction: str, device) -> float:
    with warnings.catch_warnings():
        # FlexAttention warns when it runs uncompiled; that is a failed measurement, not a number.
        warnings.filterwarnings("error", message=".*without torch.compile.*")
        return _measure_median(fn, inp, direction, device)


def _measure_median(fn, inp: _Inputs, direction: str, device) -> float:
    if direction == "fwd":
        inp.require_grad(False)
        with torch.no_grad():
            return median_ms(fn, device)
    return median_ms(_step(fn, inp, direction), device)


def _step(fn, inp: _Inputs, direction: str):
    """The call that ``direction`` times: ``fn()`` without autograd, or forward and backward."""
    if direction == "fwd":
        inp.require_grad(False)

        def fwd():
            with torch.no_grad():
                fn()
        return fwd
    inp.require_grad(True)

    def fwd_bwd():
        o = fn()
        leaves = getattr(fn, "leaves", None) or inp.grad_leaves()
        torch.autograd.grad(o, leaves, inp.do.view(o.shape))
    return fwd_bwd


def _graph_ms(fn, inp: _Inputs, direction: str) -> float:
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*without torch.compile.*")
        return graph_replay_ms(_step(fn, inp, direction))


def run_case(case: Case, device: torch.device, dtype: torch.dtype, directions=("fwd", "fwd+bwd"),
             log: Callable[[str], None] = print, graph: bool = False) -> list[dict]:
    """Measure every implementation of ``case`` (plus tessera's auto dispatch and dense baselines
    where the case asks for them); failures are logged and recorded with ``ms = None``. With
    ``graph``, each is also replayed from a CUDA graph (GPU time alone), recorded under the case
    name plus ``GRAPH_SUFFIX``."""
    pattern = case.pattern(device) if case.pattern is not None else None
    inp = _Inputs(case, device, dtype)
    pairs = useful_pairs(case, pattern)
    records = []
    rows = [(impl, case.name, impl) for impl in case.impls]
    if case.auto_row:
        rows.append(("tessera-auto", f"{case.name} auto", "tessera"))
    for direction in directions:
        flops = 4 * case.batch * pairs * case.head_dim * (FWD_BWD_FLOP_FACTOR if direction != "fwd" else 1)
        for key, case_name, impl in rows:
            try:
                if key == "tessera-auto":
                    fn = _tessera_fn(case, pattern, inp, "auto")
                else:
                    fn = _impl_fn(impl, case, pattern, inp, device)
                ms = _measure(fn, inp, direction, device)
            except Exception as exc:  # one broken implementation must not hide the others
                log(f"  {case_name} / {impl} / {direction}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
                ms = None
            records.append(_record(case_name, impl, direction, ms, flops))
            if ms is not None:
                log(f"  {case_name:34s} {impl:11s} {direction:8s} {ms:9.3f} ms "
                    f"{records[-1]['useful_tflops']:7.1f} TFLOP/s")
            if graph and ms is not None:
                try:
                    ms = _graph_ms(fn, inp, direction)
                except Exception as exc:  # noqa: BLE001 - logged and recorded as missing
                    log(f"  {case_name} / {impl} / {direction} (graph): FAILED {type(exc).__name__}: "
                        f"{str(exc)[:300]}")
                    ms = None
                records.append(_record(case_name + GRAPH_SUFFIX, impl, direction, ms, flops))
                if ms is not None:
                    log(f"  {case_name + GRAPH_SUFFIX:34s} {impl:11s} {direction:8s} {ms:9.3f} ms")
    return records


def run_suite(device: torch.device, cases: list[Case] | None = None, dtype: torch.dtype | None = None,
              log: Callable[[str], None] = print) -> list[dict]:
    """Run ``cases`` (default: the GPU suite on CUDA, the small CPU suite otherwise)."""
    if cases is None:
        cases = gpu_cases() if device.type == "cuda" else cpu_cases()
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    records = []
    warm_up_gpu(device)
    for case in cases:
        log(case.name)
        records += run_case(case, device, dtype, log=log)
    return records
