"""Triton flash kernels under Triton's CPU interpreter, against the float64 reference.

Triton picks interpreted or compiled kernels when it is imported, so ``TRITON_INTERPRET=1`` must
be set before anything imports triton. Run normally, this module holds one test that re-runs the
module in a fresh Python process with the variable set (nothing leaks into other test files); run
with ``TRITON_INTERPRET=1`` already set, it holds the cases themselves. Tiny shapes only: each
kernel launch costs about a second here.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"

if not IN_INTERPRETER:

    def test_interpreted_cases_in_a_fresh_process():
        env = dict(os.environ, TRITON_INTERPRET="1")
        result = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x",
                                 "-p", "no:cacheprovider"],
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]

else:
    from flash_cases import check_against_reference, make_call, make_inputs
    from tessera.bias import ALiBi, LowRank, TensorBias
    from tessera.kernels.triton import masks, tuning
    from tessera.kernels.triton.backend import kernels_interpreted, run, supports
    from tessera.kernels.triton.tuning import KernelConfig
    from tessera.patterns import Causal, Dense, FromMask, PerHead, Power, Window

    pytestmark = pytest.mark.skipif(not kernels_interpreted(),
                                    reason="triton was imported before TRITON_INTERPRET=1 was set")

    @pytest.fixture(autouse=True)
    def nan_poison(monkeypatch):
        """Every floating ``torch.empty``/``empty_like`` during a test comes back NaN-filled, so that
        output memory a kernel forgets to write shows up."""
        empty, empty_like = torch.empty, torch.empty_like

        def poisoned(result):
            if result.dtype.is_floating_point and not result.requires_grad:
                result.fill_(float("nan"))
            return result

        monkeypatch.setattr(torch, "empty", lambda *a, **kw: poisoned(empty(*a, **kw)))
        monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poisoned(empty_like(*a, **kw)))


    def test_dense_fp32_forward_backward():
        q, k, v = make_inputs(2, 96, 96, 2, 2, 32, torch.float32)
        check_against_reference(q, k, v, None)


    def test_causal_gqa_unequal_lengths_fp16():
        q, k, v = make_inputs(1, 70, 130, 4, 2, 32, torch.float16)
        check_against_reference(q, k, v, Causal())


    def test_window_odd_lengths_padded_head_dim_fp16():
        q, k, v = make_inputs(1, 150, 150, 2, 1, 48, torch.float16)
        check_against_reference(q, k, v, Window(40, 3))


    def test_single_query_row_gqa4_batched_fp16():
        q, k, v = make_inputs(3, 1, 200, 8, 2, 64, torch.float16)
        check_against_reference(q, k, v, Causal())

    def test_head_dim_256_and_distinct_value_dim_fp32():
        q, k, v = make_inputs(1, 70, 70, 2, 1, 256, torch.float32)
        check_against_reference(q, k, v, Causal())
        q, k, v = make_inputs(1, 70, 70, 2, 1, 64, torch.float32, dim_v=32)
        check_against_reference(q, k, v, Window(20, 20))

    def test_bitmask_pattern_power_fp32(monkeypatch):
        # Power's offset set has many intervals: partial tiles go through packed bitmasks; a
        # 64-wide key tile exercises two mask words per row.
        monkeypatch.setitem(tuning.OVERRIDES, "fwd", KernelConfig(32, 64, 4, 1))
        monkeypatch.setitem(tuning.OVERRIDES, "dq", KernelConfig(32, 64, 4, 1))
        q, k, v = make_inputs(1, 130, 130, 2, 2, 32, torch.float32)
        plan = masks.get_plan(Power(8), 130, 130, 32, 64, 2, q.device)
        assert plan.mask_mode == masks.MASK_BITS
        check_against_reference(q, k, v, Power(8))


    def test_head_dependent_mask_with_empty_rows_fp16():
        # Random element mask per head, with some query rows that see nothing: o = 0, lse = -inf,
        # finite gradients.
        heads, q_len, k_len = 2, 80, 100
        allowed = torch.rand(heads, q_len, k_len) < 0.3
        allowed[:, 5] = False
        allowed[1, 60:64] = False
        q, k, v = make_inputs(1, q_len, k_len, heads, 1, 32, torch.float16)
        pattern = FromMask(allowed)
        check_against_reference(q, k, v, pattern)
        o, lse = run(make_call(q.detach(), k.detach(), v.detach(), pattern))
        assert torch.all(o[:, 5] == 0) and torch.all(lse[:, :, 5] == -math.inf)


    def test_bhsd_strided_inputs_per_head_patterns_fp32():
        q, k, v = make_inputs(2, 64, 64, 2, 2, 32, torch.float32, layout="bhsd")
        check_against_reference(q, k, v, PerHead([Causal(), Window(10, 10)]))


    @pytest.mark.parametrize("variant", ["softcap", "sinks", "alibi", "sigmoid", "tensor_bias"])
    def test_score_variants_fp32(variant):
        heads = 2
        q, k, v = make_inputs(1, 70, 90, heads, 1, 32, torch.float32)
        extra = {}
        if variant == "softcap":
            extra["softcap"] = 2.0
            q.data.mul_(3.0)
        elif variant == "sinks":
            extra["sinks"] = torch.randn(heads).requires_grad_()
        elif variant == "alibi":
            extra["bias"] = ALiBi(ALiBi.default_slopes(heads).requires_grad_())
        elif variant == "sigmoid":
            extra.update(score="sigmoid", sigmoid_bias=-2.0)
        elif variant == "tensor_bias":
            # Broadcast over batch (stride 0), learnable.
            extra["bias"] = TensorBias(torch.randn(1, heads, 70, 90).requires_grad_())
        check_against_reference(q, k, v, Causal(), **extra)


    def test_sinks_fully_masked_rows_give_sink_lse():
        heads = 2
        allowed = torch.rand(heads, 40, 40) < 0.5
        allowed[:, 3] = False
        q, k, v = make_inputs(1, 40, 40, heads, heads, 32, torch.float32)
        sinks = torch.randn(heads).requires_grad_()
        check_against_reference(q, k, v, FromMask(allowed), sinks=sinks)


    def test_shared_memory_overflow_falls_back_to_smaller_tiles(monkeypatch):
        from triton.runtime.errors import OutOfResources
        from tessera.kernels.triton import backend, flash_bwd, flash_fwd
        monkeypatch.setitem(tuning.OVERRIDES, "fwd", KernelConfig(64, 64, 4, 1))
        monkeypatch.setitem(tuning.OVERRIDES, "dkdv", KernelConfig(32, 64, 4, 1))
        monkeypatch.setattr(backend, "_FITTING", {})
        forward, backward = flash_fwd.forward, flash_bwd.backward
        tried = []

        def tight_forward(*args, config, **kwargs):
            tried.append(("fwd", config.block_n))
            if config.block_n > 32:
                raise OutOfResources(300000, 232448, "shared memory")
            return forward(*args, config=config, **kwargs)

        def tight_backward(*args, dkdv_config, **kwargs):
            tried.append(("dkdv", dkdv_config.block_n))
            if dkdv_config.block_n > 32:
                error = OutOfResources(300000, 232448, "shared memory")
                error.kernel = "dkdv"
                raise error
            return backward(*args, dkdv_config=dkdv_config, **kwargs)

        monkeypatch.setattr(flash_fwd, "forward", tight_forward)
        monkeypatch.setattr(flash_bwd, "backward", tight_backward)
        q, k, v = make_inputs(1, 50, 70, 2, 1, 32, torch.float32)
        check_against_reference(q, k, v, Causal())
        assert tried == [("fwd", 64), ("fwd", 32), ("dkdv", 64), ("dkdv", 32)]
        tried.clear()
        check_against_reference(q, k, v, Causal())        # the fitting configs are remembered
        assert tried == [("fwd", 32), ("dkdv", 32)]

    def test_through_the_public_api_bhsd_causal():
        import tessera
        from tessera.kernels.reference import reference_attention
        q, k, v = (torch.randn(1, 2, 60, 32, dtype=torch.float16) for _ in range(3))
        o, lse = tessera.attention(q, k, v, causal=True, layout="bhsd", backend="triton",
                                   return_lse=True)
        call = make_call(*(t.transpose(1, 2).double() for t in (q, k, v)), Causal())
        ref, ref_lse = reference_attention(call)
        assert o.shape == q.shape
        assert (o.double().transpose(1, 2) - ref).norm() / ref.norm() < 2e-3
        assert (lse.double() - ref_lse).abs().max() < 1e-2

    @pytest.mark.parametrize("variant", ["plain", "tensor_bias_sigmoid"])
    def test_varlen_packed_sequences(variant):
        # Four packed sequences, one with no keys (o = 0); against the float64 reference.
        import tessera
        cu_q = torch.tensor([0, 30, 30, 95, 100], dtype=torch.int32)
        cu_k = torch.tensor([0, 40, 52, 120, 120], dtype=torch.int32)
        q, k, v = make_inputs(1, 100, 120, 4, 2, 32, torch.float32)
        leaves = [q, k, v]
        extra = {}
        if variant != "plain":
            bias = torch.randn(1, 4, 100, 120).requires_grad_()
            leaves.append(bias)
            extra = dict(bias=bias, score="sigmoid")
        leaves64 = [t.detach().double().requires_grad_() for t in leaves]
        extra64 = dict(extra, bias=leaves64[3]) if extra else {}
        common = dict(pattern=Window(20, 5), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
        o = tessera.attention(q, k, v, backend="triton", **common, **extra)
        ref = tessera.attention(*leaves64[:3], backend="reference", **common, **extra64)
        assert (o.double() - ref).norm() / ref.norm() < 1e-5
        assert torch.all(o[:, 95:] == 0)
        do = torch.randn_like(o)
        grads = torch.autograd.grad(o, leaves, do)
        ref_grads = torch.autograd.grad(ref, leaves64, do.double())
        for g, r in zip(grads, ref_grads):
            assert (g.double() - r).norm() / r.norm() < 1e-5

    def test_plan_cache_reuses_plans_and_lengths_are_not_compiled_in():
        a = masks.get_plan(Causal(), 300, 300, 64, 32, 4, torch.device("cpu"))
        b = masks.get_plan(Causal(), 300, 300, 64, 32, 4, torch.device("cpu"))
        assert a is b
        assert a.mask_mode == masks.MASK_BAND and (a.band_lo, a.band_hi) == (0, masks.BAND_LIMIT)
        assert masks.get_plan(Dense(), 300, 300, 64, 32, 4, torch.device("cpu")).mask_mode == masks.MASK_NONE


    def test_plan_lists_cover_the_tile_map():
        pattern = Window(70, 0) | Power(4)
        plan = masks.get_plan(pattern, 200, 230, 32, 64, 1, torch.device("cpu"))
        states = pattern.tile_states(200, 230, 32, 64, 1)
        rows = plan.rows
        listed = torch.zeros_like(states)
        for m in range(plan.n_q_tiles):
            for t in range(int(rows.full_count[0, m])):
                listed[0, m, rows.full_index[0, m, t]] += 2
            for t in range(int(rows.part_count[0, m])):
                listed[0, m, rows.part_index[0, m, t]] += 1
        # Every listed tile exactly once; full only where the pattern is full and inside both lengths.
        assert torch.equal(listed > 0, states > 0)
        assert not bool(((listed == 2) & (states != 2)).any())
        assert not bool((listed[0, -1] == 2).any()) and not bool((listed[0, :, -1] == 2).any())


    def test_supports_explains_rejections(monkeypatch):
        q, k, v = make_inputs(1, 16, 16, 2, 2, 32, torch.float64, requires_grad=False)
        assert "dtype" in supports(make_call(q, k, v))
        q, k, v = make_inputs(1, 16, 16, 2, 2, 32, torch.float32, requires_grad=False)
        low_rank = LowRank(torch.randn(1, 2, 16, 4), torch.randn(1, 2, 16, 4))
        assert "LowRank" in supports(make_call(q, k, v, bias=low_rank))
        assert "CPU" in supports(make_call(q.to("meta"), k.to("meta"), v.to("meta")))
