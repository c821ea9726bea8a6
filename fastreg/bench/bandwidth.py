"""This machine's memory bandwidth, measured in the same run as the kernels it is compared with.

The probe is the best of a few STREAM-like kernels over ``n`` float32 per array (2**26 by
default: 256 MiB per array, far beyond any cache), each into preallocated arrays whose pages were
touched before timing:

==============  ===============================  ==========================================
kernel          what it does                     bytes counted per pass
==============  ===============================  ==========================================
numpy copy      ``np.copyto(a, b)``              2 * 4 * n (read b, write a)
numpy scale     ``np.multiply(b, s, out=a)``     2 * 4 * n
numpy add       ``np.add(b, c, out=a)``          3 * 4 * n (read b, c, write a)
numba triad     ``a[i] = b[i] + s * c[i]``       3 * 4 * n
numba update    ``a[i] += s * b[i]``             3 * 4 * n (read a, b, write a)
==============  ===============================  ==========================================

The Numba kernels are ``parallel=True`` loops on Numba's threads; the NumPy ones split the arrays
into as many contiguous chunks, one per Python thread (NumPy releases the GIL in these loops;
``np.copyto`` is a ``memcpy``, whose large copies use non-temporal stores). The bytes are counted
as STREAM does and as the benchmark table counts an op's bytes: what the kernel must read and
write, without the hidden read of each output line that a cached store costs (write-allocate).
So the out-of-place kernels read low (Numba never emits streaming stores), the in-place
``update`` and the streaming ``memcpy`` read close to what the memory gives, and taking the best
kernel makes the probe the highest rate a simple kernel reached here: an op at 100% of it is as
fast as memory allowed.

Robustness on a shared machine: the kernels take turns, one pass each per round, for ``rounds``
rounds, so a neighbour's burst hits all of them alike; each kernel's figure comes from its
fastest pass (the one least disturbed), the probe's from its best kernel.

Numba is imported and the kernels compiled (``cache=True``) on the first probe only, so importing
this module (as the pytest plugin does) costs nothing.
"""
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

DEFAULT_N = 1 << 26

#: kernel name -> arrays of n float32 it must move once per pass
KERNEL_STREAMS = {"numpy copy": 2, "numpy scale": 2, "numpy add": 3, "numba triad": 3,
                  "numba update": 3}

_cache = {}      # (n, threads) or ("cuda", n) -> Probe / GB/s, for the life of the process
_cuda_kernel = None
cuda = None      # numba.cuda, imported by the first device_bandwidth() call


class Probe(NamedTuple):
    """The result of one bandwidth probe (``probe``)."""

    gb_per_s: float   #: the figure: the best kernel's GB/s
    kernel: str       #: which kernel gave it
    kernels: dict     #: kernel name -> GB/s (its fastest pass), in KERNEL_STREAMS order
    n: int            #: float32 elements per array
    threads: int      #: threads the kernels ran on
    rounds: int       #: passes of each kernel


def threads():
    """The number of threads Numba's parallel loops use now (``numba.get_num_threads()``)."""
    import numba
    return numba.get_num_threads()


def _numpy_kernels(pool, nthreads):
    """The NumPy kernels, each run on ``nthreads`` contiguous chunks through ``pool``."""
    def chunked(body):
        def run(a, b, c, s):
            if nthreads == 1:
                body(a, b, c, s)
                return
            bounds = np.linspace(0, a.size, nthreads + 1).astype(np.int64)
            parts = [pool.submit(body, a[lo:hi], b[lo:hi], c[lo:hi], s)
                     for lo, hi in zip(bounds[:-1], bounds[1:])]
            for part in parts:
                part.result()
        return run

    return {"numpy copy": chunked(lambda a, b, c, s: np.copyto(a, b)),
            "numpy scale": chunked(lambda a, b, c, s: np.multiply(b, s, out=a)),
            "numpy add": chunked(lambda a, b, c, s: np.add(b, c, out=a))}


def probe(n=DEFAULT_N, rounds=10, *, again=False):
    """Measure the memory bandwidth: the best of the STREAM-like kernels (see the module doc).

    Measured once per process, n and thread count (Numba's, at the time of the call), then
    cached (``again=True`` measures anew, e.g. after a long run, and caches that).

    Parameters
    ----------
    n : int
        float32 elements per array (three arrays are allocated); the default 2**26 is what every
        fastreg figure uses. Arrays that fit in a cache measure the cache, not memory.
    rounds : int
        Timed passes of each kernel (the kernels take turns); each kernel's fastest counts.
    again : bool
        Measure even when a cached result exists.

    Returns
    -------
    Probe
        The figure (``gb_per_s``, the best kernel's), that kernel's name, and every kernel's
        GB/s.
    """
    n, rounds = int(n), max(1, int(rounds))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    nthreads = threads()
    key = (n, nthreads)
    if not again and key in _cache and _cache[key].rounds >= rounds:
        return _cache[key]
    from fastreg import _threads
    from . import _stream   # imports Numba

    _threads.mark_parallel()   # the Numba kernels enter parallel regions (fork bookkeeping)
    a = np.ones(n, np.float32)
    b = np.full(n, 1e-3, np.float32)
    c = np.full(n, 2e-3, np.float32)
    s = np.float32(0.5)
    with ThreadPoolExecutor(nthreads) as pool:
        kernels = dict(_numpy_kernels(pool, nthreads), **{"numba triad": _stream.triad,
                                                           "numba update": _stream.update})
        for kernel in kernels.values():
            kernel(a, b, c, s)   # compile or load, warm the threads, before timing
        best = dict.fromkeys(kernels, float("inf"))
        for _ in range(rounds):
            for name, kernel in kernels.items():
                t0 = time.perf_counter()
                kernel(a, b, c, s)
                best[name] = min(best[name], time.perf_counter() - t0)
    rates = {name: KERNEL_STREAMS[name] * 4 * n / best[name] / 1e9 for name in KERNEL_STREAMS}
    top = max(rates, key=rates.get)
    result = Probe(rates[top], top, rates, n, nthreads, rounds)
    _cache[key] = result
    return result


def machine_bandwidth(n=DEFAULT_N, repeat=10):
    """Memory bandwidth in GB/s (1e9 bytes per second): the figure of ``probe(n, repeat)``.

    Parameters
    ----------
    n : int
        float32 elements per array (default 2**26).
    repeat : int
        Timed passes of each kernel; the fastest counts.

    Returns
    -------
    float
        The best kernel's GB/s (see ``probe`` and the module doc).
    """
    return probe(n, repeat).gb_per_s


def _cuda_triad():
    global _cuda_kernel, cuda
    if _cuda_kernel is None:
        # a module global, not a closure variable: the CUDA simulator only swaps globals
        from numba import cuda

        @cuda.jit
        def triad(a, b, s):
            i = cuda.grid(1)
            while i < a.size:   # grid-stride: any grid covers any n
                a[i] += s * b[i]
                i += cuda.gridsize(1)

        _cuda_kernel = triad
    return _cuda_kernel


def device_bandwidth(n=DEFAULT_N, repeat=10):
    """The GPU's memory bandwidth in GB/s: the in-place update ``a += s*b`` on device arrays.

    Each pass is one kernel launch and a synchronize; the fastest of ``repeat`` counts. Cached
    per process. Needs a usable ``numba.cuda`` (under NUMBA_ENABLE_CUDASIM the figure is
    meaningless; keep n tiny there).

    Returns
    -------
    float
        ``3 * 4 * n / t_min / 1e9``.
    """
    key = ("cuda", int(n))
    if key not in _cache:
        kernel = _cuda_triad()
        a = cuda.to_device(np.ones(n, np.float32))
        b = cuda.to_device(np.full(n, 1e-3, np.float32))
        s = np.float32(0.5)
        threads_per_block = 256
        blocks = min((n + threads_per_block - 1) // threads_per_block, 4096)
        best = float("inf")
        for i in range(max(1, int(repeat)) + 1):   # the first pass compiles: not timed
            t0 = time.perf_counter()
            kernel[blocks, threads_per_block](a, b, s)
            cuda.synchronize()
            if i:
                best = min(best, time.perf_counter() - t0)
        _cache[key] = 3 * 4 * n / best / 1e9
    return _cache[key]
