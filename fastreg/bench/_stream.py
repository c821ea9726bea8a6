"""The Numba kernels of the bandwidth probe: STREAM's triad and the in-place update ``a += s*b``
(copy, scale and add are NumPy's, which compile nothing). Imported by ``fastreg.bench.bandwidth``
on the first probe only: importing it imports Numba; the kernels compile on first call
(``cache=True``, about 1 s each on an idle 2-core VM), in parallel (``prange``)."""
import numba
from numba import prange

_OPTIONS = dict(parallel=True, cache=True)


@numba.njit(**_OPTIONS)
def triad(a, b, c, s):
    for i in prange(a.size):
        a[i] = b[i] + s * c[i]


@numba.njit(**_OPTIONS)
def update(a, b, c, s):
    for i in prange(a.size):
        a[i] += s * b[i]
