"""The transposed-product prototypes of ``benchmarks/transposed_products.py`` and
``benchmarks/transposed_na2d.py`` (timing studies of the neighborhood forward's fraction of
ideal, not routed) compute what they claim: each script's ``--check`` (float64 references)
under the Triton interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["transposed_products.py", "transposed_na2d.py"])
def test_prototype_matches_its_float64_reference(script):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--check"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "rel err" in done.stdout
