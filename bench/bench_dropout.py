"""Dropout forward (into out= and into a fresh array), backward and the packed mask, on every
available backend, against PyTorch's ``F.dropout`` on the same data.

Bytes that must move: forward and backward read x and write out (``2 * itemsize * n``); the
packed mask writes ``n / 8``. See fastreg.bench.cases for the calls and fastreg.bench.plugin for
the GB/s reporting.
"""
import numpy as np

from fastreg.bench import cases

def test_dropout(bandwidth_benchmark, fastreg_case, backend, dtype, n, preallocated):
    x = cases.input_array(n, dtype)
    fn, peak = fastreg_case("dropout", x, preallocated=preallocated)
    bandwidth_benchmark.group = cases.group("dropout", n, dtype)
    bandwidth_benchmark(fn, nbytes=cases.nbytes("dropout", n, dtype), peak_gb_per_s=peak)


def test_dropout_backward(bandwidth_benchmark, fastreg_case, backend, dtype, n, preallocated):
    grad_y = cases.input_array(n, dtype)
    fn, peak = fastreg_case("dropout_backward", grad_y, preallocated=preallocated)
    bandwidth_benchmark.group = cases.group("dropout_backward", n, dtype)
    bandwidth_benchmark(fn, nbytes=cases.nbytes("dropout_backward", n, dtype),
                        peak_gb_per_s=peak)


def test_dropout_mask_packed(bandwidth_benchmark, fastreg_case, backend, n, preallocated):
    # out: the backend kernel into a preallocated array (dropout_mask has no out=)
    fn, peak = fastreg_case("dropout_mask_packed", np.empty(n, np.float32),
                            preallocated=preallocated)
    bandwidth_benchmark.group = cases.group("dropout_mask_packed", n)
    bandwidth_benchmark(fn, nbytes=cases.nbytes("dropout_mask_packed", n), peak_gb_per_s=peak)


def test_torch_dropout(bandwidth_benchmark, torch_case, dtype, n):
    """The peer: ``torch.nn.functional.dropout(x, 0.5, training=True)`` (a fresh result)."""
    fn = torch_case("dropout", cases.input_array(n, dtype))
    bandwidth_benchmark.group = cases.group("dropout", n, dtype)
    bandwidth_benchmark(fn, nbytes=cases.nbytes("dropout", n, dtype))
