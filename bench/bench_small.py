"""Small ops where users call them (``fastreg.bench.cases.SMALL_OPS``): dropout 64x128, batch norm
(64, 256) training forward and forward+backward, an AdamW step and l2_grad on 1e5 float32, on
backend "auto" (as a user calls it), "c" and "cpu", beside the PyTorch call a user would write.

Per-call overhead and thread wake-up dominate here, not bandwidth, so these use pytest-benchmark's
plain ``benchmark`` (no GB/s). ``fastreg bench`` shows the same calls per call in microseconds,
with min/median/max, and under a background load with ``--load``.

    pytest bench/bench_small.py --benchmark-only --benchmark-group-by=group
"""
import pytest

from fastreg.bench import cases

pytest.importorskip("pytest_benchmark", reason="pytest-benchmark is not installed")

OPS = list(cases.SMALL_OPS)


@pytest.mark.parametrize("small_backend", ["auto", "c", "cpu"])
@pytest.mark.parametrize("op", OPS)
def test_small(benchmark, small_case, op, small_backend):
    fn = small_case(op, small_backend)
    benchmark.group = f"small {cases.SMALL_OPS[op][0]}"
    benchmark(fn)


@pytest.mark.parametrize("op", OPS)
def test_small_torch(benchmark, small_torch_case, op):
    """The peer: see ``cases.SMALL_TORCH_PEERS``."""
    fn = small_torch_case(op)
    benchmark.group = f"small {cases.SMALL_OPS[op][0]}"
    benchmark(fn)
