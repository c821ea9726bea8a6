"""This machine's memory bandwidth, measured in the same run as the kernels it is compared with.

The probe is the STREAM-like in-place update ``a += s * b`` over 2**26 float32 (512 MiB in all, far
beyond any cache) in a Numba ``parallel=True`` loop: per pass it reads ``a`` and ``b`` and writes
``a`` back, ``3 * 4 * n`` bytes, with no write-allocate penalty since every line written was just
read. The minimum over repetitions is the figure; on a shared machine the minimum is the run least
disturbed by neighbours.

Numba is imported and the probe compiled (``cache=True``) on the first call only, so importing this
module (as the pytest plugin does) costs nothing.
"""
import time

import numpy as np

DEFAULT_N = 1 << 26

_cache = {}      # (n, threads) or ("cuda", n) -> GB/s, for the life of the process
_kernel = None
_cuda_kernel = None
cuda = None      # numba.cuda, imported by the first device_bandwidth() call


def _triad():
    """The Numba probe kernel, compiled (or loaded from the disk cache) on first use."""
    global _kernel
    if _kernel is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def triad(a, b, s):
            for i in numba.prange(a.size):
                a[i] += s * b[i]

        _kernel = triad
    return _kernel


def threads():
    """The number of threads Numba's parallel loops use now (``numba.get_num_threads()``)."""
    import numba
    return numba.get_num_threads()


def machine_bandwidth(n=DEFAULT_N, repeat=10):
    """Memory bandwidth in GB/s (1e9 bytes per second): min-time ``a += s*b`` over n float32.

    Measured once per process and thread count (Numba's, at the time of the call), then cached.

    Parameters
    ----------
    n : int
        Elements per array; the default 2**26 (two 256 MiB arrays) is what every fastreg figure
        uses. Smaller arrays measure caches, not memory.
    repeat : int
        Timed passes; the fastest counts.

    Returns
    -------
    float
        ``3 * 4 * n / t_min / 1e9``.
    """
    key = (int(n), threads())
    if key not in _cache:
        kernel = _triad()
        a = np.ones(n, np.float32)
        b = np.full(n, 1e-3, np.float32)
        s = np.float32(0.5)
        kernel(a, b, s)  # compile or load, and fault every page in, before timing
        best = float("inf")
        for _ in range(max(1, int(repeat))):
            t0 = time.perf_counter()
            kernel(a, b, s)
            best = min(best, time.perf_counter() - t0)
        _cache[key] = 3 * 4 * n / best / 1e9
    return _cache[key]


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
    """The GPU's memory bandwidth in GB/s: the same ``a += s*b`` probe, on device arrays.

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
