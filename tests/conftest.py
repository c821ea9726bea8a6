"""Shared fixtures: the ``backend`` fixture runs a test on every backend, skipping (with the
reason from fastreg.available_backends) those that cannot run here.

The CUDA backend runs on a real GPU when there is one, else under Numba's simulator when the
suite is started with NUMBA_ENABLE_CUDASIM=1 (see .ci/run); simulated tests stay small.
"""
import os

import numpy as np
import pytest

import fastreg

ALL_BACKENDS = ("numpy", "cpu", "c", "cuda")
CUDA_SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"

# The README's command runs the suite on two pytest-xdist workers, each with PYTEST_XDIST_WORKER
# and co. in its environment. The pytest runs and scripts that tests start must not inherit them
# (pytest-benchmark, for one, disables itself in a process that has PYTEST_XDIST_WORKER).
for _var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
    os.environ.pop(_var, None)


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    reason = fastreg.available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


@pytest.fixture(params=[b for b in ALL_BACKENDS if b != "numpy"])
def kernel_backend(request):
    """The backends other than the reference (for tests that compare against it)."""
    reason = fastreg.available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


def big(backend, n):
    """A statistically useful size, skipped under the CUDA simulator (too slow there)."""
    if backend == "cuda" and CUDA_SIM:
        pytest.skip("large statistical test: too slow under the CUDA simulator")
    return n


def bits(a):
    """The raw bit pattern of a float array, so comparisons are exact (signed zeros, NaNs);
    16-bit floats as uint16."""
    a = np.asarray(a)
    if a.dtype.itemsize == 2:
        return a.view(np.uint16)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


# --- the C backend's kernel paths (tests/test_c_*.py) --------------------------------------------
# fastreg.c is imported inside the fixtures: only the C tests use them, and they skip their module
# when the C backend is unavailable.

@pytest.fixture(params=["avx512", "avx2", "portable"])
def isa(request):
    """Runs a C-backend test with the AVX-512, the AVX2 and the portable kernels."""
    import fastreg.c as fc
    if request.param == "avx2" and not fc.has_avx2():
        pytest.skip("this CPU has no AVX2")
    if request.param == "avx512" and not fc.has_avx512():
        pytest.skip("this CPU has no AVX-512 (F, DQ, BW, VL)")
    previous = fc.set_isa(request.param)
    yield request.param
    fc.set_isa(previous)


@pytest.fixture(params=["auto", "always", "never"])
def stream_stores(request):
    """Runs a C-backend test in each streaming-store mode."""
    import fastreg.c as fc
    previous = fc.set_stream_stores(request.param)
    yield request.param
    fc.set_stream_stores(previous)
