"""One optimizer step on one parameter array of n elements (``SGD(lr=0.01, momentum=0.9,
weight_decay=1e-4)`` and ``AdamW(lr=1e-3)``, weight decay on that parameter) on every available
backend, against ``torch.optim``'s foreach and fused steps on the same data.

Bytes that must move: SGD reads p, g and the momentum buffer and writes p and the buffer
(``5 * itemsize * n``); AdamW reads p, g, m and v and writes p, m and v (``7``). The warm-up
step creates the state; every round then updates p and the state in place (a small lr keeps the
values finite). See fastreg.bench.cases for the calls and fastreg.bench.plugin for the GB/s
reporting.
"""
import pytest

from fastreg.bench import cases


@pytest.mark.parametrize("op", cases.FUSED_OPS)
def test_optimizer_step(bandwidth_benchmark, fastreg_case, backend, dtype, n, op):
    fn, peak = fastreg_case(op, cases.input_array(n, dtype))
    bandwidth_benchmark.group = cases.group(op, n, dtype)
    bandwidth_benchmark(fn, nbytes=cases.nbytes(op, n, dtype), peak_gb_per_s=peak)


@pytest.mark.parametrize("impl", ["foreach", "fused"])
@pytest.mark.parametrize("op", cases.FUSED_OPS)
def test_torch_optimizer_step(bandwidth_benchmark, torch_case, dtype, n, op, impl):
    """The peers: ``torch.optim.SGD`` / ``AdamW`` with the same hyper-parameters, ``foreach=True``
    (torch's CPU default is the per-tensor for-loop, no faster) or ``fused=True``; p.grad is set
    once and ``opt.step()`` is timed."""
    fn = torch_case(op, cases.input_array(n, dtype), fused=impl == "fused")
    bandwidth_benchmark.group = cases.group(op, n, dtype)
    bandwidth_benchmark(fn, nbytes=cases.nbytes(op, n, dtype))
