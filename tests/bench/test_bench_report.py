"""Benchmark harness on CPU: a tiny suite runs every implementation, the report computes ratios."""

import json

import pytest
import torch

from tessera.bench.attention import Case, run_suite, useful_pairs
from tessera.bench.report import benchmarks_markdown, comparison_rows, markdown_table, write_case_rows, write_results
from tessera.patterns import Causal, Window


def record(case, impl, direction, ms, tflops=None):
    return {"suite": "attention", "case": case, "impl": impl, "direction": direction, "ms": ms,
            "useful_tflops": tflops, "tokens_per_s": None, "tbps": None}


def test_ratios_speedup_and_sparse_efficiency():
    records = [
        record("causal window 1024 S=16384", "tessera", "fwd", 0.5, 300.0),
        record("causal window 1024 S=16384", "flex", "fwd", 1.0, 150.0),
        record("dense baseline S=16384 B=1 H=16", "sdpa-cudnn", "fwd", 10.0, 600.0),
        record("dense baseline S=16384 B=1 H=16", "tessera", "fwd", 12.0, 500.0),
    ]
    rows = {r["case"]: r for r in comparison_rows(records)}
    window = rows["causal window 1024 S=16384"]
    assert window["ratio"]["flex"] == pytest.approx(2.0)
    assert window["speedup_vs_dense_cudnn"] == pytest.approx(20.0)
    assert window["sparse_efficiency"] == pytest.approx(0.6)
    assert "2.00x" in markdown_table({"records": records})


def test_useful_pairs_counts_allowed_pairs_only():
    case = Case("x", 1, 2, 64, 8, causal=True)
    assert useful_pairs(case, None) == 2 * 64 * 65 / 2
    window = Window(7, 0) & Causal()
    assert useful_pairs(case, window) == pytest.approx(2 * window.dense_mask(64, 64).sum().item())


def test_tiny_cpu_suite_runs_and_writes_results(tmp_path):
    cases = [Case("causal window 16 S=128", 1, 2, 128, 16, pattern=lambda device: Window(16, 0) & Causal(),
                  impls=("tessera",)),
             Case("dense S=128", 1, 2, 128, 16, impls=("tessera", "sdpa-flash"))]
    records = run_suite(torch.device("cpu"), cases, log=lambda msg: None)
    assert {r["impl"] for r in records} == {"tessera", "sdpa-flash"}
    assert all(r["ms"] and r["ms"] > 0 for r in records), records
    path = tmp_path / "r.json"
    payload = write_results(path, torch.device("cpu"), records)
    assert json.loads(path.read_text())["device"] == "cpu" and payload["records"] == records
    assert "causal window 16" in benchmarks_markdown(tmp_path)


def test_sdpa_never_stands_in_for_a_pattern_it_cannot_run():
    case = Case("window 8 S=64", 1, 2, 64, 16, pattern=lambda device: Window(8, 0), impls=("sdpa-flash",))
    logged = []
    records = run_suite(torch.device("cpu"), [case], log=logged.append)
    assert all(r["ms"] is None for r in records)
    assert any("dense or causal softmax only" in line for line in logged)


def test_neighborhood_case_runs_and_counts_pairs_exactly():
    from tessera.bench.attention import _na_case
    case = _na_case("2-D 12x12 k5", (12, 12), (5, 5), dim=16, impls=("tessera",))
    case.heads = 2
    pattern = case.pattern(torch.device("cpu"))
    assert useful_pairs(case, pattern) == pytest.approx(2 * pattern.dense_mask(144, 144).sum().item())
    records = run_suite(torch.device("cpu"), [case], log=lambda msg: None)
    assert all(r["ms"] and r["ms"] > 0 for r in records), records


def test_neighborhood_rows_find_their_dense_baseline():
    records = [
        record("3-D 16x48x48 k5x13x13 D=64", "tessera", "fwd", 2.0, 100.0),
        record("dense baseline S=36864 B=1 H=16 D=128", "sdpa-cudnn", "fwd", 50.0, 600.0),
        record("dense baseline S=36864 B=1 H=16 D=64", "sdpa-cudnn", "fwd", 40.0, 500.0),
    ]
    row = next(r for r in comparison_rows(records) if r["case"].startswith("3-D"))
    assert row["speedup_vs_dense_cudnn"] == pytest.approx(20.0)


def test_case_rows_are_written_under_the_header(tmp_path, capsys):
    seen = []

    def row(size, scale, device):
        seen.append((size, scale, device))
        return {"ms": size * scale}

    device = torch.device("cpu")
    path = tmp_path / "deeper" / "rows.json"
    payload = write_case_rows(path, device, {"a": (2, 0.5), "b": (3, 2.0)}, row, choices={"x": "1"})
    assert seen == [(2, 0.5, device), (3, 2.0, device)]
    assert json.loads(path.read_text()) == payload
    assert payload["cases"] == {"a": {"ms": 1.0}, "b": {"ms": 6.0}} and payload["choices"] == {"x": "1"}
    assert {"device", "torch", "triton", "date"} <= payload.keys()
    assert capsys.readouterr().out.splitlines() == ['a {"ms": 1.0}', 'b {"ms": 6.0}']
