"""Shared fixtures of the pytest-benchmark suites (bench_*.py).

    pytest bench --benchmark-only                  time 2^20 and 2^24 elements (ids 1Mi, 16Mi)
    pytest bench --benchmark-only --bench-large    also 2^26 (64Mi)
    pytest bench --benchmark-disable               CI smoke: every case once, at 2^12 (4Ki)
    pytest bench --benchmark-only -k "cpu and float32 and 16Mi"    one slice
    pytest bench/bench_small.py --benchmark-only   small ops per call (auto, c, cpu, torch)

Each case warms up (JIT compilation, first touch of its arrays) before pytest-benchmark times it,
and records GB/s and the fraction of this machine's bandwidth through the ``bandwidth_benchmark``
fixture of fastreg's pytest plugin.
"""
import os
import sys

import numpy as np
import pytest

import fastreg
from fastreg.bench import cases

if "fastreg.bench.plugin" not in sys.modules:
    # fastreg is not installed (or plugin autoload is off), so its pytest11 entry point did not
    # load the plugin: load it here, and only here, since pytest refuses a plugin twice
    pytest_plugins = ["fastreg.bench.plugin"]

BACKENDS = ("numpy", "cpu", "c", "cuda")
QUICK, DEFAULT, LARGE = 1 << 20, 1 << 24, 1 << 26
SMOKE = 1 << 12            # under --benchmark-disable: one untimed call each, so keep it small
NUMPY_MAX = QUICK          # the NumPy reference takes ~0.4 s per call at 2^24


def pytest_addoption(parser):
    parser.addoption("--bench-large", action="store_true",
                     help=f"also benchmark {LARGE} (2^26) elements")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a 2^26-element case (runs with --bench-large)")


def _size_param_id(n):
    """Test ids -k can select: 4Ki, 1Mi, 16Mi, 64Mi (pytest -k rejects "2^20")."""
    for shift, unit in ((20, "Mi"), (10, "Ki")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "n" in metafunc.fixturenames:
        if config.getoption("benchmark_disable", False):
            sizes = [SMOKE]
        else:
            sizes = [QUICK, DEFAULT]
            if config.getoption("bench_large"):
                sizes.append(pytest.param(LARGE, marks=pytest.mark.slow))
        metafunc.parametrize("n", sizes, ids=_size_param_id)
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", BACKENDS)
    if "dtype" in metafunc.fixturenames:
        metafunc.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
    if "preallocated" in metafunc.fixturenames:   # out=: the hot-loop way; fresh: a new result
        metafunc.parametrize("preallocated", [True, False], ids=["out", "fresh"])


@pytest.fixture(scope="session")
def threads():
    """Numba's thread count; torch is set to the same, so the peers compete on equal terms."""
    import numba
    count = numba.get_num_threads()
    try:
        import torch
    except ImportError:
        return count
    torch.set_num_threads(count)
    return count


@pytest.fixture(scope="session")
def gpu_gb_per_s():
    """The GPU's bandwidth (the cuda cases' yardstick), measured once."""
    from fastreg.bench.bandwidth import device_bandwidth
    return device_bandwidth()


@pytest.fixture
def fastreg_case(request, backend, threads):
    """``fastreg_case(op, x, preallocated)``: the warmed-up call, and the bandwidth its
    ``bandwidth_fraction`` is relative to (None: the machine's). Skips, with the reason,
    a backend or kernel that cannot run here, and the NumPy reference beyond 2^20."""
    def make(op, x, preallocated=True):
        why = cases.unavailable(op, backend)
        if why is not None:
            pytest.skip(why)
        if backend == "numpy" and x.size > NUMPY_MAX:
            pytest.skip(f"the numpy reference is benchmarked at {cases.size_id(NUMPY_MAX)} only "
                        "(~0.4 s per call at 2^24)")
        timed = not request.config.getoption("benchmark_disable", False)
        peak = None
        if backend == "cuda" and timed:
            if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
                pytest.skip("NUMBA_ENABLE_CUDASIM=1: simulated CUDA timings mean nothing")
            peak = request.getfixturevalue("gpu_gb_per_s")
        try:
            fn = cases.fastreg_call(op, backend, x, preallocated=preallocated)
            fn()  # warm up: JIT compilation and first touch, never inside the timing
        except fastreg.BackendUnavailableError as exc:   # a kernel refusing when called
            pytest.skip(str(exc))
        return fn, peak
    return make


@pytest.fixture
def torch_case(threads):
    """``torch_case(op, x, fused=False)``: the warmed-up PyTorch peer of op on x (``fused``: the
    optimizer's fused=True step instead of foreach=True); skips without torch, or where this
    torch has no fused step on the CPU."""
    pytest.importorskip("torch", reason="torch is not installed: no PyTorch peer")

    def make(op, x, fused=False):
        try:
            fn = cases.torch_call(op, x, fused=fused)
            fn()
        except RuntimeError as exc:
            if not fused:
                raise
            pytest.skip(f"torch has no fused {op} here: {exc}")
        return fn
    return make


@pytest.fixture
def small_case(threads):
    """``small_case(op, backend)``: the warmed-up fastreg call of a small op
    (``cases.small_call``; backend may be "auto"); skips, with the reason, a backend that cannot
    run here."""
    def make(op, backend):
        try:
            fn = cases.small_call(op, backend)
            for _ in range(3):
                fn()   # warm up: JIT compilation, thread pools, never inside the timing
        except fastreg.BackendUnavailableError as exc:
            pytest.skip(str(exc))
        return fn
    return make


@pytest.fixture
def small_torch_case(threads):
    """``small_torch_case(op)``: the warmed-up PyTorch peer of a small op; skips without torch."""
    pytest.importorskip("torch", reason="torch is not installed: no PyTorch peer")

    def make(op):
        fn = cases.small_torch_call(op)
        for _ in range(3):
            fn()
        return fn
    return make
