"""Triton kernels (simple GLA, GLA, delta rule; forward and backward) on CPU through the Triton interpreter.

The interpreter runs in a subprocess (interpret_cases.py) so that TRITON_INTERPRET stays out of
this process and of every other test module.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

# fp32: ieee dots, only rounding of float32 sums; fp16: operands and stored states rounded to fp16.
BOUNDS = {"float32": 1e-5, "float16": 4e-3}
GATE_BOUNDS = {"float32": 1e-4, "float16": 1e-2}


def test_triton_kernels_match_float64_reference(seed):
    script = Path(__file__).with_name("interpret_cases.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script), str(seed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 22, proc.stdout
    for r in results:
        dtype = r["case"][0]
        assert not r["non_finite"], r
        for name, err in r["errors"].items():
            bound = GATE_BOUNDS[dtype] if name in ("dg", "dh0", "dbeta", "final_state", "final_z") else BOUNDS[dtype]
            assert err < bound, (r["case"], name, err)


def test_every_candidate_launch_config_matches_float64_reference(seed):
    """Each block-size / warps / stages candidate the GPU may pick computes the same thing."""
    from tessera.linear.triton import tuning

    script = Path(__file__).with_name("interpret_configs.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(script), str(seed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == sum(len(c) - 1 for c in tuning.CANDIDATES.values()), proc.stdout
    for r in results:
        assert not r["non_finite"], r
        for name, err in r["errors"].items():
            bound = GATE_BOUNDS["float32"] if name in ("dg", "dh0", "dbeta", "final_state") else BOUNDS["float32"]
            assert err < bound, (r["kernel"], r["config"], name, err)


def test_interpreter_setting_does_not_leak():
    assert os.environ.get("TRITON_INTERPRET", "0") != "1"
