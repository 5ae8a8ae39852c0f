"""Shared test setup: seeding, NaN-poisoned scratch tensors, skipping of ``gpu`` / ``slow`` tests
(markers are declared in pyproject.toml), and runs of a module's cases under the Triton
interpreter in fresh processes that share the cases."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zlib

import pytest
import torch

from tessera.bench.error_rule import rel_err, within_rule


# Set in the workers of ``assert_passes_interpreted``: a directory where each case is claimed by
# the first worker to reach it, and the worker's direction through the cases.
CLAIMS = os.environ.get("TESSERA_CASE_CLAIMS")
REVERSED = os.environ.get("TESSERA_CASES_REVERSED") == "1"


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    run_slow = os.environ.get("TESSERA_SLOW") == "1"
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow; set TESSERA_SLOW=1 to run")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
    if CLAIMS and REVERSED:
        items.reverse()


@pytest.fixture(autouse=True)
def seed(request) -> int:
    """Seed torch per test from the test's id, so that a failure reproduces alone and different
    tests draw different inputs. Returns the seed."""
    value = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(value)
    return value


def nan_like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialized-looking tensor like ``t`` filled with NaN (integers: their max value), so
    that memory a kernel forgets to write shows up in comparisons."""
    return nan_empty(t.shape, dtype=t.dtype, device=t.device)


def nan_empty(shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """``torch.empty`` filled with NaN (integers: their max value)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if dtype.is_floating_point:
        return out.fill_(float("nan"))
    return out.fill_(torch.iinfo(dtype).max)


@pytest.fixture
def poison():
    """The ``nan_empty`` helper as a fixture: ``poison(shape, dtype, device)``."""
    return nan_empty


@pytest.fixture
def nan_poison(monkeypatch):
    """Every floating ``torch.empty``/``empty_like`` during a test comes back NaN-filled, so that
    output memory a kernel forgets to write shows up (modules opt in with
    ``pytest.mark.usefixtures("nan_poison")``)."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(result):
        if result.dtype.is_floating_point and not result.requires_grad:
            result.fill_(float("nan"))
        return result

    monkeypatch.setattr(torch, "empty", lambda *a, **kw: poisoned(empty(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: poisoned(empty_like(*a, **kw)))


def assert_error_rule(names, got, same, want, dtype, forward=("o", "lse")) -> None:
    """The FlashAttention error rule against the float64 results ``want``: each of ``got``
    (named by ``names``) is finite and its ``rel_err`` is at most 2x (outputs named in
    ``forward``) or 3x (gradients) the same-dtype reference's (``same``), plus the rule's floor
    for ``dtype`` (``tessera.bench.error_rule.within_rule``)."""
    for name, g, s_, w in zip(names, got, same, want):
        assert torch.isfinite(g).all(), name
        err, err_same = rel_err(g, w), rel_err(s_, w)
        factor = 2 if name in forward else 3
        assert within_rule(err, err_same, dtype, factor), \
            f"{name}: kernel {err:.3g} vs reference {err_same:.3g}"


def pytest_collection_finish(session):
    if CLAIMS:
        with open(os.path.join(CLAIMS, f"collected-{int(REVERSED)}"), "w") as f:
            f.write(str(len(session.items)))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """In a worker of ``assert_passes_interpreted``: run the case only if this worker claims it
    first (the claim is a file made exclusively); the other worker runs the rest."""
    if not CLAIMS:
        return None
    name = hashlib.sha1(item.nodeid.encode()).hexdigest()
    try:
        os.close(os.open(os.path.join(CLAIMS, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return True
    return None


def assert_passes_interpreted(path: str, *pytest_args: str, timeout: float, workers: int = 2) -> None:
    """Run the cases of the test module ``path`` (``pytest_args``: e.g. ``"-k", EXPR``) with
    ``TRITON_INTERPRET=1`` in fresh Python processes and assert that they pass. Triton picks
    interpreted or compiled kernels when it is imported, so the variable must be set before the
    import. ``workers`` (1 or 2) processes share the cases: one walks them in order, the other
    from the end, and each runs the cases it reaches first, so both cores stay busy to the end
    whatever the cases cost; every collected case runs exactly once."""
    assert workers in (1, 2), workers
    with tempfile.TemporaryDirectory() as claims:
        runs = []
        for worker in range(workers):
            env = dict(os.environ, TRITON_INTERPRET="1")
            if workers > 1:
                env.update(TESSERA_CASE_CLAIMS=claims, TESSERA_CASES_REVERSED=str(worker))
            runs.append(subprocess.Popen([sys.executable, "-m", "pytest", path, "-q", "-x",
                                          "-p", "no:cacheprovider", *pytest_args], env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + timeout
        try:
            outputs = [run.communicate(timeout=max(deadline - time.monotonic(), 1)) for run in runs]
        except subprocess.TimeoutExpired:
            for run in runs:
                run.kill()
            raise
        for run, (stdout, stderr) in zip(runs, outputs):
            assert run.returncode == 0, stdout[-8000:] + stderr[-2000:]
        if workers > 1:
            collected = {open(os.path.join(claims, f"collected-{w}")).read() for w in range(workers)}
            claimed = len([f for f in os.listdir(claims) if not f.startswith("collected-")])
            assert collected == {str(claimed)}, (collected, claimed)


def step_outputs(fn, q, k, v, do, **kwargs) -> list:
    """``[o, (lse,) dq, dk, dv]`` of ``fn(q, k, v, **kwargs)`` on fresh leaves; when ``fn`` returns
    lse, the loss takes a fixed random gradient of lse as well as ``do`` (the compile tests'
    step, eager and compiled alike)."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, **kwargs)
    if not isinstance(out, tuple):
        return [out.detach(), *torch.autograd.grad(out, leaves, do)]
    o, lse = out
    dlse = torch.randn(lse.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((o, lse), leaves, (do, dlse.to(lse.dtype).to(lse.device)))
    return [o.detach(), lse.detach(), *grads]
