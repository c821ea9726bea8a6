"""Gradient-norm reductions and scaling in plain NumPy: the oracle for every backend.

``norm_type`` (``p`` below) is a Python float, ``p > 0`` or ``inf``. Every reduction is taken in
float64 over the elements converted to float64 (backends may add in any order: only their
summation order differs)::

    norm_sum(arrays, p)        sum over every element x of |x|**p   (p = 2: x * x; p = 1: |x|)
                               max over every element of |x|         (p = inf; NaN if any is NaN)
    row_norm_sums(a, p, out)   the same per row of a (U, K): out[u], float64 (U,)

The norm is then ``s ** (1 / p)`` (``sqrt(s)`` for p = 2, ``s`` for p = 1 and inf), taken by the
public wrapper (fastreg/clip.py), which also turns it into a clip coefficient. Scaling is one
multiply in the arrays' dtype, in place::

    scale(arrays, s)           a = a * s            (s a scalar of the arrays' dtype)
    scale_rows(a, s)           a[u, :] = a[u, :] * s[u]   (s (U,) of a's dtype)
"""
import math

import numpy as np

# the kernels' reduction modes (csrc/multi_tensor.c FR_NORM_SQ, ABS, MAX, POW), one per p
SQ, ABS, MAX, POW = 0, 1, 2, 3


def reduction_mode(p):
    """The backends' reduction mode for norm type ``p``: sum of squares (2), of absolute values
    (1), a NaN-propagating max (inf), or of ``|x|**p``."""
    if p == 2.0:
        return SQ
    if p == 1.0:
        return ABS
    if p == math.inf:
        return MAX
    return POW


def _nanmax(a, b):
    """max(a, b), NaN if either is NaN."""
    if a != a or b != b:
        return math.nan
    return a if a >= b else b


def _sum_pow(x, p):
    """sum |x|**p (or max |x|) of a float64 array, as the module doc defines it."""
    if x.size == 0:
        return 0.0
    ax = np.abs(x)
    if p == math.inf:
        return float(ax.max())       # np.max propagates NaN
    if p == 2.0:
        return float(np.dot(x, x))
    if p == 1.0:
        return float(ax.sum())
    return float((ax ** p).sum())


def norm_sum(arrays, p):
    """sum of |x|**p over every element of every array (max |x| for p = inf), float64.

    arrays: a list of 1-D contiguous arrays of one float dtype (possibly empty ones).
    """
    total = 0.0
    for a in arrays:
        s = _sum_pow(a.astype(np.float64), p)
        total = _nanmax(total, s) if p == math.inf else total + s
    return total


def row_norm_sums(a, p, out):
    """out[u] = norm_sum([a[u]], p) for each row of the 2-D contiguous array a; out float64."""
    for u in range(a.shape[0]):
        out[u] = _sum_pow(a[u].astype(np.float64), p)


def scale(arrays, s):
    """a = a * s in place for each array (s a scalar of their dtype)."""
    with np.errstate(invalid="ignore"):   # inf * 0 is NaN, unannounced as in the kernels
        for a in arrays:
            a[...] = a * s


def scale_rows(a, s):
    """a[u, :] = a[u, :] * s[u] in place; a (U, K), s (U,) of a's dtype."""
    with np.errstate(invalid="ignore"):
        a[...] = a * s[:, None]
