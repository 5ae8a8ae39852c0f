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

import pytest
import torch

from conftest import assert_passes_interpreted

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"

if not IN_INTERPRETER:

    def test_interpreted_cases_in_a_fresh_process():
        assert_passes_interpreted(__file__, timeout=600)

else:
    from flash_cases import check_against_reference, make_call, make_inputs
    from tessera.bias import ALiBi, LowRank, RelativePosition, TensorBias
    from tessera.kernels.triton import masks, tuning
    from tessera.kernels.reference import reference_attention
    from tessera.kernels.triton.backend import kernels_interpreted, run, supports
    from tessera.kernels.triton.tuning import KernelConfig
    from tessera.patterns import Causal, Dense, Dilated, FromMask, PerHead, Power, Window

    pytestmark = [pytest.mark.skipif(not kernels_interpreted(),
                                     reason="triton was imported before TRITON_INTERPRET=1 was set"),
                  pytest.mark.usefixtures("nan_poison")]


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

    @pytest.mark.parametrize("delta_in_dq", [True, False])
    def test_delta_from_dq_or_from_row_dot(delta_in_dq, monkeypatch):
        # On one stream the dq kernel computes delta = rowsum(o * do) and runs before dk/dv (what
        # the interpreter always takes); with the overlap, row_dot computes it first. Both paths,
        # padded value dim, GQA, a window, against float64.
        from tessera.kernels.triton import flash_bwd, streams
        calls = []
        row_dot = flash_bwd.row_dot
        monkeypatch.setattr(flash_bwd, "row_dot", lambda *args: calls.append(1) or row_dot(*args))
        if not delta_in_dq:
            monkeypatch.setattr(streams, "possible", lambda device: True)
            monkeypatch.setattr(streams, "fork", lambda device: None)
            monkeypatch.setattr(flash_bwd, "overlap_pays", lambda *args: True)
        q, k, v = make_inputs(2, 130, 130, 4, 2, 32, torch.float16)
        v = v[..., :24]
        check_against_reference(q, k, v, Window(33, 5))
        assert bool(calls) != delta_in_dq


    @pytest.mark.parametrize("delta_in_dq", [True, False])
    def test_lse_gradient_through_delta(delta_in_dq, monkeypatch):
        # A loss on lse as well as o: d lse_i / d s_ij = P_ij enters as delta - dlse, on both
        # delta paths (in dq is off with a lse gradient), GQA, a window, against float64.
        from tessera.kernels.triton import flash_bwd, streams
        if not delta_in_dq:
            monkeypatch.setattr(streams, "possible", lambda device: True)
            monkeypatch.setattr(streams, "fork", lambda device: None)
            monkeypatch.setattr(flash_bwd, "overlap_pays", lambda *args: True)
        q, k, v = make_inputs(2, 100, 100, 4, 2, 32, torch.float16)
        check_against_reference(q, k, v, Window(33, 5), lse_gradient=True)


    def test_lse_gradient_dense_fp32_and_with_sinks_fp16():
        q, k, v = make_inputs(1, 70, 90, 2, 1, 32, torch.float32)
        check_against_reference(q, k, v, None, lse_gradient=True)
        q, k, v = make_inputs(1, 70, 70, 2, 2, 32, torch.float16)
        check_against_reference(q, k, v, Causal(), lse_gradient=True,
                                sinks=torch.randn(2).requires_grad_())


    def test_lse_gradient_alone():
        # Only lse reaches the loss: o's gradient is absent (None), the kernels take zeros.
        q, k, v = make_inputs(1, 64, 64, 2, 1, 32, torch.float32)
        o, lse = run(make_call(q, k, v, Window(16, 16)))
        dq, dk = torch.autograd.grad(lse.sum(), (q, k))
        q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
        _o, lse64 = reference_attention(make_call(q64, k64, v.detach().double(), Window(16, 16)))
        dq64, dk64 = torch.autograd.grad(lse64.sum(), (q64, k64))
        assert torch.allclose(dq.double(), dq64, atol=1e-4) and torch.allclose(dk.double(), dk64, atol=1e-4)


    def test_head_dim_256_and_distinct_value_dim_fp32():
        q, k, v = make_inputs(1, 70, 70, 2, 1, 256, torch.float32)
        check_against_reference(q, k, v, Causal())
        q, k, v = make_inputs(1, 70, 70, 2, 1, 64, torch.float32, dim_v=32)
        check_against_reference(q, k, v, Window(20, 20))

    @pytest.mark.parametrize("pattern", [None, Causal(), Window(40, 3), Dilated(20, 3)],
                             ids=["dense", "causal", "window", "bitmask"])
    def test_bulk_copies_forward_backward(pattern, monkeypatch):
        # Tensor descriptors on (Hopper's path; the interpreter emulates them), on odd lengths
        # (rows and keys past the end), GQA and a bitmask.
        from tessera.kernels.triton import flash_fwd
        monkeypatch.setattr(flash_fwd, "tma_ok", lambda a, b, block: True)
        q, k, v = make_inputs(1, 150, 150, 4, 2, 32, torch.float16)
        check_against_reference(q, k, v, pattern)

    def test_bitmask_pattern_dilated_fp32(monkeypatch):
        # A dilated window meets each partial tile in many offset intervals: partial tiles go
        # through packed bitmasks; a 64-wide key tile exercises two mask words per row.
        monkeypatch.setitem(tuning.OVERRIDES, "fwd", KernelConfig(32, 64, 4, 1))
        monkeypatch.setitem(tuning.OVERRIDES, "dq", KernelConfig(32, 64, 4, 1))
        q, k, v = make_inputs(1, 130, 130, 2, 2, 32, torch.float32)
        plan = masks.get_plan(Dilated(20, 3), 130, 130, 32, 64, 2, q.device)
        assert plan.mask_mode == masks.MASK_BITS
        check_against_reference(q, k, v, Dilated(20, 3))


    @pytest.mark.parametrize("pattern, bands", [(Power(128), 1), (Power(8), 4)])
    def test_per_tile_band_patterns_fp16(pattern, bands):
        # Power(128) meets each partial tile in one interval of its offset set (band [0, 128] or
        # the diagonal d = 256); Power(8) in up to four (band [0, 8], diagonals 16, 32, 64):
        # per-tile bands, no bitmask, in all three kernels.
        q, k, v = make_inputs(1, 200, 300, 2, 1, 32, torch.float16)
        for name in ("fwd", "dq", "dkdv"):
            config = tuning.kernel_config(name, 32, torch.float16, True, True)
            plan = masks.get_plan(pattern, 200, 300, config.block_m, config.block_n, 2, q.device)
            assert plan.mask_mode == masks.MASK_TILE_BAND, name
            assert plan.bands_per_tile == bands, name
        check_against_reference(q, k, v, pattern)


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


    def test_longest_first_launch_gqa_batched_head_dependent_fp16():
        # S2 strided: per-head tile lists of unequal lengths, so every kernel launches in the
        # longest-first order (query heads 4, key/value heads 2, batch 2, one band-masked kind of
        # partial tile); the plain launch order must give bitwise the same result.
        from tessera.kernels.triton import schedule
        from tessera.patterns import Strided
        pattern = Strided(block=64, local_blocks=2, stride=2)
        q, k, v = make_inputs(2, 200, 200, 4, 2, 32, torch.float16)
        for name in ("fwd", "dkdv"):
            config = tuning.kernel_config(name, 32, torch.float16, True)
            plan = masks.get_plan(pattern, 200, 200, config.block_m, config.block_n, 4, q.device)
            assert plan.mask_mode == masks.MASK_BAND
            order = (schedule.row_schedule(plan, 2, 4) if name == "fwd"
                     else schedule.col_schedule(plan, 2, 2))
            assert order is not None and order.heads == (4 if name == "fwd" else 2)
        check_against_reference(q, k, v, pattern)

        def outputs():
            qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
            o, _ = run(make_call(qq, kk, vv, pattern))
            o.backward(torch.ones_like(o))
            return [o, qq.grad, kk.grad, vv.grad]

        scheduled = outputs()
        masks.clear_plan_cache()
        try:
            schedule.ENABLED = False
            plain = outputs()
        finally:
            schedule.ENABLED = True
            masks.clear_plan_cache()
        for a, b in zip(scheduled, plain):
            assert torch.equal(a, b)


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


    def _factors(batch, heads, q_len, k_len, rank, dtype, broadcast):
        """Learnable low-rank factors; ``broadcast`` gives u one batch row and w one head."""
        u = torch.randn(1 if broadcast else batch, heads, q_len, rank, dtype=dtype)
        w = torch.randn(batch, 1 if broadcast else heads, k_len, rank, dtype=dtype)
        return LowRank((u * 0.5).requires_grad_(), (w * 0.5).requires_grad_())

    def test_low_rank_bias_gqa_unequal_lengths_broadcast_fp32():
        # GQA 4:2, S_q != S_k, a causal pattern (partial tiles and lengths cut mid-tile), u shared
        # by the batch and w by the heads (stride-0 reads; gradients summed in torch), rank 5
        # padded to 16 in-kernel.
        q, k, v = make_inputs(2, 70, 100, 4, 2, 32, torch.float32)
        bias = _factors(2, 4, 70, 100, 5, torch.float32, broadcast=True)
        errors = check_against_reference(q, k, v, Causal(), bias=bias)
        assert set(errors) >= {"o", "lse", "dq", "dk", "dv", "dextra0", "dextra1"}

    def test_low_rank_bias_bitmask_pattern_fp16():
        # A head-dependent element mask (bitmask tiles), rank 32, full-size factors, fp16.
        heads, q_len, k_len = 2, 64, 90
        allowed = torch.rand(heads, q_len, k_len) < 0.4
        q, k, v = make_inputs(1, q_len, k_len, heads, 1, 32, torch.float16)
        bias = _factors(1, heads, q_len, k_len, 32, torch.float16, broadcast=False)
        check_against_reference(q, k, v, FromMask(allowed), bias=bias)

    def test_low_rank_bias_only_u_learnable_with_softcap_fp32():
        # Softcap is applied before the bias: du must not carry the softcap derivative.
        q, k, v = make_inputs(1, 40, 40, 2, 2, 32, torch.float32)
        q.data.mul_(3.0)
        bias = _factors(1, 2, 40, 40, 3, torch.float32, broadcast=False)
        bias.w.requires_grad_(False)
        check_against_reference(q, k, v, Window(12, 0), bias=bias, softcap=2.0)

    @pytest.mark.parametrize("grid, heads, kv_heads, table_heads, dtype, pattern", [
        ((6, 11), 4, 2, 4, torch.float32, Causal()),          # 2-D, GQA, per-head table
        ((3, 4, 6), 2, 1, 1, torch.float16, Window(20, 7)),   # 3-D, one table for all heads
        ((90,), 2, 2, 2, torch.float32, None),                # 1-D (T5-style offsets), dense
    ])
    def test_relative_position_bias(grid, heads, kv_heads, table_heads, dtype, pattern):
        # The table is gathered in-kernel from the grid coordinates of each (query, key) pair; its
        # gradient is a deterministic per-query-tile scatter-sum reduced in torch.
        seq = math.prod(grid)
        q, k, v = make_inputs(1, seq, seq, heads, kv_heads, 32, dtype)
        table = torch.randn(table_heads, *(2 * g - 1 for g in grid), dtype=dtype).requires_grad_()
        errors = check_against_reference(q, k, v, pattern, bias=RelativePosition(table, grid))
        assert "dextra0" in errors

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
        wide = LowRank(torch.randn(1, 2, 16, 65), torch.randn(1, 2, 16, 65))
        assert "rank" in supports(make_call(q, k, v, bias=wide))
        table = RelativePosition(torch.randn(2, 7, 9), (4, 5))
        assert "S_q == S_k == 20" in supports(make_call(q, k, v, bias=table))
        table = RelativePosition(torch.randn(2, 1, 1, 1, 7), (1, 1, 1, 4))
        assert "3 dims" in supports(make_call(q, k, v, bias=table))
        assert "CPU" in supports(make_call(q.to("meta"), k.to("meta"), v.to("meta")))
