"""Batch norm on every available backend, against PyTorch's ``F.batch_norm`` on the same data.

Layer shapes (``fastreg.bench.cases.BN_LAYOUTS``): NCHW (32, 64, 56, 56), channels-last
(32, 56, 56, 64) and (8192, 1024), each also small (``BN_QUICK_LAYOUTS``, id "small": the only
size of the NumPy reference and of ``--benchmark-disable`` runs). Ops: training forward, forward
+ backward, inference forward, the fused BN + ReLU and BN followed by a separate ReLU pass.

Bytes that must move (S = itemsize * elements): forward (train, inference, + ReLU) reads x and
writes y, 2 S; forward + backward also reads grad_y and x and writes grad_x, 5 S. See
fastreg.bench.cases for the calls and the byte counts, fastreg.bench.plugin for the GB/s report.

    pytest bench/bench_batchnorm.py --benchmark-only -k "nchw and full"
"""
import os

import pytest

import fastreg
from fastreg.bench import cases

SIZES = ("small", "full")


def pytest_generate_tests(metafunc):
    # the conftest's hook parametrizes backend and dtype; this one the layout and size
    if "layout" in metafunc.fixturenames:
        metafunc.parametrize("layout", list(cases.BN_LAYOUTS))
    if "size" in metafunc.fixturenames:
        metafunc.parametrize("size", SIZES)


def _skip_size(config, size):
    if size == "full" and config.getoption("benchmark_disable", False):
        pytest.skip("--benchmark-disable: the small shapes only")


@pytest.mark.parametrize("op", list(cases.BN_OPS))
def test_batch_norm(bandwidth_benchmark, request, threads, backend, dtype, layout, size, op):
    config = request.config
    _skip_size(config, size)
    quick = size == "small"
    why = cases.bn_unavailable(op, backend)
    if why is not None:
        pytest.skip(why)
    if backend == "numpy" and not quick:
        pytest.skip("the numpy reference is benchmarked on the small shapes only")
    timed = not config.getoption("benchmark_disable", False)
    peak = None
    if backend == "cuda" and timed:
        if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
            pytest.skip("NUMBA_ENABLE_CUDASIM=1: simulated CUDA timings mean nothing")
        peak = request.getfixturevalue("gpu_gb_per_s")
    try:
        fn = cases.bn_fastreg_call(op, backend, layout, dtype, quick=quick)
        fn()   # warm up: JIT compilation and first touch, never inside the timing
    except fastreg.BackendUnavailableError as exc:
        pytest.skip(str(exc))
    shape, _ = cases.bn_shape(layout, quick)
    bandwidth_benchmark.group = f"{op} {dtype.__name__} {layout} {size}"
    bandwidth_benchmark(fn, nbytes=cases.bn_nbytes(op, shape, dtype), peak_gb_per_s=peak)


@pytest.mark.parametrize("op", list(cases.BN_OPS))
def test_torch_batch_norm(bandwidth_benchmark, request, threads, dtype, layout, size, op):
    """The peer (``cases.BN_TORCH_PEERS``), same data and threads."""
    _skip_size(request.config, size)
    pytest.importorskip("torch", reason="torch is not installed: no PyTorch peer")
    quick = size == "small"
    fn = cases.bn_torch_call(op, layout, dtype, quick=quick)
    fn()
    shape, _ = cases.bn_shape(layout, quick)
    bandwidth_benchmark.group = f"{op} {dtype.__name__} {layout} {size}"
    bandwidth_benchmark(fn, nbytes=cases.bn_nbytes(op, shape, dtype))
