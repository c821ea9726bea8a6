"""Gradient-norm reductions and scaling on the GPU (Numba CUDA), as fastreg.reference.clip.

``norm_sum``: each thread of a grid-stride loop reduces its elements in float64 into its own
slot; the host merges the slots in order (a sum, or a NaN-propagating max). ``row_norm_sums``:
one thread per row, a sequential float64 reduction (AGC's rows are short). Reductions differ
from the reference only by summation order (and the GPU may fuse ``x * x + s``). Scaling is one
multiply in the array's dtype, bit for bit the reference.
"""
import math

import numpy as np
from numba import cuda

from .. import _config
from ..reference.clip import ABS as _ABS, MAX as _MAX, SQ as _SQ
from ..reference.clip import reduction_mode as _mode
from .philox import dev_in, dev_out, finish, launch_1d, max_blocks, to_device


@cuda.jit(device=True)
def _accumulate_device(s, v, mode, pw):
    """s combined with the element v (float64) under ``mode``."""
    x = abs(v)
    if mode == _SQ:
        return s + x * x
    if mode == _ABS:
        return s + x
    if mode == _MAX:
        if s == s and (x > s or x != x):  # a NaN, once met, stays
            return x
        return s
    return s + x ** pw


@cuda.jit(cache=True)
def _norm_kernel(a, mode, pw, slots):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    s = np.float64(0.0)
    for i in range(start, a.size, stride):
        s = _accumulate_device(s, np.float64(a[i]), mode, pw)
    if start < slots.size:
        slots[start] = s


@cuda.jit(cache=True)
def _row_norm_kernel(a, nrows, ncols, mode, pw, out):
    # a: the flat (U, K) array; thread u reduces row u
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for u in range(start, nrows, stride):
        s = np.float64(0.0)
        for k in range(ncols):
            s = _accumulate_device(s, np.float64(a[u * ncols + k]), mode, pw)
        out[u] = s


@cuda.jit(cache=True)
def _scale_kernel(a, s):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, a.size, stride):
        a[i] = a[i] * s


@cuda.jit(cache=True)
def _scale_rows_kernel(a, s, ncols):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, a.size, stride):
        a[i] = a[i] * s[i // ncols]


def _merge(a, b, mode):
    if mode != _MAX:
        return a + b
    if a != a or b != b:
        return math.nan
    return max(a, b)


def norm_sum(arrays, p):
    """sum |x|**p over every element of every array (max |x| for p = inf), float64.

    Parameters
    ----------
    arrays : list of device or host arrays (n,), one float dtype
    p : float, > 0 or inf

    Returns
    -------
    float
    """
    mode, total = _mode(p), 0.0
    for a in arrays:
        a_d = dev_in(a)
        n = a_d.size
        if n == 0:
            continue
        tpb = _config.cuda_threads_per_block()
        blocks = min((n + tpb - 1) // tpb, max_blocks(tpb))
        slots = to_device(np.zeros(blocks * tpb, np.float64))
        _norm_kernel[blocks, tpb](a_d, np.int32(mode), np.float64(p), slots)
        for s in slots.copy_to_host():
            total = _merge(total, float(s), mode)
    return float(total)


def row_norm_sums(a, p, out):
    """out[u] = the float64 reduction of row u of a (U, K); out float64 (U,).

    Parameters
    ----------
    a : device or host array (U, K), float32 or float64
    p : float, > 0 or inf
    out : device or host array (U,), float64

    Returns
    -------
    None
    """
    a_d = dev_in(a)
    out_d = dev_out(out)
    nrows, ncols = (int(s) for s in a_d.shape)
    if nrows == 0:
        return
    launch_1d(_row_norm_kernel, nrows, a_d.reshape(a_d.size), np.int64(nrows), np.int64(ncols),
              np.int32(_mode(p)), np.float64(p), out_d)
    finish(out, out_d)


def scale(arrays, s):
    """a = a * s in place for each array.

    Parameters
    ----------
    arrays : list of device or host arrays (n,), one float dtype
    s : scalar of that dtype

    Returns
    -------
    None
    """
    for a in arrays:
        a_d = dev_out(a, copy_in=True)
        if a_d.size == 0:
            continue
        launch_1d(_scale_kernel, a_d.size, a_d, np.dtype(a_d.dtype).type(s))
        finish(a, a_d)


def scale_rows(a, s):
    """a[u, :] = a[u, :] * s[u] in place.

    Parameters
    ----------
    a : device or host array (U, K), float32 or float64
    s : device or host array (U,) of a's dtype

    Returns
    -------
    None
    """
    a_d = dev_out(a, copy_in=True)
    if a_d.size == 0:
        return
    ncols = int(a_d.shape[1])
    launch_1d(_scale_rows_kernel, a_d.size, a_d.reshape(a_d.size), dev_in(s), np.int64(ncols))
    finish(a, a_d)
