"""The weight-EMA update on the GPU (Numba CUDA), bit for bit as fastreg.reference.ema.

One element per thread of a grid-stride loop, one launch per array: ``ema = fma(coef, p - ema,
base)`` in the arrays' dtype. ``fma_device`` is CUDA's correctly rounded fused multiply-add
(``cuda.fma``: PTX ``fma.rn``) on the GPU, and the reference's exact emulation under the
simulator (a plain ``a * b + c`` there would round twice).
"""
import numpy as np
from numba import cuda

from ..reference.ema import fma as _fma_reference
from .philox import _simulated, dev_out, dev_in, finish, launch_1d


def fma_device(a, b, c):
    """``a * b + c`` rounded once (operands of one float type); usable from any kernel."""
    return _fma_reference(np.array([a]), np.array([b]), np.array([c]))[0]


if not _simulated():
    from numba.cuda.extending import overload as _overload
    from numba.core import types as _types

    @_overload(fma_device, target="cuda")
    def _fma_overload(a, b, c):
        if isinstance(a, _types.Float) and a == b == c:
            return lambda a, b, c: cuda.fma(a, b, c)
        return None


@cuda.jit(cache=True)
def _ema_kernel(e, p, coef, small):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, e.size, stride):
        ei = e[i]
        pi = p[i]
        if small:
            e[i] = fma_device(coef, pi - ei, ei)
        else:
            e[i] = fma_device(coef, pi - ei, pi)


def ema_update(emas, ps, w):
    """In place on each ``emas[i]`` (device or host arrays): torch's lerp with weight ``w``.

    Parameters
    ----------
    emas, ps : lists of device or host arrays (n,), one float dtype
    w : scalar of that dtype

    Returns
    -------
    None
    """
    if not emas:
        return
    t = np.dtype(emas[0].dtype).type
    w = t(w)
    small = bool(abs(w) < t(0.5))
    coef = w if small else w - t(1)
    for e, p in zip(emas, ps):
        e_d = dev_out(e, copy_in=True)
        if e_d.size == 0:
            continue
        launch_1d(_ema_kernel, e_d.size, e_d, dev_in(p), coef, small)
        finish(e, e_d)
