"""The Triton merge kernels (``kernels.triton.merge``, ``tessera.merge_attentions``'s fused path)
under Triton's CPU interpreter against the float64 merge in torch operations, forward and backward
(gradients of o and of lse). Run normally, this module re-runs itself in a fresh interpreted
process (see test_flash_interpreted.py)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from conftest import assert_passes_interpreted

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"

if not IN_INTERPRETER:

    def test_interpreted_cases_in_a_fresh_process():
        assert_passes_interpreted(__file__, timeout=300)

else:
    import tessera.merge as merge
    from tessera.kernels.triton.backend import kernels_interpreted

    pytestmark = [pytest.mark.skipif(not kernels_interpreted(),
                                     reason="triton was imported before TRITON_INTERPRET=1 was set"),
                  pytest.mark.usefixtures("nan_poison")]

    def _parts(count, shape, dtype, empty_rows=0):
        """``count`` outputs ``[B, *tokens, H, D]`` and float32 lses ``[B, H, *tokens]``; the first
        ``empty_rows`` tokens (flattened) have lse -inf and o 0 in every part."""
        batch, heads = shape[0], shape[-2]
        tokens = shape[1:-2]
        outputs, lses = [], []
        for _ in range(count):
            o = torch.randn(shape).to(dtype)
            lse = 3 * torch.randn(batch, heads, *tokens)
            flat_o, flat_lse = o.view(batch, -1, *shape[-2:]), lse.view(batch, heads, -1)
            flat_o[:, :empty_rows] = 0
            flat_lse[..., :empty_rows] = -math.inf
            outputs.append(o.requires_grad_())
            lses.append(lse.requires_grad_())
        return outputs, lses

    def _merged(outputs, lses, fused, do, dlse):
        merge.FUSED = fused
        try:
            if not fused:
                outputs = [o.detach().double().requires_grad_() for o in outputs]
                lses = [lse.detach().double().requires_grad_() for lse in lses]
            o, lse = merge.merge_attentions(outputs, lses)
            targets = [(o, do)] + ([(lse, dlse)] if dlse is not None else [])
            grads = torch.autograd.grad([t for t, _ in targets], outputs + lses,
                                        [g.to(t.dtype) for t, g in targets])
            return [o, lse, *grads]
        finally:
            merge.FUSED = True

    @pytest.mark.parametrize("count, shape, dtype, empty_rows, with_dlse", [
        (2, (2, 70, 4, 32), torch.float32, 0, True),
        (2, (1, 5, 6, 3, 48), torch.float16, 7, True),      # 2-D tokens, padded head dim, empty rows
        (3, (1, 40, 2, 64), torch.float32, 3, False),       # three parts merged pairwise
    ])
    def test_fused_merge_against_float64(count, shape, dtype, empty_rows, with_dlse):
        outputs, lses = _parts(count, shape, dtype, empty_rows)
        do = torch.randn(shape, dtype=torch.float64)
        dlse = torch.randn(shape[0], shape[-2], *shape[1:-2], dtype=torch.float64) if with_dlse else None
        got = _merged(outputs, lses, True, do, dlse)
        want = _merged(outputs, lses, False, do, dlse)
        assert got[0].dtype == dtype and got[1].dtype == torch.float32
        flat_lse = got[1].reshape(shape[0], shape[-2], -1)
        assert bool((flat_lse[..., :empty_rows] == -math.inf).all())
        tolerance = 1e-6 if dtype == torch.float32 else 2e-3
        names = ["o", "lse"] + [f"do{i}" for i in range(count)] + [f"dlse{i}" for i in range(count)]
        for name, g, w in zip(names, got, want):
            assert g.shape == w.shape, name
            assert bool(torch.isfinite(g[torch.isfinite(w)]).all()), name
            finite = torch.isfinite(w)
            assert torch.equal(torch.isfinite(g), finite), name
            err = (g.double()[finite] - w[finite]).norm() / max(w[finite].norm().item(), 1e-30)
            assert err < tolerance, (name, float(err))

    def test_fused_merge_reads_strided_outputs_and_takes_a_lse_gradient_alone():
        # o in bhsd storage (a transposed view); only lse reaches the loss.
        views = [torch.randn(1, 2, 50, 32).transpose(1, 2).requires_grad_() for _ in range(2)]
        lses = [torch.randn(1, 2, 50).requires_grad_() for _ in range(2)]
        o, lse = merge.merge_attentions(views, lses)
        got = torch.autograd.grad(lse.sum(), views + lses, allow_unused=True)
        reference = [t.detach().double().requires_grad_() for t in views + lses]
        merge.FUSED = False
        try:
            o_ref, lse_ref = merge.merge_attentions(reference[:2], reference[2:])
        finally:
            merge.FUSED = True
        assert (o.double() - o_ref).abs().max() < 1e-5
        want = torch.autograd.grad(lse_ref.sum(), reference, allow_unused=True)
        for g, w in zip(got, want):
            w = torch.zeros_like(reference[0]) if w is None else w
            assert (g.double() - w).abs().max() < 1e-5

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
    def test_natten_additional_keys_on_the_triton_kernels(dtype):
        # na2d over a 16 x 8 grid in (8, 8) tiles plus 5 extra tokens: the neighborhood and the
        # dense call on the Triton kernels, merged by the fused kernels; o, lse and every gradient
        # (the loss on o and lse) against the float64 reference backend (GQA, B = 2).
        from tessera.natten import na2d
        exact = [torch.randn(2, 16, 8, h, 32, dtype=torch.float64) for h in (4, 2, 2)]
        exact += [torch.randn(2, 5, 2, 32, dtype=torch.float64) for _ in range(2)]
        do = torch.randn(2, 16, 8, 4, 32, dtype=torch.float64)
        dlse = torch.randn(2, 4, 16, 8, dtype=torch.float64)

        def run(dt, backend):
            leaves = [t.to(dt).requires_grad_() for t in exact]
            o, lse = na2d(*leaves[:3], (5, 3), layout=(8, 8), backend=backend, return_lse=True,
                          additional_keys=leaves[3], additional_values=leaves[4])
            return [o, lse, *torch.autograd.grad((o, lse), leaves, (do.to(dt), dlse.to(lse.dtype)))]

        got, want = run(dtype, "triton"), run(torch.float64, "reference")
        tolerance = 1e-5 if dtype == torch.float32 else 5e-3
        for name, g, w in zip(("o", "lse", "dq", "dk", "dv", "dkeys", "dvalues"), got, want):
            assert (g.double() - w).norm() / w.norm() < tolerance, name
