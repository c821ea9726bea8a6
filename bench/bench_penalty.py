"""Penalty gradients, the L1 proximal step and the L1 penalty value on every available backend,
against the PyTorch expressions a user would write, on the same data.

Bytes that must move: ``l1_grad`` reads w and writes out (``2 * itemsize * n``);
``l2_grad(..., out=g, accumulate=True)`` reads w and reads and writes g (``3``); ``prox_l1``
reads and writes w in place (``2``); ``l1_penalty`` reads w (``itemsize * n``). The in-place
cases keep updating their own arrays over the rounds (small strengths: values stay finite).
See fastreg.bench.cases for the calls and fastreg.bench.plugin for the GB/s reporting.
"""
import pytest

from fastreg.bench import cases

IN_PLACE = ("l2_grad_accumulate", "prox_l1", "l1_penalty")   # one variant each (cases.ALLOCS)


def test_l1_grad(bandwidth_benchmark, fastreg_case, backend, dtype, n, preallocated):
    fn, peak = fastreg_case("l1_grad", cases.input_array(n, dtype), preallocated=preallocated)
    bandwidth_benchmark.group = cases.group("l1_grad", n, dtype)
    bandwidth_benchmark(fn, nbytes=cases.nbytes("l1_grad", n, dtype), peak_gb_per_s=peak)


@pytest.mark.parametrize("op", IN_PLACE)
def test_penalty_in_place(bandwidth_benchmark, fastreg_case, backend, dtype, n, op):
    """l2_grad accumulate, prox_l1 (in place) and l1_penalty (a scalar)."""
    fn, peak = fastreg_case(op, cases.input_array(n, dtype))
    bandwidth_benchmark.group = cases.group(op, n, dtype)
    bandwidth_benchmark(fn, nbytes=cases.nbytes(op, n, dtype), peak_gb_per_s=peak)


@pytest.mark.parametrize("op", ("l1_grad",) + IN_PLACE)
def test_torch_penalty(bandwidth_benchmark, torch_case, dtype, n, op):
    """The peers (cases.TORCH_PEERS): ``torch.sign(w, out=o).mul_(lam)``,
    ``g.add_(w, alpha=2 * lam)``, ``w.copy_(torch.sign(w) * torch.clamp(w.abs() - t, min=0))``,
    ``w.abs().sum() * lam``."""
    fn = torch_case(op, cases.input_array(n, dtype))
    bandwidth_benchmark.group = cases.group(op, n, dtype)
    bandwidth_benchmark(fn, nbytes=cases.nbytes(op, n, dtype))
