"""The random stream: raw 32-bit words (``random_bits``) and uniform floats, on every available
backend, against PyTorch's generators on the same thread count.

Bytes that must move: the output only (random numbers are computed, not loaded): ``4 * n`` for
random_bits, ``itemsize * n`` for uniform. ``out`` times the backend kernel into a preallocated
array (neither function has an ``out=``), ``fresh`` the public function.
"""
import numpy as np

from fastreg.bench import cases

def test_random_bits(bandwidth_benchmark, fastreg_case, backend, n, preallocated):
    fn, peak = fastreg_case("random_bits", np.empty(n, np.uint32), preallocated=preallocated)
    bandwidth_benchmark.group = cases.group("random_bits", n)
    bandwidth_benchmark(fn, nbytes=cases.nbytes("random_bits", n), peak_gb_per_s=peak)


def test_uniform(bandwidth_benchmark, fastreg_case, backend, dtype, n, preallocated):
    fn, peak = fastreg_case("uniform", np.empty(n, dtype), preallocated=preallocated)
    bandwidth_benchmark.group = cases.group("uniform", n, dtype)
    bandwidth_benchmark(fn, nbytes=cases.nbytes("uniform", n, dtype), peak_gb_per_s=peak)


def test_torch_random_bits(bandwidth_benchmark, torch_case, n):
    """The peer: ``torch.empty(n, dtype=torch.int32).random_()`` (31 random bits per word)."""
    fn = torch_case("random_bits", np.empty(n, np.float32))
    bandwidth_benchmark.group = cases.group("random_bits", n)
    bandwidth_benchmark(fn, nbytes=cases.nbytes("random_bits", n))


def test_torch_uniform(bandwidth_benchmark, torch_case, dtype, n):
    """The peer: ``torch.rand(n, dtype=dtype)``."""
    fn = torch_case("uniform", np.empty(n, dtype))
    bandwidth_benchmark.group = cases.group("uniform", n, dtype)
    bandwidth_benchmark(fn, nbytes=cases.nbytes("uniform", n, dtype))
